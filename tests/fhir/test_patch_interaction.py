"""The PATCH interaction (R4 http.html#patch) on the store: JSON Patch and FHIRPath Patch,
If-Match, conditional patch, and that a refused patch leaves the stored version unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.fhir.outcome import (
    BadRequest,
    Gone,
    NotFound,
    PreconditionFailed,
    Unprocessable,
    UnsupportedMediaType,
)
from tests.fhir.test_bundle_env import Env, env, mongo, patient

__all__ = ["env", "mongo"]

JsonDict = dict[str, Any]
JSON_PATCH = "application/json-patch+json"
FHIR_JSON = "application/fhir+json"


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


async def make_patient(env: Env, mrn: str | None = None) -> str:
    result = await env.interactions.create("Patient", patient(mrn, birthDate="1974-12-25"))
    assert result.version is not None
    return result.version.id


async def test_json_patch_creates_a_new_version(env: Env) -> None:
    pid = await make_patient(env)
    ops = [{"op": "replace", "path": "/birthDate", "value": "1975-01-01"}]
    result = await env.interactions.patch("Patient", pid, JSON_PATCH, body(ops))
    assert result.status == 200 and result.version is not None
    assert result.version.vid == 2
    stored = (await env.interactions.read("Patient", pid)).resource
    assert stored is not None
    assert stored["birthDate"] == "1975-01-01" and stored["meta"]["versionId"] == "2"
    history = await env.store.history.find_one({"id": pid, "vid": 2})
    assert history is not None and history["method"] == "PATCH"


async def test_fhirpath_patch_applies(env: Env) -> None:
    pid = await make_patient(env)
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "add"},
                    {"name": "path", "valueString": "Patient"},
                    {"name": "name", "valueString": "gender"},
                    {"name": "value", "valueCode": "female"},
                ],
            }
        ],
    }
    await env.interactions.patch("Patient", pid, FHIR_JSON, body(parameters))
    stored = (await env.interactions.read("Patient", pid)).resource
    assert stored is not None and stored["gender"] == "female"


async def test_if_match_current_succeeds_and_stale_gives_412(env: Env) -> None:
    pid = await make_patient(env)
    ops = [{"op": "add", "path": "/gender", "value": "male"}]
    ok = await env.interactions.patch("Patient", pid, JSON_PATCH, body(ops), if_match=1)
    assert ok.version is not None and ok.version.vid == 2
    with pytest.raises(PreconditionFailed):
        await env.interactions.patch("Patient", pid, JSON_PATCH, body(ops), if_match=1)
    assert (await env.interactions.read("Patient", pid)).vid == 2


@pytest.mark.parametrize(
    ("content_type", "patch", "error"),
    [
        (JSON_PATCH, b"{not json", BadRequest),
        (JSON_PATCH, body({"op": "add"}), BadRequest),
        (
            JSON_PATCH,
            body([{"op": "test", "path": "/birthDate", "value": "1900-01-01"}]),
            Unprocessable,
        ),
        (JSON_PATCH, body([{"op": "remove", "path": "/nothing"}]), Unprocessable),
        (
            JSON_PATCH,
            body([{"op": "replace", "path": "/birthDate", "value": "yesterday"}]),
            Unprocessable,
        ),
        (JSON_PATCH, body([{"op": "replace", "path": "/id", "value": "other"}]), Unprocessable),
        (
            JSON_PATCH,
            body([{"op": "replace", "path": "/resourceType", "value": "Group"}]),
            Unprocessable,
        ),
        (FHIR_JSON, body({"resourceType": "Patient"}), BadRequest),
        ("application/xml-patch+xml", b"<diff/>", UnsupportedMediaType),
    ],
)
async def test_a_refused_patch_leaves_the_stored_version_unchanged(
    env: Env, content_type: str, patch: bytes, error: type[Exception]
) -> None:
    pid = await make_patient(env)
    before = (await env.interactions.read("Patient", pid)).resource
    with pytest.raises(error) as caught:
        await env.interactions.patch("Patient", pid, content_type, patch)
    assert getattr(caught.value, "status", None) in (400, 415, 422)
    after = await env.interactions.read("Patient", pid)
    assert after.vid == 1 and after.resource == before
    assert await env.store.count_history({"id": pid}) == 1


async def test_patching_a_missing_resource_is_404_and_a_deleted_one_410(env: Env) -> None:
    ops = body([{"op": "add", "path": "/gender", "value": "male"}])
    with pytest.raises(NotFound):
        await env.interactions.patch("Patient", "no-such-patient", JSON_PATCH, ops)
    pid = await make_patient(env)
    await env.interactions.delete("Patient", pid)
    with pytest.raises(Gone):
        await env.interactions.patch("Patient", pid, JSON_PATCH, ops)


async def test_conditional_patch_needs_exactly_one_match(env: Env) -> None:
    pid = await make_patient(env, "cp-1")
    ops = body([{"op": "add", "path": "/gender", "value": "other"}])
    criteria = [("identifier", "urn:test:mrn|cp-1")]
    result = await env.interactions.conditional_patch("Patient", criteria, JSON_PATCH, ops)
    assert result.version is not None and result.version.id == pid
    with pytest.raises(NotFound):
        await env.interactions.conditional_patch(
            "Patient", [("identifier", "urn:test:mrn|nobody")], JSON_PATCH, ops
        )
    await make_patient(env, "cp-2")
    await make_patient(env, "cp-2")
    with pytest.raises(PreconditionFailed):
        await env.interactions.conditional_patch(
            "Patient", [("identifier", "cp-2")], JSON_PATCH, ops
        )
