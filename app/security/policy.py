"""Who may do what: the access context of a request and the checks the FHIR layer calls.

Per request::

    ctx = await authenticate(request.headers.get("authorization"), security)   # 401s
    access = ctx.authorize("search", "Observation")                            # 403s
    engine.search(..., patient_scope=access.patient_scope,
                  extra=access.extra_criteria())

    access = ctx.authorize("read", "Observation")
    access.ensure_visible(stored.compartments, "Observation/123")              # 404s
    # and, if `access.filters`: read it as a search `_id=123` + access.extra_criteria()

    access = ctx.authorize("create", "Observation")
    access.ensure_writable(patient_compartments(new_body))                     # 403s

Visibility rules (SMART App Launch 2.2, scopes-and-launch-context.html):

* `patient/` grants reach the compartment of the token's `patient` (official R4 Patient
  CompartmentDefinition); for types outside that compartment (Medication, Organization,
  Practitioner…) they are not compartment-limited, since those hold no patient's data;
* `user/` grants reach what the user may see: a user whose fhirUser is a Patient sees their
  own compartment, any other user is not limited by compartment (Hestia has no finer user
  permissions);
* `system/` grants are not limited;
* a granular grant (`?category=laboratory`) adds its criteria; several grants are ORed.

When grants of different reach combine (e.g. `patient/Observation.rs` with
`system/Observation.rs?category=laboratory`), the union cannot be expressed as one
compartment plus criteria; the broader-reach grants alone are applied. That may show less
than granted, never more.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from app.fhir.outcome import Forbidden, NotFound, Unauthorized
from app.security.errors import OAuthError
from app.security.scopes import PERMISSION_FOR, Grant, Permission, ScopeSet, parse_scopes
from app.security.tokens import TokenClaims, verify_access_token, verify_external_token

PolicyInteraction = Literal[
    "read",
    "vread",
    "search",
    "search-type",
    "search-system",
    "history-instance",
    "history-type",
    "history-system",
    "create",
    "update",
    "patch",
    "delete",
    "operation",
]
Criteria = tuple[tuple[str, str], ...]

_COMPARTMENTS = Path(__file__).resolve().parent.parent / "fhir" / "definitions"
_ALL_PERMISSIONS = "cruds"
REALM = "hestia"


@cache
def patient_compartment_types() -> frozenset[str]:
    """Resource types the official R4 Patient CompartmentDefinition places in a compartment."""
    data = json.loads((_COMPARTMENTS / "compartments.json").read_text("utf-8"))
    return frozenset(data.get("Patient", {})) | {"Patient"}


@dataclass(frozen=True)
class Access:
    """What one interaction on one resource type may reach.

    `patient_scope` is `["Patient/<id>"]` when results must lie in that patient's
    compartment, None when not compartment-limited. `filters` lists alternatives (ORed), each
    a tuple of search (name, value) pairs (ANDed); empty means no granular restriction.
    """

    interaction: str
    resource_type: str
    patient_scope: list[str] | None = None
    filters: tuple[Criteria, ...] = ()
    grants: tuple[Grant, ...] = field(default=(), compare=False)

    @property
    def unrestricted(self) -> bool:
        return self.patient_scope is None and not self.filters

    def extra_criteria(self) -> list[tuple[str, str]]:
        """The granular restrictions as search items to AND to the client's criteria.

        Alternatives on one parameter merge into one item with comma-joined values (FHIR's
        OR); alternatives on different parameters cannot be one criteria list, so they raise
        Forbidden (use `filters` and OR them in the engine to support that case).
        """
        if not self.filters:
            return []
        if len(self.filters) == 1:
            return list(self.filters[0])
        names = {pair[0] for alternative in self.filters for pair in alternative}
        if all(len(a) == 1 for a in self.filters) and len(names) == 1:
            values = ",".join(_escape_search_value(a[0][1]) for a in self.filters)
            return [(names.pop(), values)]
        raise Forbidden(
            f"The granted granular scopes for {self.resource_type} combine different search "
            "parameters, which this server cannot apply together; request them separately",
        )

    def visible(self, compartments: Sequence[str]) -> bool:
        """True if a resource in `compartments` (as stored with it) is within reach."""
        if self.patient_scope is None:
            return True
        return any(c in self.patient_scope for c in compartments)

    def ensure_visible(self, compartments: Sequence[str], reference: str) -> None:
        """404 (as if absent) for an existing resource outside the reachable compartment.

        `reference` is `Type/id`; the message is the same as for a resource that does not
        exist, so the response says nothing about other patients' data.
        """
        if not self.visible(compartments):
            raise NotFound(f"{reference} is not known")

    def ensure_writable(self, compartments: Sequence[str]) -> None:
        """403 if content about to be written would lie outside the reachable compartment.

        For create/update/patch, with the compartments of the NEW content: a patient-scoped
        app may not file data under another patient.
        """
        if self.patient_scope is not None and not self.visible(compartments):
            raise Forbidden(
                f"The token's patient context does not cover this {self.resource_type}: "
                "it must reference the patient in context",
                headers={"WWW-Authenticate": _insufficient(self.resource_type)},
            )


@dataclass(frozen=True)
class AccessContext:
    """The authenticated caller of one request."""

    client_id: str | None
    scopes: ScopeSet
    fhir_user: str | None = None
    patient: str | None = None  # the patient in context (id only)
    encounter: str | None = None
    jti: str | None = None
    subject: str | None = None
    expires_at: int | None = None
    grant_id: str | None = None
    authenticated: bool = True

    @classmethod
    def unrestricted(cls) -> AccessContext:
        """The context when authentication is off (HESTIA_AUTH=off): everything allowed."""
        return cls(client_id=None, scopes=parse_scopes("system/*.cruds"), authenticated=False)

    @property
    def patient_scope(self) -> list[str] | None:
        """["Patient/<id>"] if the token carries a patient context, else None."""
        return [f"Patient/{self.patient}"] if self.patient else None

    def permits(self, interaction: PolicyInteraction, resource_type: str) -> bool:
        """Like `authorize`, without raising: for `_include`/`_revinclude` types and `_type`."""
        try:
            self.authorize(interaction, resource_type)
        except Forbidden:
            return False
        return True

    def authorize(
        self,
        interaction: PolicyInteraction,
        resource_type: str,
        *,
        permission: Permission | None = None,
    ) -> Access:
        """The reach of `interaction` on `resource_type`; Forbidden (403) if no scope allows it.

        `resource_type` "*" is a system-wide interaction (history-system, search-system
        without `_type`): only wildcard grants allow it. "operation" needs `permission`
        (default "r"); prefer authorizing an operation as the interactions it performs.
        """
        letter = _permission_for(interaction, permission)
        grants = [g for g in self.scopes.grants if g.covers(letter, resource_type)]
        if not grants:
            raise Forbidden(
                f"The token's scopes do not allow {interaction} on {resource_type} "
                f"(needs '{letter}' in a patient/, user/ or system/ scope for it)",
                headers={"WWW-Authenticate": _insufficient(resource_type)},
            )
        terms: list[tuple[str | None, Criteria]] = []
        for grant in grants:
            reach = self._compartment_of(grant, resource_type)
            if reach is not _UNREACHABLE:
                terms.append((reach if isinstance(reach, str) else None, grant.restrictions))
        if not terms:
            raise Forbidden(
                f"The token has patient-level scopes for {resource_type} but no patient in context",
                headers={"WWW-Authenticate": _insufficient(resource_type)},
            )
        compartment, filters = _combine(terms)
        return Access(
            interaction=interaction,
            resource_type=resource_type,
            patient_scope=[compartment] if compartment else None,
            filters=filters,
            grants=tuple(grants),
        )

    def _compartment_of(self, grant: Grant, resource_type: str) -> str | object | None:
        """`Patient/<id>`, None (not limited) or _UNREACHABLE (the grant cannot apply)."""
        if grant.level == "system":
            return None
        if resource_type != "*" and resource_type not in patient_compartment_types():
            return None
        if grant.level == "patient":
            return f"Patient/{self.patient}" if self.patient else _UNREACHABLE
        if self.fhir_user and self.fhir_user.split("/")[-2:-1] == ["Patient"]:
            return "Patient/" + self.fhir_user.rsplit("/", 1)[-1]
        return None


_UNREACHABLE = object()


def _permission_for(interaction: str, permission: Permission | None) -> Permission:
    if interaction == "operation":
        return permission or "r"
    letter = PERMISSION_FOR.get(interaction)
    if letter is None:
        raise ValueError(f"unknown FHIR interaction {interaction!r}")
    return letter


def _combine(terms: list[tuple[str | None, Criteria]]) -> tuple[str | None, tuple[Criteria, ...]]:
    reaches = {reach for reach, _ in terms}
    chosen: str | None = None if None in reaches else sorted(r for r in reaches if r)[0]
    alternatives = [criteria for reach, criteria in terms if reach == chosen]
    if any(not criteria for criteria in alternatives):
        return chosen, ()
    # Drop alternatives implied by a less restrictive one (a superset of its criteria).
    # dict.fromkeys, not set: the scopes' own order survives, so the criteria are the same
    # on every run (a set's order changes with the hash seed).
    kept: list[Criteria] = []
    for alternative in sorted(dict.fromkeys(alternatives), key=len):
        if not any(set(k) <= set(alternative) for k in kept):
            kept.append(alternative)
    return chosen, tuple(kept)


def _escape_search_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,")


def _insufficient(resource_type: str) -> str:
    return (
        f'Bearer realm="{REALM}", error="insufficient_scope", '
        f'error_description="no scope for {resource_type}"'
    )


# -- authentication --------------------------------------------------------------------------


async def authenticate(authorization_header: str | None, security: Any) -> AccessContext:
    """The caller of a FHIR request, from its `Authorization: Bearer` header.

    `security` is the `app.security.service.Security` of the app. Raises `Unauthorized`
    (401, OperationOutcome, `WWW-Authenticate: Bearer …`) when the token is missing,
    malformed, badly signed, expired, not for this server, or revoked.
    """
    token = _bearer(authorization_header)
    claims = await verify_bearer(token, security)
    grant_id = claims.extra.get("grant_id")
    grant = grant_id if isinstance(grant_id, str) else None
    if await security.revocations.is_revoked(claims.jti, grant):
        raise _unauthorized("The access token has been revoked", error="invalid_token")
    return AccessContext(
        client_id=claims.client_id,
        scopes=claims.scopes,
        fhir_user=claims.fhir_user,
        patient=claims.patient,
        encounter=claims.encounter,
        jti=claims.jti,
        subject=claims.subject,
        expires_at=claims.expires_at,
        grant_id=grant,
    )


async def verify_bearer(token: str, security: Any) -> TokenClaims:
    """Signature and claims of an access token (own or external IdP); no revocation check."""
    config = security.config
    try:
        external = _external_issuer(token, config.external_issuers)
        if external is not None:
            return await _verify_external(token, external, security)
        try:
            return verify_access_token(
                token, security.keys.ring, issuer=config.issuer, audience=config.base
            )
        except OAuthError as exc:
            # Another instance may have rotated the signing key since we loaded the ring.
            if exc.reason == "unknown_kid" and await security.keys.reload_if_stale():
                return verify_access_token(
                    token, security.keys.ring, issuer=config.issuer, audience=config.base
                )
            raise
    except OAuthError as exc:
        raise _unauthorized(exc.description, error="invalid_token") from exc


async def _verify_external(token: str, external: Any, security: Any) -> TokenClaims:
    audience = external.audience or security.config.base
    jwks = await security.external_jwks(external)
    try:
        return verify_external_token(token, jwks=jwks, issuer=external.issuer, audience=audience)
    except OAuthError as exc:
        if exc.reason != "unknown_kid":
            raise
    # The IdP may have rotated its keys since we fetched them. The refetch is rate-limited
    # per JWKS URL (jwks.py), so tokens with made-up kids cannot make us hammer the IdP.
    jwks = await security.external_jwks(external, refresh=True)
    return verify_external_token(token, jwks=jwks, issuer=external.issuer, audience=audience)


def _external_issuer(token: str, issuers: Sequence[Any]) -> Any:
    if not issuers:
        return None
    from app.security.keys import MalformedJWT, read_unverified

    try:
        _, claims = read_unverified(token)
    except MalformedJWT:
        return None
    return next((i for i in issuers if i.issuer == claims.get("iss")), None)


def _bearer(header: str | None) -> str:
    if not header:
        raise _unauthorized("This server requires an OAuth2 bearer token", error=None)
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise _unauthorized(
            "The Authorization header must be 'Bearer <access token>'", error="invalid_request"
        )
    return token


def _unauthorized(description: str, *, error: str | None) -> Unauthorized:
    # RFC 6750 §3.1: a request with no credentials gets no error code in the challenge.
    challenge = f'Bearer realm="{REALM}"'
    if error is not None:
        safe = description.replace("\\", "").replace('"', "'")
        challenge += f', error="{error}", error_description="{safe}"'
    return Unauthorized(description, headers={"WWW-Authenticate": challenge})
