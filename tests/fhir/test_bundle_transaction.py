"""transaction Bundles (R4 http.html#transaction) through BundleProcessor on the real database."""

from __future__ import annotations

import base64
import copy
from datetime import timedelta
from typing import Any

import pytest
from pymongo.errors import BulkWriteError

from app.fhir.outcome import BadRequest, FhirError, NotFound, PayloadTooLarge, PreconditionFailed
from app.store.versions import history_id
from tests.fhir.test_bundle_env import BASE, Env, env, mongo, patient, post, urn

__all__ = ["env", "mongo"]

JsonDict = dict[str, Any]


def observation(subject: str, **extra: Any) -> JsonDict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": subject},
        **extra,
    }


def ref_id(entry: JsonDict) -> tuple[str, str]:
    """(type, id) from a response entry's location base/Type/id/_history/n."""
    parts = entry["response"]["location"][len(BASE) + 1 :].split("/")
    return parts[0], parts[1]


async def stored(env: Env, resource_type: str, resource_id: str) -> JsonDict:
    return (await env.interactions.read(resource_type, resource_id)).resource or {}


async def test_post_entries_are_created_and_urn_references_rewritten(env: Env) -> None:
    p_url = urn()
    response = await env.transaction([post(patient(), p_url), post(observation(p_url))])
    assert response["resourceType"] == "Bundle" and response["type"] == "transaction-response"
    first, second = response["entry"]
    for entry in (first, second):
        assert entry["response"]["status"] == "201 Created"
        assert entry["response"]["etag"] == 'W/"1"'
        assert entry["response"]["location"].endswith("/_history/1")
        assert entry["response"]["lastModified"].endswith("Z")
        assert "resource" not in entry  # return=minimal
    p_type, p_id = ref_id(first)
    o_type, o_id = ref_id(second)
    assert (p_type, o_type) == ("Patient", "Observation")
    assert p_url not in p_id
    obs = await stored(env, "Observation", o_id)
    assert obs["subject"]["reference"] == f"Patient/{p_id}"
    # The search index holds the rewritten reference, not the placeholder.
    doc = await env.store.read_current("Observation", o_id)
    assert doc is not None
    assert (
        f"Patient/{p_id}"
        in (await env.store.current("Observation").find_one({"_id": o_id}))["s"]["subject"]
    )


async def test_a_failing_fifth_entry_leaves_nothing_stored_history_included(env: Env) -> None:
    p_url = urn()
    entries = [post(patient(), p_url)] + [post(observation(p_url)) for _ in range(3)]
    invalid = observation(p_url, valueQuantity={"value": "not a number"})
    stale = {
        "resource": patient(id="p5"),
        "request": {"method": "PUT", "url": "Patient/p5", "ifMatch": 'W/"3"'},
    }
    for fifth, status in ((post(invalid), 422), (stale, 412)):
        with pytest.raises(FhirError) as caught:
            await env.transaction([*entries, fifth])
        assert caught.value.status == status
        assert caught.value.issues[0]["expression"][0] == "Bundle.entry[4]"
        assert await env.store.current("Patient").count_documents({}) == 0
        assert await env.store.current("Observation").count_documents({}) == 0
        assert await env.history_count() == 0


async def test_a_failure_inside_the_database_rolls_back_earlier_writes(env: Env) -> None:
    # History already holds Patient/clash/1 (planted), so the transaction's history insert
    # fails after its current-collection inserts were sent: MongoDB must undo them.
    await env.store.history.insert_one({"_id": history_id("Patient", "clash", 1)})
    entries = [post(observation("Patient/x")) for _ in range(3)]
    entries.append(
        {
            "resource": patient(id="clash"),
            "request": {"method": "PUT", "url": "Patient/clash"},
        }
    )
    with pytest.raises(BulkWriteError):
        await env.transaction(entries)
    assert await env.store.current("Observation").count_documents({}) == 0
    assert await env.store.current("Patient").count_documents({}) == 0
    assert await env.history_count() == 1


async def test_processing_order_is_delete_post_put_or_patch_then_get(env: Env) -> None:
    kept = await env.interactions.create("Patient", patient())
    gone = await env.interactions.create("Patient", patient())
    patched = await env.interactions.create("Patient", patient())
    assert kept.version and gone.version and patched.version
    kept_id, gone_id, patched_id = kept.version.id, gone.version.id, patched.version.id
    json_patch = b'[{"op": "add", "path": "/gender", "value": "female"}]'

    entries = [
        {"request": {"method": "GET", "url": f"Patient/{kept_id}"}},
        {
            "resource": {
                "resourceType": "Binary",
                "contentType": "application/json-patch+json",
                "data": base64.b64encode(json_patch).decode(),
            },
            "request": {"method": "PATCH", "url": f"Patient/{patched_id}"},
        },
        {
            "resource": patient(id=kept_id, gender="male"),
            "request": {"method": "PUT", "url": f"Patient/{kept_id}"},
        },
        post(patient()),
        {"request": {"method": "DELETE", "url": f"Patient/{gone_id}"}},
    ]
    outcome = await env.processor.process_with_versions(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries},
        base_url=BASE,
        max_entries=100,
    )
    # R4: DELETE, then POST, then PUT and PATCH together (in request order), then GET.
    assert [v.method for v in outcome.written] == ["DELETE", "POST", "PATCH", "PUT"]
    statuses = [e["response"]["status"] for e in outcome.bundle["entry"]]
    assert statuses == ["200 OK", "200 OK", "200 OK", "201 Created", "204 No Content"]
    # The GET came last, so it sees the PUT of the same Bundle.
    got = outcome.bundle["entry"][0]["resource"]
    assert got["gender"] == "male" and got["meta"]["versionId"] == "2"
    assert (await stored(env, "Patient", patched_id))["gender"] == "female"
    with pytest.raises(FhirError) as caught:
        await env.interactions.read("Patient", gone_id)
    assert caught.value.status == 410


