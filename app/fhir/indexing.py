"""What the store keeps beside each resource so that search and compartments never parse JSON.

The search package compiles the official SearchParameter expressions into extractors; this
module is the single entry point the write path calls.
"""

from __future__ import annotations

from typing import Any

JsonDict = dict[str, Any]

try:
    from app.fhir.search.extract import extract_index, patient_compartments
except ImportError:  # TEMPORARY until the search extractors land

    def extract_index(resource: JsonDict) -> JsonDict:
        keys: list[str] = []
        for ident in resource.get("identifier") or []:
            if isinstance(ident, dict) and ident.get("value"):
                keys += [f"{ident.get('system', '')}|{ident['value']}", str(ident["value"])]
        return {"_id": [resource.get("id")], "identifier": keys}

    def patient_compartments(resource: JsonDict) -> list[str]:
        return []


def index_resource(resource: JsonDict) -> tuple[JsonDict, list[str]]:
    """The search keys (`s`) and the patient compartments of a resource about to be stored."""
    return extract_index(resource), patient_compartments(resource)
