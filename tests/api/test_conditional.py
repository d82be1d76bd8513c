"""Conditional create, update and delete (R4 http.html#ccreate, #cond-update, #cdelete)."""

from __future__ import annotations

import uuid

import httpx

JSON = {"Content-Type": "application/fhir+json"}
SYSTEM = "urn:test:conditional"


def patient(value: str, **extra: object) -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": value}],
        **extra,
    }


def test_if_none_exist_creates_once_then_returns_the_match(fhir: httpx.Client) -> None:
    value = uuid.uuid4().hex
    header = {**JSON, "If-None-Exist": f"identifier={SYSTEM}|{value}"}
    first = fhir.post("/Patient", json=patient(value), headers=header)
    assert first.status_code == 201
    again = fhir.post("/Patient", json=patient(value, gender="male"), headers=header)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["meta"]["versionId"] == "1"
    assert "gender" not in again.json()


def test_if_none_exist_with_several_matches_is_412(fhir: httpx.Client) -> None:
    value = uuid.uuid4().hex
    for _ in range(2):
        assert fhir.post("/Patient", json=patient(value), headers=JSON).status_code == 201
    response = fhir.post(
        "/Patient", json=patient(value), headers={**JSON, "If-None-Exist": f"identifier={value}"}
    )
    assert response.status_code == 412
    assert response.json()["resourceType"] == "OperationOutcome"


def test_if_none_exist_by_id(fhir: httpx.Client) -> None:
    created = fhir.post("/Patient", json=patient(uuid.uuid4().hex), headers=JSON).json()
    response = fhir.post(
        "/Patient",
        json=patient("other"),
        headers={**JSON, "If-None-Exist": f"_id={created['id']}"},
    )
    assert response.status_code == 200 and response.json()["id"] == created["id"]


def test_conditional_update_creates_then_updates_the_single_match(fhir: httpx.Client) -> None:
    value = uuid.uuid4().hex
    url = f"/Patient?identifier={SYSTEM}|{value}"
    created = fhir.put(url, json=patient(value, gender="male"), headers=JSON)
    assert created.status_code == 201
    pid = created.json()["id"]
    updated = fhir.put(url, json=patient(value, gender="female"), headers=JSON)
    assert updated.status_code == 200
    assert updated.json()["id"] == pid
    assert updated.json()["meta"]["versionId"] == "2"
    assert fhir.get(f"/Patient/{pid}").json()["gender"] == "female"


def test_conditional_update_with_several_matches_is_412(fhir: httpx.Client) -> None:
    value = uuid.uuid4().hex
    for _ in range(2):
        fhir.post("/Patient", json=patient(value), headers=JSON)
    response = fhir.put(f"/Patient?identifier={value}", json=patient(value), headers=JSON)
    assert response.status_code == 412


def test_conditional_update_body_id_must_match_the_found_resource(fhir: httpx.Client) -> None:
    value = uuid.uuid4().hex
    fhir.post("/Patient", json=patient(value), headers=JSON)
    response = fhir.put(
        f"/Patient?identifier={value}", json={**patient(value), "id": "not-it"}, headers=JSON
    )
    assert response.status_code == 400


def test_conditional_delete_removes_the_single_match(fhir: httpx.Client) -> None:
    value = uuid.uuid4().hex
    pid = fhir.post("/Patient", json=patient(value), headers=JSON).json()["id"]
    response = fhir.delete(f"/Patient?identifier={SYSTEM}|{value}")
    assert response.status_code == 204
    assert fhir.get(f"/Patient/{pid}").status_code == 410
    # Nothing matches any more: still a success, and nothing else changes.
    assert fhir.delete(f"/Patient?identifier={SYSTEM}|{value}").status_code == 204


def test_conditional_delete_with_several_matches_is_412(fhir: httpx.Client) -> None:
    value = uuid.uuid4().hex
    ids = [fhir.post("/Patient", json=patient(value), headers=JSON).json()["id"] for _ in range(2)]
    assert fhir.delete(f"/Patient?identifier={value}").status_code == 412
    assert all(fhir.get(f"/Patient/{i}").status_code == 200 for i in ids)


def test_conditional_operations_need_criteria(fhir: httpx.Client) -> None:
    assert fhir.delete("/Patient").status_code == 400
    assert fhir.put("/Patient", json=patient("x"), headers=JSON).status_code == 400
