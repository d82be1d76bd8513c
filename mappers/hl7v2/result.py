"""What the mapper returns, and the merge rule the ingestion layer applies before writing.

Mapping is pure, so it cannot see what is already stored. Resources whose messages carry only
part of the picture (Patient: an ORU's PID or an A08's partial update; Encounter: an A13 that
only reopens the visit) are therefore returned with a `MergePlan`, and the caller writes
`merge_resource(stored, incoming, plan)` instead of the incoming resource itself. Everything
else (observations, reports, orders…) is a full snapshot and replaces what is stored.

Merge rule, per top-level element of the incoming resource:
- absent in incoming (the v2 field was empty): the stored value stays;
- listed in `plan.cleared` (the v2 field was `""`): the stored value is removed. A cleared path
  is `element`, `element.child` or `element[key=value]` (only list items matching are removed);
- listed in `plan.fill_only`: used only when the stored resource has no value (e.g. Encounter
  status from a message that does not say what happened to the visit);
- `identifier` and `link`: union with the stored items (an identifier is never forgotten);
- `telecom` and `extension`: incoming items replace the stored items of the same slice
  (`telecom` by `use`, `extension` by `url`), other slices stay;
- anything else: the incoming value replaces the stored one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mappers.hl7v2.errors import Hl7v2Error

JsonDict = dict[str, Any]

_UNION_KEYS = {
    "identifier": lambda item: (item.get("system"), item.get("value")),
    "link": lambda item: (item.get("other", {}).get("reference"),),
}
_SLICE_KEYS = {"telecom": "use", "extension": "url"}
_KEEP = ("resourceType", "id")


@dataclass(frozen=True, slots=True)
class MergePlan:
    cleared: frozenset[str] = frozenset()
    fill_only: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class MergeInstruction:
    """Patient `old` was merged into `new` (A40/A34): the caller re-points references."""

    old: str
    new: str


@dataclass(slots=True)
class MappingResult:
    bundle: JsonDict
    message_type: str  # e.g. "ADT^A08"
    control_id: str  # MSH-10, echoed in MSA-2
    merge_plans: dict[str, MergePlan] = field(default_factory=dict)  # "Patient/<id>" → plan
    patient_merges: list[MergeInstruction] = field(default_factory=list)
    z_segments: list[str] = field(default_factory=list)  # kept verbatim, also in Provenance
    warnings: list[Hl7v2Error] = field(default_factory=list)

    def plan_for(self, entry: JsonDict) -> MergePlan | None:
        """The merge plan of a Bundle entry, or None when the resource replaces what is stored."""
        return self.merge_plans.get(entry["request"]["url"])

    def resolve(self, stored: Mapping[str, JsonDict | None]) -> list[JsonDict]:
        """The resources to write, given the stored versions keyed by `Type/id`."""
        out = []
        for entry in self.bundle["entry"]:
            plan = self.plan_for(entry)
            resource = entry["resource"]
            if plan is not None:
                resource = merge_resource(stored.get(entry["request"]["url"]), resource, plan)
            out.append(resource)
        return out


def merge_resource(
    existing: JsonDict | None, incoming: JsonDict, plan: MergePlan | None = None
) -> JsonDict:
    """Field-level merge of a partial update into the stored resource (see module docstring)."""
    plan = plan or MergePlan()
    if existing is None:
        result = copy.deepcopy(incoming)
    else:
        result = copy.deepcopy(existing)
        result.pop("meta", None)  # the store owns versionId/lastUpdated
        for key, value in incoming.items():
            if key in _KEEP:
                result[key] = value
            elif key in plan.fill_only and result.get(key) not in (None, [], {}):
                continue
            elif key in _UNION_KEYS and isinstance(value, list):
                result[key] = _union(value, result.get(key, []), _UNION_KEYS[key])
            elif key in _SLICE_KEYS and isinstance(value, list):
                result[key] = _replace_slices(value, result.get(key, []), _SLICE_KEYS[key])
            else:
                result[key] = copy.deepcopy(value)
    for path in plan.cleared:
        _remove(result, path)
    return result


def _union(incoming: list[JsonDict], stored: list[JsonDict], key: Any) -> list[JsonDict]:
    seen = {key(item) for item in incoming}
    return [*copy.deepcopy(incoming), *(copy.deepcopy(s) for s in stored if key(s) not in seen)]


def _replace_slices(incoming: list[JsonDict], stored: list[JsonDict], key: str) -> list[JsonDict]:
    slices = {item.get(key) for item in incoming}
    kept = [copy.deepcopy(s) for s in stored if s.get(key) not in slices]
    return [*copy.deepcopy(incoming), *kept]


def _selected(item: Any, key: str, value: str) -> bool:
    """`item[key=value]`: a plain field equal to value, or a CodeableConcept field (such as
    Identifier.type) with a coding whose code is value."""
    if not isinstance(item, dict):
        return False
    field = item.get(key)
    if isinstance(field, dict):
        codings = field.get("coding")
        return isinstance(codings, list) and any(
            isinstance(c, dict) and c.get("code") == value for c in codings
        )
    return field is not None and str(field) == value


def _remove(resource: JsonDict, path: str) -> None:
    if "[" in path and path.endswith("]"):
        name, selector = path[:-1].split("[", 1)
        key, _, value = selector.partition("=")
        items = resource.get(name)
        if isinstance(items, list):
            remaining = [item for item in items if not _selected(item, key, value)]
            if remaining:
                resource[name] = remaining
            else:
                resource.pop(name, None)
        return
    head, _, rest = path.partition(".")
    if not rest:
        resource.pop(head, None)
        return
    child = resource.get(head)
    if isinstance(child, dict):
        _remove(child, rest)
        if not child:
            resource.pop(head, None)