async def test_references_in_extensions_contained_and_narrative_are_rewritten(env: Env) -> None:
    p_url = urn()
    oid = "urn:oid:1.2.3.4.5"
    org = {"resourceType": "Organization", "name": "Ward 7"}
    obs = observation(
        p_url,
        extension=[
            {"url": "http://example.org/ext", "valueReference": {"reference": oid}},
        ],
        contained=[
            {
                "resourceType": "Provenance",
                "id": "prov",
                "recorded": "2024-01-01T00:00:00Z",
                "target": [{"reference": p_url}],
                "agent": [{"who": {"reference": oid}}],
            }
        ],
        text={
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{p_url}">pt</a></div>',
        },
        performer=[{"reference": "#prov"}],
    )
    response = await env.transaction([post(obs), post(patient(), p_url), post(org, oid)])
    _, o_id = ref_id(response["entry"][0])
    _, p_id = ref_id(response["entry"][1])
    _, org_id = ref_id(response["entry"][2])
    saved = await stored(env, "Observation", o_id)
    assert saved["extension"][0]["valueReference"]["reference"] == f"Organization/{org_id}"
    contained = saved["contained"][0]
    assert contained["target"][0]["reference"] == f"Patient/{p_id}"
    assert contained["agent"][0]["who"]["reference"] == f"Organization/{org_id}"
    assert f'href="Patient/{p_id}"' in saved["text"]["div"]
    assert saved["performer"][0]["reference"] == "#prov"


async def test_relative_references_to_a_posted_entry_with_absolute_full_url(env: Env) -> None:
    response = await env.transaction(
        [
            post(patient(), "http://other.example/fhir/Patient/abc"),
            post(observation("Patient/abc")),
            post(observation("http://other.example/fhir/Patient/abc")),
        ]
    )
    _, p_id = ref_id(response["entry"][0])
    assert p_id != "abc"
    for entry in response["entry"][1:]:
        saved = await stored(env, "Observation", ref_id(entry)[1])
        assert saved["subject"]["reference"] == f"Patient/{p_id}"


async def test_if_none_exist_reuses_the_existing_resource(env: Env) -> None:
    existing = await env.interactions.create("Patient", patient("mrn-1"))
    assert existing.version
    p_url = urn()
    response = await env.transaction(
        [
            post(patient("mrn-1"), p_url, ifNoneExist="identifier=urn:test:mrn|mrn-1"),
            post(observation(p_url)),
        ]
    )
    assert response["entry"][0]["response"]["status"] == "200 OK"
    assert ref_id(response["entry"][0]) == ("Patient", existing.version.id)
    assert await env.count("Patient") == 1
    saved = await stored(env, "Observation", ref_id(response["entry"][1])[1])
    assert saved["subject"]["reference"] == f"Patient/{existing.version.id}"


async def test_if_match_current_passes_and_stale_fails_the_transaction(env: Env) -> None:
    created = await env.interactions.create("Patient", patient())
    assert created.version
    pid = created.version.id
    put = {
        "resource": patient(id=pid, gender="other"),
        "request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"1"'},
    }
    ok = await env.transaction([put])
    assert ok["entry"][0]["response"]["etag"] == 'W/"2"'
    with pytest.raises(PreconditionFailed) as caught:
        await env.transaction([post(patient()), put])
    assert caught.value.issues[0]["expression"][0] == "Bundle.entry[1]"
    assert await env.count("Patient") == 1


