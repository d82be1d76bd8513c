"""The CapabilityStatement, generated from what this server really implements."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.fhir import model

JsonDict = dict[str, Any]

SOFTWARE_NAME = "Hestia"
SOFTWARE_VERSION = "0.1.0"

TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
SYSTEM_INTERACTIONS = ("transaction", "batch", "search-system", "history-system")
PATCH_FORMATS = ("application/json-patch+json", "application/fhir+json")


def capability_statement(
    base_url: str,
    *,
    published: str,
    search_params: dict[str, list[JsonDict]] | None = None,
    extra_type_interactions: Iterable[str] = (),
    system_interactions: Iterable[str] = (),
    security: JsonDict | None = None,
    overrides: dict[str, JsonDict] | None = None,
) -> JsonDict:
    """`search_params[type]` lists {name, type, definition, documentation} per parameter."""
    interactions = [*TYPE_INTERACTIONS, *extra_type_interactions]
    resources = []
    for resource_type in sorted(model.STORABLE_TYPES):
        entry: JsonDict = {
            "type": resource_type,
            "interaction": [{"code": code} for code in interactions],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical"],
        }
        if search_params and search_params.get(resource_type):
            entry["searchParam"] = search_params[resource_type]
        if resource_type in model.R4_ONLY_TYPES:
            entry["documentation"] = (
                "Stored with a structural check only: this type has no R4B model to "
                "validate against."
            )
        if overrides and resource_type in overrides:
            entry.update(overrides[resource_type])
        resources.append(entry)
    rest: JsonDict = {
        "mode": "server",
        "resource": resources,
        "interaction": [{"code": c} for c in (*SYSTEM_INTERACTIONS, *system_interactions)],
    }
    if security:
        rest["security"] = security
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "publisher": "Hestia",
        "kind": "instance",
        "software": {"name": SOFTWARE_NAME, "version": SOFTWARE_VERSION},
        "implementation": {"description": "Hestia FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/json"],
        "patchFormat": list(PATCH_FORMATS),
        "rest": [rest],
    }
