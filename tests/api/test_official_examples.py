"""Every official R4 example of a clinical type round-trips through the REST API:
create → read → vread → update → history → delete (npm hl7.fhir.r4.examples@4.0.1, CC0)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.fhir.definitions.npm import ensure_package

JSON = {"Content-Type": "application/fhir+json"}

# The clinical, diagnostic and medication modules of R4, plus the patient-centred
# administration types every clinical record hangs on.
CLINICAL_TYPES = frozenset(
    [
        "AdverseEvent",
        "AllergyIntolerance",
        "BodyStructure",
        "CarePlan",
        "CareTeam",
        "ClinicalImpression",
        "Communication",
        "CommunicationRequest",
        "Composition",
        "Condition",
        "Consent",
        "DetectedIssue",
        "DeviceRequest",
        "DeviceUseStatement",
        "DiagnosticReport",
        "DocumentReference",
        "Encounter",
        "EpisodeOfCare",
        "FamilyMemberHistory",
        "Flag",
        "Goal",
        "ImagingStudy",
        "Immunization",
        "ImmunizationEvaluation",
        "ImmunizationRecommendation",
        "List",
        "Media",
        "Medication",
        "MedicationAdministration",
        "MedicationDispense",
        "MedicationRequest",
        "MedicationStatement",
        "MolecularSequence",
        "NutritionOrder",
        "Observation",
        "Patient",
        "Procedure",
        "Provenance",
        "QuestionnaireResponse",
        "RequestGroup",
        "RiskAssessment",
        "ServiceRequest",
        "Specimen",
        "VisionPrescription",
    ]
)
TAG = {"system": "urn:hestia:test", "code": "round-trip"}


def _examples() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    by_type: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for path in sorted(Path(ensure_package()).glob("*.json")):
        try:
            resource = json.loads(path.read_bytes())
        except ValueError:
            continue
        if isinstance(resource, dict) and resource.get("resourceType") in CLINICAL_TYPES:
            by_type[resource["resourceType"]].append((path.name, resource))
    return by_type


EXAMPLES = _examples()


def test_the_package_has_examples_for_most_clinical_types() -> None:
    assert len(EXAMPLES) >= 40
    assert sum(len(v) for v in EXAMPLES.values()) >= 400


def round_trip(fhir: httpx.Client, name: str, example: dict[str, Any]) -> None:
    resource_type = example["resourceType"]
    created = fhir.post(f"/{resource_type}", json=example, headers=JSON)
    assert created.status_code == 201, f"{name}: create {created.text[:500]}"
    stored = created.json()
    rid = stored["id"]
    assert stored["meta"]["versionId"] == "1"
    # Apart from id and meta, what comes back is what was sent.
    trimmed = {k: v for k, v in stored.items() if k not in ("id", "meta")}
    sent = {k: v for k, v in example.items() if k not in ("id", "meta")}
    assert trimmed == sent, name

    read = fhir.get(f"/{resource_type}/{rid}")
    assert read.status_code == 200 and read.json() == stored, name
    vread = fhir.get(f"/{resource_type}/{rid}/_history/1")
    assert vread.status_code == 200 and vread.json() == stored, name

    changed = {**stored, "meta": {"tag": [TAG]}}
    updated = fhir.put(f"/{resource_type}/{rid}", json=changed, headers=JSON)
    assert updated.status_code == 200, f"{name}: update {updated.text[:500]}"
    assert updated.json()["meta"]["versionId"] == "2"
    assert updated.json()["meta"]["tag"] == [TAG]

    history = fhir.get(f"/{resource_type}/{rid}/_history").json()
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"'], name

    assert fhir.delete(f"/{resource_type}/{rid}").status_code == 204, name
    assert fhir.get(f"/{resource_type}/{rid}").status_code == 410, name
    assert fhir.get(f"/{resource_type}/{rid}/_history").json()["total"] == 3, name


@pytest.mark.parametrize("resource_type", sorted(CLINICAL_TYPES & EXAMPLES.keys()))
def test_official_examples_round_trip(fhir: httpx.Client, resource_type: str) -> None:
    for name, example in EXAMPLES[resource_type]:
        round_trip(fhir, name, example)