async def test_if_none_match_and_if_modified_since_on_get_entries(env: Env) -> None:
    created = await env.interactions.create("Patient", patient())
    assert created.version
    version = created.version
    later = (version.updated + timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    earlier = (version.updated - timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    url = f"Patient/{version.id}"
    response = await env.transaction(
        [
            {"request": {"method": "GET", "url": url, "ifNoneMatch": 'W/"1"'}},
            {"request": {"method": "GET", "url": url, "ifNoneMatch": 'W/"7"'}},
            {"request": {"method": "GET", "url": url, "ifModifiedSince": later}},
            {"request": {"method": "GET", "url": url, "ifModifiedSince": earlier}},
        ]
    )
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert statuses == ["304 Not Modified", "200 OK", "304 Not Modified", "200 OK"]
    assert "resource" not in response["entry"][0]
    assert response["entry"][1]["resource"]["id"] == version.id


async def test_put_with_if_none_match_star_refuses_an_existing_resource(env: Env) -> None:
    created = await env.interactions.create("Patient", patient())
    assert created.version
    pid = created.version.id
    entry = {
        "resource": patient(id=pid),
        "request": {"method": "PUT", "url": f"Patient/{pid}", "ifNoneMatch": "*"},
    }
    with pytest.raises(PreconditionFailed):
        await env.transaction([entry])
    fresh = {
        "resource": patient(id="brand-new"),
        "request": {"method": "PUT", "url": "Patient/brand-new", "ifNoneMatch": "*"},
    }
    response = await env.transaction([fresh])
    assert response["entry"][0]["response"]["status"] == "201 Created"


async def test_conditional_references_resolve_to_exactly_one_match(env: Env) -> None:
    target = await env.interactions.create("Patient", patient("cond-1"))
    assert target.version
    response = await env.transaction([post(observation("Patient?identifier=urn:test:mrn|cond-1"))])
    saved = await stored(env, "Observation", ref_id(response["entry"][0])[1])
    assert saved["subject"]["reference"] == f"Patient/{target.version.id}"

    with pytest.raises(NotFound) as none:
        await env.transaction(
            [post(patient()), post(observation("Patient?identifier=urn:test:mrn|nobody"))]
        )
    assert none.value.issues[0]["expression"][0] == "Bundle.entry[1]"

    await env.interactions.create("Patient", patient("twin"))
    await env.interactions.create("Patient", patient("twin"))
    with pytest.raises(PreconditionFailed) as several:
        await env.transaction([post(observation("Patient?identifier=twin"))])
    assert several.value.issues[0]["expression"][0] == "Bundle.entry[0]"
    assert await env.count("Observation") == 1


async def test_two_entries_resolving_to_the_same_resource_fail_with_400(env: Env) -> None:
    existing = await env.interactions.create("Patient", patient("dup-1"))
    assert existing.version
    pid = existing.version.id
    with pytest.raises(BadRequest) as caught:
        await env.transaction(
            [
                {
                    "resource": patient(id=pid),
                    "request": {"method": "PUT", "url": f"Patient/{pid}"},
                },
                {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
            ]
        )
    assert caught.value.status == 400
    with pytest.raises(BadRequest):
        await env.transaction(
            [
                post(patient("dup-1"), ifNoneExist="identifier=urn:test:mrn|dup-1"),
                {
                    "resource": patient("dup-1"),
                    "request": {"method": "PUT", "url": "Patient?identifier=urn:test:mrn|dup-1"},
                },
            ]
        )
    assert (await env.interactions.read("Patient", pid)).vid == 1


async def test_prefer_representation_returns_the_stored_resources(env: Env) -> None:
    response = await env.transaction([post(patient())], prefer_return="representation")
    entry = response["entry"][0]
    assert entry["resource"]["resourceType"] == "Patient"
    assert entry["resource"]["meta"]["versionId"] == "1"
    assert entry["fullUrl"] == f"{BASE}/Patient/{entry['resource']['id']}"


async def test_bundle_type_other_than_batch_or_transaction_is_refused(env: Env) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": []}
    with pytest.raises(BadRequest) as caught:
        await env.processor.process(bundle, base_url=BASE, max_entries=10)
    assert "collection" in caught.value.diagnostics
    assert "batch" in caught.value.diagnostics and "transaction" in caught.value.diagnostics


async def test_more_entries_than_the_limit_gives_413(env: Env) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        await env.transaction([post(patient()) for _ in range(4)], max_entries=3)
    assert caught.value.status == 413
    assert await env.count("Patient") == 0


async def test_unresolvable_placeholder_and_duplicate_full_url_fail(env: Env) -> None:
    with pytest.raises(BadRequest) as dangling:
        await env.transaction([post(observation(urn()))])
    assert dangling.value.issues[0]["expression"][0] == "Bundle.entry[0]"
    same = urn()
    with pytest.raises(BadRequest) as twice:
        await env.transaction([post(patient(), same), post(patient(), same)])
    assert twice.value.issues[0]["expression"][0] == "Bundle.entry[1]"
    assert await env.count("Patient") == 0


async def test_raw_ids_and_written_versions_are_reported(env: Env) -> None:
    p_url = urn()
    outcome = await env.processor.process_with_versions(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [post(patient(), p_url), post(observation(p_url))],
        },
        base_url=BASE,
        raw_ids=["raw-42"],
        max_entries=10,
    )
    assert sorted(v.resource_type for v in outcome.written) == ["Observation", "Patient"]
    for version in outcome.written:
        doc = await env.store.current(version.resource_type).find_one({"_id": version.id})
        assert doc is not None and doc["raw"] == ["raw-42"] and doc["vid"] == version.vid


async def test_a_transaction_is_not_changed_in_the_callers_hands(env: Env) -> None:
    p_url = urn()
    entries = [post(patient(), p_url), post(observation(p_url))]
    before = copy.deepcopy(entries)
    await env.transaction(entries)
    assert entries == before
