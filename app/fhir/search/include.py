"""`_include` and `_revinclude` (R4 search.html#include), run as extra indexed queries.

Forward includes read the reference keys of a page's resources (`s.<param>`, stored as
`Type/id`) and fetch those resources by `_id`; reverse includes look for resources whose
`s.<param>` holds `Type/id` of a page resource. `:iterate` repeats both on what was included,
up to `MAX_ROUNDS` rounds and `MAX_INCLUDED` resources per page; a truncated include is
reported as a warning, never silently. The fetch callback applies the deleted and compartment
filters, so an include can never reach outside a patient scope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.fhir.outcome import BadRequest
from app.fhir.search.parameters import Registry

JsonDict = dict[str, Any]
# (resource type, filter, s-fields to fetch, limit) → stored documents.
Fetch = Callable[[str, JsonDict, set[str], int], Awaitable[list[JsonDict]]]

MAX_ROUNDS = 4
MAX_INCLUDED = 1000


@dataclass(frozen=True, slots=True)
class IncludeSpec:
    name: str  # _include or _revinclude, for error messages
    source_type: str  # the type holding the reference; "*" = any
    param: str | None  # None = every reference parameter of source_type
    target: str | None
    iterate: bool
    reverse: bool


def parse_includes(
    result: list[tuple[str, str]], registry: Registry, known_types: frozenset[str]
) -> list[IncludeSpec]:
    specs: list[IncludeSpec] = []
    for key, value in result:
        name, _, modifier = key.partition(":")
        if name not in ("_include", "_revinclude"):
            continue
        if modifier not in ("", "iterate", "recurse"):
            raise BadRequest(f"Unknown modifier ':{modifier[:30]}' on {name}", expression=[key])
        reverse = name == "_revinclude"
        for item in value.split(","):
            specs.append(_parse_one(key, item.strip(), registry, known_types, reverse, modifier))
    return specs


def _parse_one(
    key: str, value: str, registry: Registry, known: frozenset[str], reverse: bool, modifier: str
) -> IncludeSpec:
    iterate = modifier in ("iterate", "recurse")
    if value == "*":
        if reverse:
            raise BadRequest(
                "_revinclude=* is not supported; name the type: _revinclude=Observation:*",
                expression=[key],
                code="not-supported",
            )
        return IncludeSpec(key, "*", None, None, iterate, reverse)
    parts = value.split(":")
    if len(parts) not in (2, 3) or parts[0] not in known:
        raise BadRequest(
            f"'{value[:80]}' is not SourceType:parameter[:TargetType]", expression=[key]
        )
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if code == "*":
        return IncludeSpec(key, source, None, target, iterate, reverse)
    param = registry.get(source, code)
    if param is None or param.param_type != "reference":
        raise BadRequest(
            f"'{code[:40]}' is not a reference search parameter of {source}", expression=[key]
        )
    if target is not None and target not in param.targets:
        raise BadRequest(f"{source}.{code} cannot refer to '{target[:40]}'", expression=[key])
    return IncludeSpec(key, source, code, target, iterate, reverse)


def reference_params(registry: Registry, resource_type: str) -> list[str]:
    return sorted(
        code
        for code, param in registry.for_type(resource_type).items()
        if param.param_type == "reference" and param.extractor is not None
    )


def forward_fields(
    specs: list[IncludeSpec], registry: Registry, resource_type: str, *, first_round: bool
) -> set[str]:
    """The `s.*` fields of `resource_type` documents that forward includes will read."""
    fields: set[str] = set()
    for spec in specs:
        if spec.reverse or not (first_round or spec.iterate):
            continue
        if spec.source_type not in ("*", resource_type):
            continue
        codes = [spec.param] if spec.param else reference_params(registry, resource_type)
        fields.update(f"s.{code}" for code in codes)
    return fields


class Includer:
    def __init__(
        self, registry: Registry, fetch: Fetch, known_types: frozenset[str], base_url: str
    ) -> None:
        self.registry = registry
        self.fetch = fetch
        self.known = known_types
        self.local_prefix = base_url.rstrip("/") + "/"

    def _local(self, key: str) -> tuple[str, str] | None:
        """(type, id) when a stored reference key points at a resource on this server."""
        key = key.removeprefix(self.local_prefix)
        parts = key.split("/")
        if len(parts) == 2 and parts[0] in self.known and parts[1]:
            return parts[0], parts[1]
        return None

    async def resolve(
        self, specs: list[IncludeSpec], matches: list[tuple[str, JsonDict]]
    ) -> tuple[list[tuple[str, JsonDict]], list[str]]:
        """Included (type, document) pairs, not repeating any match, plus warnings."""
        seen = {(t, str(d["_id"])) for t, d in matches}
        included: list[tuple[str, JsonDict]] = []
        warnings: list[str] = []
        frontier = matches
        for round_number in range(MAX_ROUNDS):
            active = [s for s in specs if round_number == 0 or s.iterate]
            if not active or not frontier:
                break
            found = await self._round(active, frontier, round_number == 0)
            fresh = []
            for resource_type, doc in found:
                ident = (resource_type, str(doc["_id"]))
                if ident in seen:
                    continue
                seen.add(ident)
                fresh.append((resource_type, doc))
            if len(included) + len(fresh) > MAX_INCLUDED:
                fresh = fresh[: MAX_INCLUDED - len(included)]
                warnings.append(
                    f"Included resources were truncated at {MAX_INCLUDED} for this page; "
                    "use a smaller _count"
                )
                included += fresh
                return included, warnings
            included += fresh
            frontier = fresh
        else:
            if any(s.iterate for s in specs) and frontier:
                warnings.append(f"_include:iterate stopped after {MAX_ROUNDS} rounds")
        return included, warnings

    async def _round(
        self, specs: list[IncludeSpec], docs: list[tuple[str, JsonDict]], first_round: bool
    ) -> list[tuple[str, JsonDict]]:
        wanted: dict[str, set[str]] = {}
        for resource_type, doc in docs:
            for spec in specs:
                if spec.reverse or spec.source_type not in ("*", resource_type):
                    continue
                codes = (
                    [spec.param] if spec.param else reference_params(self.registry, resource_type)
                )
                for code in codes:
                    for key in doc.get("s", {}).get(code) or ():
                        local = self._local(str(key))
                        if local and (spec.target is None or spec.target == local[0]):
                            wanted.setdefault(local[0], set()).add(local[1])
        out: list[tuple[str, JsonDict]] = []
        for target_type, ids in sorted(wanted.items()):
            fields = self._iterate_fields(specs, target_type)
            found = await self.fetch(
                target_type, {"_id": {"$in": sorted(ids)}}, fields, MAX_INCLUDED + 1
            )
            out += [(target_type, d) for d in found]
        out += await self._reverse(specs, docs)
        return out

    def _iterate_fields(self, specs: list[IncludeSpec], resource_type: str) -> set[str]:
        return forward_fields(
            [s for s in specs if s.iterate], self.registry, resource_type, first_round=False
        )

    async def _reverse(
        self, specs: list[IncludeSpec], docs: list[tuple[str, JsonDict]]
    ) -> list[tuple[str, JsonDict]]:
        out: list[tuple[str, JsonDict]] = []
        for spec in specs:
            if not spec.reverse:
                continue
            codes = (
                [spec.param] if spec.param else reference_params(self.registry, spec.source_type)
            )
            for code in codes:
                param = self.registry.get(spec.source_type, code)
                if param is None:
                    continue
                keys = sorted(
                    {
                        f"{t}/{d['_id']}"
                        for t, d in docs
                        if (spec.target is None or spec.target == t)
                        and (not param.targets or t in param.targets)
                    }
                )
                if not keys:
                    continue
                fields = self._iterate_fields(specs, spec.source_type)
                found = await self.fetch(
                    spec.source_type, {f"s.{code}": {"$in": keys}}, fields, MAX_INCLUDED + 1
                )
                out += [(spec.source_type, d) for d in found]
        return out
