"""batch Bundles: independent entries, each with its own status or OperationOutcome."""

from __future__ import annotations

import base64
import json
from typing import Any

from tests.fhir.test_bundle_env import BASE, Env, env, mongo, patient, post, urn

__all__ = ["env", "mongo"]

JsonDict = dict[str, Any]


async def test_one_failing_entry_does_not_stop_the_others(env: Env) -> None:
    response = await env.batch(
        [
            post(patient("b-1")),
            post({"resourceType": "Patient", "notAnElement": True}),
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            post(patient("b-2")),
        ]
    )
    assert response["type"] == "batch-response"
    entries = response["entry"]
    assert len(entries) == 4
    assert entries[0]["response"]["status"] == "201 Created"
    assert entries[1]["response"]["status"].startswith("422")
    outcome = entries[1]["response"]["outcome"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"][0] == "Bundle.entry[1]"
    assert entries[2]["response"]["status"] == "404 Not Found"
    assert entries[2]["response"]["outcome"]["issue"][0]["code"] == "not-found"
    assert entries[3]["response"]["status"] == "201 Created"
    assert await env.count("Patient") == 2


async def test_get_entries_read_vread_and_search(env: Env) -> None:
    created = await env.interactions.create("Patient", patient("b-search"))
    assert created.version
    pid = created.version.id
    response = await env.batch(
        [
            {"request": {"method": "GET", "url": f"Patient/{pid}"}},
            {"request": {"method": "GET", "url": f"{BASE}/Patient/{pid}/_history/1"}},
            {"request": {"method": "GET", "url": "Patient?identifier=urn:test:mrn|b-search"}},
        ]
    )
    read, vread, search = response["entry"]
    assert read["resource"]["id"] == pid and read["response"]["etag"] == 'W/"1"'
    assert vread["resource"]["meta"]["versionId"] == "1"
    assert search["resource"]["type"] == "searchset"
    assert [e["resource"]["id"] for e in search["resource"]["entry"]] == [pid]


async def test_references_resolve_only_to_entries_that_were_stored(env: Env) -> None:
    good, bad = urn(), urn()
    subject = {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}}
    response = await env.batch(
        [
            post(patient(), good),
            post({"resourceType": "Patient", "birthDate": "not a date"}, bad),
            post({**subject, "subject": {"reference": good}}),
            post({**subject, "subject": {"reference": bad}}),
        ]
    )
    statuses = [e["response"]["status"][:3] for e in response["entry"]]
    assert statuses == ["201", "422", "201", "400"]
    pid = response["entry"][0]["fullUrl"].rsplit("/", 1)[1]
    encounter_id = response["entry"][2]["fullUrl"].rsplit("/", 1)[1]
    stored = (await env.interactions.read("Encounter", encounter_id)).resource
    assert stored is not None and stored["subject"]["reference"] == f"Patient/{pid}"
    assert (
        "Bundle.entry[1]" in response["entry"][3]["response"]["outcome"]["issue"][0]["diagnostics"]
    )


async def test_patch_entries_with_binary_json_patch_and_parameters(env: Env) -> None:
    created = await env.interactions.create("Patient", patient())
    assert created.version
    pid = created.version.id
    ops = json.dumps([{"op": "add", "path": "/gender", "value": "female"}]).encode()
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "add"},
                    {"name": "path", "valueString": "Patient"},
                    {"name": "name", "valueString": "birthDate"},
                    {"name": "value", "valueDate": "2000-02-29"},
                ],
            }
        ],
    }
    response = await env.batch(
        [
            {
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/json-patch+json",
                    "data": base64.b64encode(ops).decode(),
                },
                "request": {"method": "PATCH", "url": f"Patient/{pid}"},
            },
            {"resource": parameters, "request": {"method": "PATCH", "url": f"Patient/{pid}"}},
        ],
        prefer_return="representation",
    )
    assert [e["response"]["etag"] for e in response["entry"]] == ['W/"2"', 'W/"3"']
    final = response["entry"][1]["resource"]
    assert final["gender"] == "female" and final["birthDate"] == "2000-02-29"


async def test_malformed_entries_get_their_own_outcome(env: Env) -> None:
    response = await env.batch(
        [
            {"request": {"method": "TRACE", "url": "Patient"}},
            {"resource": patient()},
            {"request": {"method": "POST", "url": "NoSuchType"}, "resource": {}},
            post(patient()),
        ]
    )
    statuses = [e["response"]["status"][:3] for e in response["entry"]]
    assert statuses == ["400", "400", "404", "201"]
