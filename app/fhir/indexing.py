"""What the store keeps beside each resource so that search and compartments never parse JSON.

The search package compiles the official SearchParameter expressions into extractors; this
module is the single entry point the write path calls.
"""

from __future__ import annotations

from typing import Any

from app.fhir.search.extract import extract_index, patient_compartments

JsonDict = dict[str, Any]


def index_resource(resource: JsonDict) -> tuple[JsonDict, list[str]]:
    """The search keys (`s`) and the patient compartments of a resource about to be stored."""
    return extract_index(resource), patient_compartments(resource)
