"""Every access through the audit middleware leaves exactly the expected AuditEvent(s).

Expected values come from R4 AuditEvent and IHE BALP: subtype is the restful-interaction code;
action C for create, R for read/vread/history/capabilities, U for update/patch, D for delete,
E for searches, operations and batch/transaction; outcome 0 for success, 4 for a client-side
failure (4xx), 8 for a server failure (5xx).
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from app.audit.chain import BLOCK_INDEX, JOURNAL
from tests.audit.app_under_test import SOURCE
from tests.audit.conftest import Db, head_seq, index_all, stored

REST = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def _by_role(event: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [e for e in event.get("entity", []) if e["role"]["code"] == role]


def summary(event: dict[str, Any]) -> dict[str, Any]:
    """The parts of an AuditEvent the tests pin down, in a comparable form."""
    resource = _by_role(event, "4")
    query = _by_role(event, "24")
    return {
        "type": event["type"]["code"],
        "subtype": event["subtype"][0]["code"],
        "action": event["action"],
        "outcome": event["outcome"],
        "resource": resource[0]["what"].get("reference") if resource else None,
        "patients": [e["what"]["reference"] for e in _by_role(event, "1")],
        "query": base64.b64decode(query[0]["query"]).decode() if query else None,
    }


def ev(
    subtype: str,
    action: str,
    outcome: str = "0",
    resource: str | None = None,
    patients: tuple[str, ...] = (),
    query: str | None = None,
    type_code: str = "rest",
) -> dict[str, Any]:
    return {
        "type": type_code,
        "subtype": subtype,
        "action": action,
        "outcome": outcome,
        "resource": resource,
        "patients": list(patients),
        "query": query,
    }


BUNDLE_TX = {"resourceType": "Bundle", "type": "transaction"}
BUNDLE_BATCH = {"resourceType": "Bundle", "type": "batch"}
DENY = {"x-deny": "1"}
BAD_TOKEN = {"authorization": "Bearer bad"}

CASES: list[tuple[str, str, str, dict[str, Any], int, list[dict[str, Any]]]] = [
    ("capabilities", "GET", "/fhir/metadata", {}, 200, [ev("capabilities", "R")]),
    (
        "read patient",
        "GET",
        "/fhir/Patient/p1",
        {},
        200,
        [ev("read", "R", resource="Patient/p1/_history/3", patients=("Patient/p1",))],
    ),
    (
        "read observation",
        "GET",
        "/fhir/Observation/o1",
        {},
        200,
        [ev("read", "R", resource="Observation/o1/_history/3", patients=("Patient/p1",))],
    ),
    (
        "vread",
        "GET",
        "/fhir/Observation/o2/_history/2",
        {},
        200,
        [ev("vread", "R", resource="Observation/o2/_history/2")],
    ),
    (
        "create",
        "POST",
        "/fhir/Observation",
        {"json": {"resourceType": "Observation"}},
        201,
        [ev("create", "C", resource="Observation/new1/_history/1", patients=("Patient/p1",))],
    ),
    (
        "update",
        "PUT",
        "/fhir/Patient/p1",
        {"json": {"resourceType": "Patient", "id": "p1"}},
        200,
        [ev("update", "U", resource="Patient/p1/_history/4", patients=("Patient/p1",))],
    ),
    (
        "patch",
        "PATCH",
        "/fhir/Patient/p1",
        {"json": []},
        200,
        [ev("patch", "U", resource="Patient/p1/_history/5", patients=("Patient/p1",))],
    ),
    (
        "delete",
        "DELETE",
        "/fhir/Patient/p1",
        {},
        204,
        [ev("delete", "D", resource="Patient/p1", patients=("Patient/p1",))],
    ),
    (
        "history-instance",
        "GET",
        "/fhir/Patient/p1/_history",
        {},
        200,
        [ev("history-instance", "R", resource="Patient/p1", patients=("Patient/p1",))],
    ),
    ("history-type", "GET", "/fhir/Observation/_history", {}, 200, [ev("history-type", "R")]),
    (
        "history-system, one event per patient",
        "GET",
        "/fhir/_history",
        {},
        200,
        [
            ev("history-system", "R", patients=("Patient/p1",)),
            ev("history-system", "R", patients=("Patient/p2",)),
        ],
    ),
    (
        "search-type",
        "GET",
        "/fhir/Observation?patient=p1&code=1234-5",
        {},
        200,
        [
            ev(
                "search-type",
                "E",
                patients=("Patient/p1",),
                query="Observation?patient=p1&code=1234-5",
            )
        ],
    ),
    (
        "search over two patients, one event per patient",
        "GET",
        "/fhir/Observation?patient=p1&patient=p2",
        {},
        200,
        [
            ev(
                "search-type",
                "E",
                patients=("Patient/p1",),
                query="Observation?patient=p1&patient=p2",
            ),
            ev(
                "search-type",
                "E",
                patients=("Patient/p2",),
                query="Observation?patient=p1&patient=p2",
            ),
        ],
    ),
    (
        "search-system",
        "GET",
        "/fhir?_type=Patient",
        {},
        200,
        [ev("search-system", "E", query="?_type=Patient")],
    ),
    (
        "transaction",
        "POST",
        "/fhir",
        {"json": BUNDLE_TX},
        200,
        [ev("transaction", "E", patients=("Patient/p1",))],
    ),
    (
        "batch",
        "POST",
        "/fhir",
        {"json": BUNDLE_BATCH},
        200,
        [ev("batch", "E", patients=("Patient/p1",))],
    ),
    (
        "operation",
        "POST",
        "/fhir/Patient/p1/$everything",
        {},
        200,
        [ev("operation", "E", resource="Patient/p1", patients=("Patient/p1",))],
    ),
    (
        "ingest",
        "POST",
        "/ingest/hl7v2",
        {"content": b"MSH|^~\\&|"},
        202,
        [ev("ingest", "C", patients=("Patient/p9",), type_code="110107")],
    ),
    ("token", "POST", "/oauth/token", {}, 200, [ev("token", "E", type_code="110114")]),
    # Denied and failed requests.
    (
        "read denied 403",
        "GET",
        "/fhir/Patient/p1",
        {"headers": DENY},
        403,
        [ev("read", "R", "4", resource="Patient/p1", patients=("Patient/p1",))],
    ),
    (
        "search denied 403",
        "GET",
        "/fhir/Observation?patient=p2",
        {"headers": DENY},
        403,
        [ev("search-type", "E", "4", query="Observation?patient=p2")],
    ),
    (
        "operation denied 403",
        "POST",
        "/fhir/Patient/p1/$everything",
        {"headers": DENY},
        403,
        [ev("operation", "E", "4", resource="Patient/p1", patients=("Patient/p1",))],
    ),
    (
        "read of an unknown id 404",
        "GET",
        "/fhir/Patient/missing",
        {},
        404,
        [ev("read", "R", "4", resource="Patient/missing", patients=("Patient/missing",))],
    ),
    (
        "401 before routing, from the URL alone",
        "GET",
        "/fhir/Patient/p1",
        {"headers": BAD_TOKEN},
        401,
        [ev("read", "R", "4", resource="Patient/p1", patients=("Patient/p1",))],
    ),
    (
        "no such route 404, compartment search read from the URL",
        "GET",
        "/fhir/Patient/p1/Observation?code=x",
        {},
        404,
        [ev("search-type", "E", "4", patients=("Patient/p1",), query="Observation?code=x")],
    ),
    (
        "method not allowed 405",
        "DELETE",
        "/fhir/Observation",
        {},
        405,
        [ev("delete", "D", "4")],
    ),
    ("server error 500", "GET", "/fhir/boom", {}, 500, [ev("operation", "E", "8")]),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_each_interaction_leaves_exactly_the_expected_events(
    http: httpx.AsyncClient,
    audit_db: Db,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    expected: list[dict[str, Any]],
) -> None:
    before = await head_seq(audit_db)
    response = await http.request(method, path, **kwargs)
    assert response.status_code == status
    events = [doc["resource"] for doc in await stored(audit_db, before)]
    assert [summary(e) for e in events] == expected


async def test_agents_name_client_user_token_and_address(
    http: httpx.AsyncClient, audit_db: Db
) -> None:
    response = await http.get(
        "/fhir/Patient/p1", headers={"authorization": "Bearer app-7|Practitioner/42|jti-abc"}
    )
    assert response.status_code == 200
    [doc] = await stored(audit_db)
    agents = doc["resource"]["agent"]
    client = next(a for a in agents if a["type"]["coding"][0]["code"] == "110153")
    user = next(a for a in agents if a["type"]["coding"][0]["code"] == "humanuser")
    server = next(a for a in agents if a["type"]["coding"][0]["code"] == "110152")
    assert client["who"]["identifier"]["value"] == "app-7"
    assert client["requestor"] is False
    assert client["network"] == {"address": "10.1.2.3", "type": "2"}
    assert user["who"] == {"reference": "Practitioner/42"}
    assert user["requestor"] is True
    assert user["policy"] == ["jti-abc"]
    assert server["who"]["display"] == SOURCE
    assert doc["resource"]["source"]["observer"]["display"] == SOURCE


async def test_unauthenticated_client_is_the_requestor(
    http: httpx.AsyncClient, audit_db: Db
) -> None:
    await http.get("/fhir/metadata")
    [doc] = await stored(audit_db)
    [client] = [a for a in doc["resource"]["agent"] if a["requestor"]]
    assert client["who"] == {"display": "unauthenticated client"}
    assert "policy" not in client


async def test_no_resource_body_or_diagnostics_reach_the_event(
    http: httpx.AsyncClient, audit_db: Db
) -> None:
    secret = "Zaphod-Beeblebrox-1942"
    await http.put(
        "/fhir/Patient/p1",
        json={"resourceType": "Patient", "id": "p1", "name": [{"family": secret}]},
    )
    await http.get("/fhir/Patient/missing")  # its OperationOutcome diagnostics name the id
    assert await index_all(audit_db) == 2
    raw = str(
        [doc async for doc in audit_db[JOURNAL].find({})]
        + [doc async for doc in audit_db[BLOCK_INDEX].find({})]
    )
    assert "Patient/p1" in raw  # the events are there, and carry identifiers only
    assert secret not in raw
    assert "is not known" not in raw


async def test_paths_outside_the_audited_prefixes_are_not_audited(
    http: httpx.AsyncClient, audit_db: Db
) -> None:
    response = await http.get("/public")
    assert response.status_code == 200
    assert await stored(audit_db) == []


async def test_response_is_released_only_after_its_event_is_stored(
    http: httpx.AsyncClient, audit_db: Db
) -> None:
    for _ in range(5):
        before = await head_seq(audit_db)
        response = await http.get("/fhir/Observation/o1")
        assert response.status_code == 200
        # The event is already readable when the client holds the response.
        assert len(await stored(audit_db, before)) == 1


async def test_cors_preflights_are_not_audited_but_other_options_requests_are(
    http: httpx.AsyncClient, audit_db: Db
) -> None:
    before = await head_seq(audit_db)
    await http.options(
        "/fhir/Patient/p1",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
    )
    assert await stored(audit_db, before) == []
    await http.options("/fhir/Patient/p1")
    assert len(await stored(audit_db, before)) == 1
