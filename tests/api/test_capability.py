"""The CapabilityStatement claims only what the server does."""

from __future__ import annotations

import httpx
import pytest

from app.fhir import model
from app.fhir.outcome import FhirError
from app.fhir.search.parameters import registry
from app.fhir.search.parse import parse
from tests.conftest import RunningServer

SAMPLE_VALUES = {
    "string": "a",
    "token": "a",
    "date": "2020",
    "number": "1",
    "quantity": "1",
    "reference": "Patient/1",
    "uri": "http://example.org/a",
    "composite": "a$b",
    "special": "a",
}


@pytest.fixture(scope="module")
def statement(fhir_module: httpx.Client) -> dict[str, object]:
    response = fhir_module.get("/metadata")
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


@pytest.fixture(scope="module")
def fhir_module(hestia: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=hestia.fhir, timeout=60)


def test_statement_basics(statement: dict) -> None:
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance"
    assert set(statement["format"]) == {"application/fhir+json", "application/json"}
    types = {r["type"] for r in statement["rest"][0]["resource"]}
    assert types == set(model.STORABLE_TYPES)
    model.validate(statement)


def test_every_listed_search_parameter_is_accepted_strictly(statement: dict) -> None:
    reg = registry()
    checked = 0
    for resource in statement["rest"][0]["resource"]:
        for param in resource.get("searchParam", []):
            value = SAMPLE_VALUES[param["type"]]
            try:
                parse(resource["type"], [(param["name"], value)], reg, strict=True)
            except FhirError as error:
                # A malformed sample value is fine (e.g. a composite needing other parts);
                # an unknown parameter is not.
                assert "unknown" not in error.diagnostics.lower(), (resource["type"], param)
            checked += 1
    assert checked > 2000


@pytest.mark.parametrize("resource_type", ["Patient", "Observation", "Encounter", "Condition"])
def test_listed_parameters_search_over_http(
    statement: dict, fhir_module: httpx.Client, resource_type: str
) -> None:
    resource = next(r for r in statement["rest"][0]["resource"] if r["type"] == resource_type)
    for param in resource["searchParam"]:
        if param["type"] in ("composite", "special"):
            continue
        response = fhir_module.get(
            f"/{resource_type}",
            params={param["name"]: SAMPLE_VALUES[param["type"]]},
            headers={"Prefer": "handling=strict"},
        )
        assert response.status_code == 200, (param["name"], response.text[:300])


def test_listed_interactions_answer(statement: dict, fhir_module: httpx.Client) -> None:
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient["interaction"]}
    assert {"read", "vread", "update", "delete", "create", "search-type"} <= codes
    created = fhir_module.post(
        "/Patient",
        json={"resourceType": "Patient"},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert created.status_code == 201
    pid = created.json()["id"]
    if "history-instance" in codes:
        assert fhir_module.get(f"/Patient/{pid}/_history").status_code == 200
    if "history-type" in codes:
        assert fhir_module.get("/Patient/_history", params={"_count": 1}).status_code == 200
    if "patch" in codes:
        response = fhir_module.patch(
            f"/Patient/{pid}",
            content=b'[{"op": "add", "path": "/active", "value": true}]',
            headers={"Content-Type": "application/json-patch+json"},
        )
        assert response.status_code == 200
