"""SMART App Launch 2.2 scopes: parsing, checking and narrowing.

Grammar of a FHIR resource scope (scopes-and-launch-context.html):

    ( "patient" | "user" | "system" ) "/" ( ResourceType | "*" ) "." [c][r][u][d][s]
        [ "?" param=value ( "&" param=value )* ]

The permission letters are an in-order subset of `cruds`. SMART v1 suffixes are read with
their v2 meaning (`.read` → `rs`, `.write` → `cud`, `.*` → `cruds`) but keep their v1
spelling when echoed back, as the spec asks. A query suffix ("granular scope") narrows the
grant to resources matching those search criteria, all of which must hold.

Besides resource scopes this module recognises the identity scopes (`openid`, `fhirUser`,
`profile`), the launch scopes (`launch`, `launch/patient`, `launch/encounter`, and the
experimental `launch/<lowercase type>[?role=uri]`) and `offline_access` / `online_access`.
Anything else is ignored and listed in `ScopeSet.ignored` with the reason, never fatal:
the spec lets a server ignore scope requests it does not understand.

Interactions map to permission letters as the spec lists them: `r` covers read, vread and
*instance* history; `s` covers type and system search and *type/system* history; `u` covers
update and patch (including update-as-create); `d` delete; `c` create. Batch and
transaction are checked per entry. Operations carry no letter of their own: the caller
authorises an operation by the interaction it performs (e.g. `Patient/$everything` is a
search on each type it returns).

Typical use::

    granted = parse_scopes(requested).intersect(parse_scopes(client.allowed_scopes))
    grants = granted.allows("search", "Observation")
    if not grants: raise OAuthError("insufficient_scope", ...)
    if not any(g.unrestricted for g in grants):
        # OR over the grants, AND within each grant's `restrictions`
        ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args
from urllib.parse import quote, unquote

Level = Literal["patient", "user", "system"]
Permission = Literal["c", "r", "u", "d", "s"]
Interaction = Literal[
    "create",
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "search",
    "search-type",
    "search-system",
    "history-instance",
    "history-type",
    "history-system",
]

PERMISSION_ORDER = "cruds"

#: The permission letter each FHIR interaction needs (SMART 2.2 "Scopes for requesting FHIR
#: Resources"). Codes are those of the FHIR `restful-interaction` code system.
PERMISSION_FOR: dict[str, Permission] = {
    "create": "c",
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "update": "u",
    "patch": "u",
    "delete": "d",
    "search": "s",
    "search-type": "s",
    "search-system": "s",
    "history-type": "s",
    "history-system": "s",
}

_V1_SUFFIXES: dict[str, str] = {"read": "rs", "write": "cud", "*": "cruds"}
_V2_PERMISSIONS = re.compile(r"c?r?u?d?s?")
_RESOURCE_SCOPE = re.compile(
    r"(?P<level>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]{0,63})"
    r"\.(?P<perms>[^?]*)(?:\?(?P<query>.*))?",
    re.DOTALL,
)
_SEARCH_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]*")
_LAUNCH_CONTEXT = re.compile(r"launch/(?P<type>[a-z][a-z0-9]{0,63})(?:\?role=(?P<role>\S+))?")

IDENTITY_SCOPES = frozenset({"openid", "fhirUser", "profile"})
REFRESH_SCOPES = frozenset({"offline_access", "online_access"})


@dataclass(frozen=True)
class Grant:
    """One FHIR resource scope, normalised to v2 permissions.

    `restrictions` are the granular-scope search criteria as (name, value) pairs, already
    percent-decoded, e.g. `(("category", "laboratory"),)`. A resource is covered by this
    grant only if it matches all of them; an empty tuple means the whole type.
    """

    level: Level
    resource_type: str  # a FHIR resource type name, or "*" for every type
    permissions: frozenset[Permission]
    restrictions: tuple[tuple[str, str], ...] = ()
    text: str = field(default="", compare=False)  # as requested (v1 spelling kept)

    @property
    def unrestricted(self) -> bool:
        return not self.restrictions

    @property
    def permission_string(self) -> str:
        return "".join(p for p in PERMISSION_ORDER if p in self.permissions)

    def covers(self, permission: Permission, resource_type: str) -> bool:
        """True if this grant gives `permission` on `resource_type` ("*" = every type)."""
        if permission not in self.permissions:
            return False
        return self.resource_type == "*" or self.resource_type == resource_type

    def to_scope(self) -> str:
        """The scope string: the requested spelling if there is one, else canonical v2."""
        return self.text or self.canonical()

    def canonical(self) -> str:
        scope = f"{self.level}/{self.resource_type}.{self.permission_string}"
        if self.restrictions:
            scope += "?" + "&".join(
                f"{_encode(name)}={_encode(value)}" for name, value in self.restrictions
            )
        return scope


@dataclass(frozen=True)
class IgnoredScope:
    """A requested scope this server does not grant, and why."""

    scope: str
    reason: str


@dataclass(frozen=True)
class ScopeSet:
    """A parsed scope string. Immutable; `intersect` returns a new set."""

    grants: tuple[Grant, ...] = ()
    # Recognised non-resource scopes, spelt as in the spec ("openid", "launch/patient", …).
    other: frozenset[str] = frozenset()
    ignored: tuple[IgnoredScope, ...] = ()

    # -- questions the policy layer asks -------------------------------------------------

    def allows(self, interaction: Interaction, resource_type: str) -> list[Grant]:
        """The grants that permit `interaction` on `resource_type`; empty means denied.

        Each grant may carry `restrictions` that the search/read layer must apply (a
        resource is visible if it satisfies the restrictions of at least one returned
        grant), and a `level` that decides the compartment filter: `patient` grants are
        limited to the patient in context, `user` grants to what the user may see.
        Pass resource_type "*" for a system-wide interaction that is not limited to
        named types (e.g. system history): only wildcard grants allow it.
        """
        permission = PERMISSION_FOR.get(interaction)
        if permission is None:
            raise ValueError(f"unknown FHIR interaction {interaction!r}")
        return [g for g in self.grants if g.covers(permission, resource_type)]

    def permits(self, interaction: Interaction, resource_type: str) -> bool:
        return bool(self.allows(interaction, resource_type))

    @property
    def context(self) -> frozenset[Level]:
        """The access levels present: a token with patient-level grants needs a patient."""
        return frozenset(g.level for g in self.grants)

    @property
    def openid(self) -> bool:
        return "openid" in self.other

    @property
    def fhir_user(self) -> bool:
        return "fhirUser" in self.other

    @property
    def offline_access(self) -> bool:
        return "offline_access" in self.other

    @property
    def online_access(self) -> bool:
        return "online_access" in self.other

    @property
    def wants_refresh_token(self) -> bool:
        return bool(self.other & REFRESH_SCOPES)

    @property
    def launch(self) -> bool:
        """The EHR-launch scope `launch` (paired with the `launch` request parameter)."""
        return "launch" in self.other

    @property
    def launch_contexts(self) -> frozenset[str]:
        """Requested standalone launch contexts: {"patient", "encounter", "imagingstudy", …}."""
        return frozenset(
            s.removeprefix("launch/").split("?", 1)[0]
            for s in self.other
            if s.startswith("launch/")
        )

    # -- narrowing and output ----------------------------------------------------------

    def intersect(self, allowed: ScopeSet) -> ScopeSet:
        """What may be granted of this (requested) set, given what `allowed` permits.

        Resource grants narrow per level, type, permission letters and restrictions (the
        restrictions of both sides must then hold). Other scopes pass only if `allowed` has
        them exactly. A requested grant that `allowed` fully covers keeps its spelling, so a
        v1 request is answered in v1; a partly covered one is rewritten in v2.
        """
        narrowed: list[Grant] = []
        for requested in self.grants:
            for permitted in allowed.grants:
                grant = _intersect_grants(requested, permitted)
                if grant is not None and grant not in narrowed:
                    narrowed.append(grant)
        return ScopeSet(
            grants=tuple(narrowed),
            other=self.other & allowed.other,
            ignored=self.ignored,
        )

    def scopes(self) -> list[str]:
        """The granted scope strings, resource scopes first, without duplicates."""
        out: list[str] = []
        for scope in [g.to_scope() for g in self.grants] + sorted(self.other):
            if scope not in out:
                out.append(scope)
        return out

    def __str__(self) -> str:
        """The space-separated `scope` value for a token response or introspection."""
        return " ".join(self.scopes())


# -- parsing -----------------------------------------------------------------------------


def parse_scopes(text: str | None) -> ScopeSet:
    """Parse a space-separated OAuth `scope` value. Never raises on bad scopes.

    Unrecognised or malformed scopes end in `ScopeSet.ignored` with a reason, so the caller
    can log them or refuse the request (`invalid_scope`) if it prefers.
    """
    grants: list[Grant] = []
    other: set[str] = set()
    ignored: list[IgnoredScope] = []
    # RFC 6749 §3.3: scope tokens are separated by spaces; tolerate runs of whitespace.
    for item in (text or "").split():
        if item in IDENTITY_SCOPES or item in REFRESH_SCOPES or item == "launch":
            other.add(item)
            continue
        if item.startswith("launch/"):
            if _LAUNCH_CONTEXT.fullmatch(item):
                other.add(item)
            else:
                ignored.append(
                    IgnoredScope(item, "launch context scopes are launch/<lowercase type>")
                )
            continue
        parsed = _parse_resource_scope(item)
        if isinstance(parsed, Grant):
            if parsed not in grants:
                grants.append(parsed)
        else:
            ignored.append(IgnoredScope(item, parsed))
    return ScopeSet(grants=tuple(grants), other=frozenset(other), ignored=tuple(ignored))


def _parse_resource_scope(scope: str) -> Grant | str:
    """A `Grant`, or the reason the scope is not a valid resource scope."""
    match = _RESOURCE_SCOPE.fullmatch(scope)
    if match is None:
        return "not a recognised SMART scope"
    suffix = match["perms"]
    if suffix in _V1_SUFFIXES:
        letters = _V1_SUFFIXES[suffix]
    elif suffix and _V2_PERMISSIONS.fullmatch(suffix):
        letters = suffix
    else:
        # The spec's own example: `.dus` is out of order and must not be guessed at.
        return f"permissions {suffix!r} are not an in-order subset of 'cruds' or read/write/*"
    restrictions: tuple[tuple[str, str], ...] = ()
    if match["query"] is not None:
        parsed_query = _parse_query(match["query"])
        if isinstance(parsed_query, str):
            return parsed_query
        restrictions = parsed_query
    level: Level = match["level"]  # type: ignore[assignment]  # the regex admits only Levels
    return Grant(
        level=level,
        resource_type=match["type"],
        permissions=frozenset(_as_permissions(letters)),
        restrictions=restrictions,
        text=scope,
    )


def _parse_query(query: str) -> tuple[tuple[str, str], ...] | str:
    pairs: list[tuple[str, str]] = []
    for item in query.split("&"):
        name, sep, value = item.partition("=")
        name, value = unquote(name), unquote(value)
        if not sep or not value or not _SEARCH_PARAM_NAME.fullmatch(name):
            return f"granular scope criterion {item!r} is not param=value"
        if (name, value) not in pairs:
            pairs.append((name, value))
    return tuple(pairs)


def _as_permissions(letters: str) -> list[Permission]:
    valid = get_args(Permission)
    return [p for p in letters if p in valid]  # type: ignore[misc]  # filtered to Permission


def _intersect_grants(requested: Grant, permitted: Grant) -> Grant | None:
    if requested.level != permitted.level:
        return None
    if permitted.resource_type == "*":
        resource_type = requested.resource_type
    elif requested.resource_type in ("*", permitted.resource_type):
        resource_type = permitted.resource_type
    else:
        return None
    permissions = requested.permissions & permitted.permissions
    if not permissions:
        return None
    restrictions = requested.restrictions + tuple(
        r for r in permitted.restrictions if r not in requested.restrictions
    )
    grant = Grant(requested.level, resource_type, permissions, restrictions)
    if grant == requested:
        return requested  # fully covered: keep the requested spelling (v1 stays v1)
    return grant


def _encode(component: str) -> str:
    # Only what would break the scope syntax is escaped; `|`, `:` and `/` stay readable
    # as in the spec's examples (…observation-category|laboratory).
    return quote(component, safe="|:/,.-_~*!$'()+;@")
