"""`_summary` and `_elements`: subsets of a resource, marked with the SUBSETTED tag.

Which top-level elements are "summary" or mandatory comes from the isSummary and min>0 flags
that fhir.resources carries for every R4B model. Nested elements are kept whole: a subset keeps
or drops top-level elements only. The R4 types without an R4B model (model.R4_ONLY_TYPES) have
no flags here; their `_summary=true` keeps everything except `text`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from app.fhir.outcome import BadRequest

JsonDict = dict[str, Any]

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
SUMMARY_MODES = ("true", "text", "data", "count", "false")
_ALWAYS = ("resourceType", "id", "meta")


@cache
def _flags(resource_type: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """(summary elements, mandatory elements) by JSON name, or None without a model."""
    try:
        from fhir.resources.R4B import get_fhir_model_class

        model = get_fhir_model_class(resource_type)
    except (KeyError, ImportError, ValueError, AttributeError):
        return None
    summary: set[str] = set()
    mandatory: set[str] = set()
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        if not isinstance(extra, dict) or not extra.get("element_property"):
            continue
        alias = info.alias or name
        if extra.get("summary_element_property"):
            summary.add(alias)
        if info.is_required() or extra.get("element_required"):
            mandatory.add(alias)
    return frozenset(summary), frozenset(mandatory)


def _keep(resource: JsonDict, wanted: set[str]) -> JsonDict:
    # A primitive's extensions (`_birthDate`) travel with it.
    return {
        key: value
        for key, value in resource.items()
        if key in wanted or (key.startswith("_") and key[1:] in wanted)
    }


def tagged(resource: JsonDict) -> JsonDict:
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag") or [] if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    return {**resource, "meta": meta}


def summarize(resource: JsonDict, mode: str) -> JsonDict:
    """The resource as `_summary=mode` returns it ('false' and 'count' leave it whole)."""
    if mode in ("false", "count"):
        return resource
    resource_type = str(resource.get("resourceType", ""))
    flags = _flags(resource_type)
    if mode == "data":
        return tagged({k: v for k, v in resource.items() if k != "text"})
    if mode == "text":
        mandatory = flags[1] if flags else frozenset()
        return tagged(_keep(resource, {*_ALWAYS, "text", *mandatory}))
    if flags is None:
        return tagged({k: v for k, v in resource.items() if k != "text"})
    return tagged(_keep(resource, {*_ALWAYS, *flags[0], *flags[1]}))


def parse_elements(values: list[str], resource_types: list[str]) -> set[str] | None:
    """Element names from `_elements` values (`name` or `Type.name`), or None when absent."""
    if not values:
        return None
    names: set[str] = set()
    for value in values:
        for item in value.split(","):
            name = item.strip()
            head, dot, tail = name.partition(".")
            if dot and head in resource_types:
                name = tail
            if not name:
                continue
            if not name.replace("_", "").isalnum():
                raise BadRequest(f"'{item[:60]}' is not an element name", expression=["_elements"])
            names.add(name)
    return names


def select_elements(resource: JsonDict, names: set[str]) -> JsonDict:
    """Only the named top-level elements (a choice `value` keeps `valueQuantity` etc.)."""
    wanted = set(_ALWAYS)
    for key in resource:
        bare = key.lstrip("_")
        if bare in names or any(
            bare.startswith(n) and len(bare) > len(n) and bare[len(n)].isupper() for n in names
        ):
            wanted.add(bare)
    return tagged(_keep(resource, wanted))
