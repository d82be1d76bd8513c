"""FHIR R4 RESTful interactions on single resources (http.html), over HTTP against the real
app and database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx

JSON = {"Content-Type": "application/fhir+json"}


def new_patient(**extra: object) -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": uuid.uuid4().hex}],
        "name": [{"family": "Chalmers", "given": ["Peter"]}],
        **extra,
    }


def create(fhir: httpx.Client, resource: dict[str, object]) -> httpx.Response:
    response = fhir.post(f"/{resource['resourceType']}", json=resource, headers=JSON)
    assert response.status_code == 201, response.text
    return response


def test_create_sets_id_version_and_headers(fhir: httpx.Client) -> None:
    response = create(
        fhir, new_patient(meta={"versionId": "99", "lastUpdated": "2001-01-01T00:00:00Z"})
    )
    body = response.json()
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"] != "2001-01-01T00:00:00Z"
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert "last-modified" in response.headers
    assert response.headers["content-type"].startswith("application/fhir+json")


def test_read_and_vread_return_the_stored_version(fhir: httpx.Client) -> None:
    created = create(fhir, new_patient()).json()
    read = fhir.get(f"/Patient/{created['id']}")
    assert read.status_code == 200
    assert read.json() == created
    assert read.headers["etag"] == 'W/"1"'
    vread = fhir.get(f"/Patient/{created['id']}/_history/1")
    assert vread.status_code == 200 and vread.json() == created
    assert fhir.get(f"/Patient/{created['id']}/_history/2").status_code == 404


def test_update_creates_new_version_and_keeps_old(fhir: httpx.Client) -> None:
    created = create(fhir, new_patient()).json()
    changed = {**created, "gender": "male"}
    response = fhir.put(f"/Patient/{created['id']}", json=changed, headers=JSON)
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "2"
    assert response.headers["etag"] == 'W/"2"'
    assert response.headers["location"].endswith("/_history/2")
    assert "gender" not in fhir.get(f"/Patient/{created['id']}/_history/1").json()
    assert fhir.get(f"/Patient/{created['id']}").json()["gender"] == "male"


def test_update_as_create_with_client_id(fhir: httpx.Client) -> None:
    resource_id = f"client-{uuid.uuid4().hex[:12]}"
    response = fhir.put(f"/Patient/{resource_id}", json=new_patient(id=resource_id), headers=JSON)
    assert response.status_code == 201
    assert response.json()["id"] == resource_id
    assert response.json()["meta"]["versionId"] == "1"


def test_if_match_gives_optimistic_locking(fhir: httpx.Client) -> None:
    created = create(fhir, new_patient()).json()
    url = f"/Patient/{created['id']}"
    ok = fhir.put(url, json=created, headers={**JSON, "If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = fhir.put(url, json=created, headers={**JSON, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    assert fhir.get(url).json()["meta"]["versionId"] == "2"


def test_conditional_read_headers_give_304(fhir: httpx.Client) -> None:
    created = create(fhir, new_patient())
    url = f"/Patient/{created.json()['id']}"
    assert fhir.get(url, headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert fhir.get(url, headers={"If-None-Match": 'W/"7"'}).status_code == 200
    later = format_datetime(datetime.now(UTC) + timedelta(minutes=5), usegmt=True)
    earlier = format_datetime(datetime.now(UTC) - timedelta(days=1), usegmt=True)
    assert fhir.get(url, headers={"If-Modified-Since": later}).status_code == 304
    assert fhir.get(url, headers={"If-Modified-Since": earlier}).status_code == 200


def test_delete_then_read_is_gone_and_put_revives(fhir: httpx.Client) -> None:
    created = create(fhir, new_patient()).json()
    url = f"/Patient/{created['id']}"
    deleted = fhir.delete(url)
    assert deleted.status_code == 204
    assert deleted.headers["etag"] == 'W/"2"'
    gone = fhir.get(url)
    assert gone.status_code == 410
    assert gone.json()["resourceType"] == "OperationOutcome"
    assert fhir.delete(url).status_code == 204  # deleting again changes nothing
    history = fhir.get(f"{url}/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    revived = fhir.put(url, json=created, headers=JSON)
    assert revived.status_code == 201
    assert revived.json()["meta"]["versionId"] == "3"
    assert fhir.get(url).status_code == 200


def test_invalid_ids_are_rejected(fhir: httpx.Client) -> None:
    too_long = "a" * 65
    assert fhir.get(f"/Patient/{too_long}").status_code == 400
    response = fhir.put("/Patient/bad_id", json=new_patient(id="bad_id"), headers=JSON)
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_unknown_type_is_404(fhir: httpx.Client) -> None:
    response = fhir.post("/Pateint", json={"resourceType": "Pateint"}, headers=JSON)
    assert response.status_code == 404
    assert response.json()["issue"][0]["code"] == "not-supported"
    assert fhir.get("/Pateint/1").status_code == 404


def test_prefer_return(fhir: httpx.Client) -> None:
    minimal = fhir.post(
        "/Patient", json=new_patient(), headers={**JSON, "Prefer": "return=minimal"}
    )
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["location"]
    oo = fhir.post(
        "/Patient", json=new_patient(), headers={**JSON, "Prefer": "return=OperationOutcome"}
    )
    assert oo.status_code == 201 and oo.json()["resourceType"] == "OperationOutcome"
    full = fhir.post(
        "/Patient", json=new_patient(), headers={**JSON, "Prefer": "return=representation"}
    )
    assert full.json()["resourceType"] == "Patient"


def test_json_formats_accepted_and_xml_refused(fhir: httpx.Client) -> None:
    plain = fhir.post("/Patient", json=new_patient(), headers={"Content-Type": "application/json"})
    assert plain.status_code == 201
    url = f"/Patient/{plain.json()['id']}"
    assert fhir.get(url, headers={"Accept": "application/json"}).status_code == 200
    assert fhir.get(url, params={"_format": "json"}).status_code == 200
    for response in (
        fhir.get(url, headers={"Accept": "application/fhir+xml"}),
        fhir.get(url, params={"_format": "xml"}),
    ):
        assert response.status_code == 406
        assert "only FHIR JSON" in response.json()["issue"][0]["diagnostics"]
    xml = fhir.post(
        "/Patient",
        content=b"<Patient xmlns='http://hl7.org/fhir'/>",
        headers={"Content-Type": "application/fhir+xml"},
    )
    assert xml.status_code == 415
    assert "only FHIR JSON" in xml.json()["issue"][0]["diagnostics"]


def _history_count(fhir: httpx.Client) -> int:
    return int(fhir.get("/Patient/_history", params={"_count": "0"}).json()["total"])


def test_bad_bodies_get_outcomes_and_write_nothing(fhir: httpx.Client) -> None:
    before = _history_count(fhir)
    cases: list[tuple[bytes, int, str]] = [
        (b'{"resourceType": "Patient",', 400, "Malformed JSON"),
        (b'{"resourceType": "Patient", "gender": "male", "gender": "female"}', 400, "Duplicate"),
        (b'{"resourceType": "Patient", "x": ' + b"[" * 200 + b"]" * 200 + b"}", 400, "deeper"),
        (b'{"resourceType": "Observation", "status": "final"}', 400, "does not match"),
        (b'{"resourceType": "Patient", "gender": 12}', 422, "Patient.gender"),
        (b'{"resourceType": "Patient", "birthDate": "1970-13-45"}', 422, "Patient.birthDate"),
        (b'{"resourceType": "Patient", "unknownElement": true}', 422, "unknownElement"),
        (b"[]", 400, "JSON object"),
        # Found by tests/api/test_api_fuzz.py: an integer past 64 bits was a 500 at the write.
        (b'{"resourceType": "Patient", "multipleBirthInteger": 99999999999999999999}', 400, "64"),
        (
            b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"},'
            b' "valueQuantity": {"value": -9223372036854775809}}',
            400,
            "out of range",
        ),
        (b"", 400, "empty"),
    ]
    for body, status, text in cases:
        response = fhir.post("/Patient", content=body, headers=JSON)
        assert response.status_code == status, (body[:60], response.text)
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert text in str(outcome), (text, outcome)
    assert _history_count(fhir) == before


def test_validation_error_names_the_element_path(fhir: httpx.Client) -> None:
    body = new_patient(name=[{"family": "X"}, {"given": "not-a-list"}])
    response = fhir.post("/Patient", json=body, headers=JSON)
    assert response.status_code == 422
    expressions = [e for i in response.json()["issue"] for e in i.get("expression", [])]
    assert any(e.startswith("Patient.name[1].given") for e in expressions), expressions


def test_body_over_limit_is_413_before_parsing(fhir: httpx.Client) -> None:
    huge = b'{"resourceType":"Patient","text":{"div":"' + b"x" * (16 * 1024 * 1024) + b'"}}'
    response = fhir.post("/Patient", content=huge, headers=JSON)
    assert response.status_code == 413
    assert response.json()["resourceType"] == "OperationOutcome"


def test_put_id_mismatch_and_missing_id(fhir: httpx.Client) -> None:
    mismatch = fhir.put("/Patient/abc", json=new_patient(id="xyz"), headers=JSON)
    assert mismatch.status_code == 400
    assert mismatch.json()["issue"][0]["expression"] == ["Patient.id"]
    missing = fhir.put("/Patient/abc", json=new_patient(), headers=JSON)
    assert missing.status_code == 400


def test_unknown_routes_and_methods_give_outcomes(fhir: httpx.Client) -> None:
    response = fhir.request("PATCH", "/metadata")
    assert response.status_code in (404, 405)
    assert response.json()["resourceType"] == "OperationOutcome"
