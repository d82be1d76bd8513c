"""History at instance, type and system level (R4 http.html#history), with _since, _at,
_count and paging, against the real app and database."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx

JSON = {"Content-Type": "application/fhir+json"}


def put(
    fhir: httpx.Client, resource_type: str, resource_id: str, **fields: object
) -> httpx.Response:
    body = {"resourceType": resource_type, "id": resource_id, **fields}
    response = fhir.put(f"/{resource_type}/{resource_id}", json=body, headers=JSON)
    assert response.status_code in (200, 201), response.text
    return response


def follow(fhir: httpx.Client, url: str) -> list[dict]:
    """Every entry over all pages, following `next` links."""
    entries: list[dict] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        response = fhir.get(next_url)
        assert response.status_code == 200, response.text
        bundle = response.json()
        assert bundle["type"] == "history"
        entries += bundle.get("entry", [])
        next_url = next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None)
        pages += 1
        assert pages < 100
    return entries


def test_instance_history_shows_all_changes(fhir: httpx.Client) -> None:
    pid = f"hist-{uuid.uuid4().hex[:12]}"
    put(fhir, "Patient", pid, gender="male")
    put(fhir, "Patient", pid, gender="female")
    assert fhir.delete(f"/Patient/{pid}").status_code == 204
    put(fhir, "Patient", pid, gender="other")

    bundle = fhir.get(f"/Patient/{pid}/_history").json()
    assert bundle["total"] == 4
    versions = [e["response"]["etag"] for e in bundle["entry"]]
    assert versions == ['W/"4"', 'W/"3"', 'W/"2"', 'W/"1"']
    revived, deleted, second, first = bundle["entry"]
    assert revived["resource"]["gender"] == "other"
    assert revived["request"] == {"method": "PUT", "url": f"Patient/{pid}"}
    assert "resource" not in deleted
    assert deleted["request"]["method"] == "DELETE"
    assert second["resource"]["meta"]["versionId"] == "2"
    assert first["response"]["status"].startswith("201")
    assert all(e["fullUrl"].endswith(f"/Patient/{pid}") for e in bundle["entry"])


def test_count_pages_history_without_losing_or_repeating(fhir: httpx.Client) -> None:
    pid = f"page-{uuid.uuid4().hex[:12]}"
    for n in range(7):
        put(fhir, "Basic", pid, code={"text": f"v{n}"})
    first = fhir.get(f"/Basic/{pid}/_history", params={"_count": 3}).json()
    assert len(first["entry"]) == 3
    # New versions arriving while a client pages must not shift the later pages.
    put(fhir, "Basic", pid, code={"text": "late"})
    next_url = next(lk["url"] for lk in first["link"] if lk["relation"] == "next")
    rest = follow(fhir, next_url)
    seen = [e["response"]["etag"] for e in first["entry"] + rest]
    assert seen == [f'W/"{n}"' for n in range(7, 0, -1)]


def test_count_zero_gives_the_total_only(fhir: httpx.Client) -> None:
    pid = f"zero-{uuid.uuid4().hex[:12]}"
    put(fhir, "Basic", pid, code={"text": "a"})
    put(fhir, "Basic", pid, code={"text": "b"})
    bundle = fhir.get(f"/Basic/{pid}/_history", params={"_count": 0}).json()
    assert bundle["total"] == 2
    assert "entry" not in bundle or bundle["entry"] == []
    assert not [lk for lk in bundle["link"] if lk["relation"] == "next"]


def test_since_returns_versions_at_or_after_the_instant(fhir: httpx.Client) -> None:
    pid = f"since-{uuid.uuid4().hex[:12]}"
    put(fhir, "Basic", pid, code={"text": "old"})
    time.sleep(0.05)
    cut = datetime.now(UTC)
    time.sleep(0.05)
    put(fhir, "Basic", pid, code={"text": "new"})
    since = cut.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    bundle = fhir.get(f"/Basic/{pid}/_history", params={"_since": since}).json()
    assert [e["resource"]["code"]["text"] for e in bundle["entry"]] == ["new"]


def test_at_returns_the_version_current_at_that_time(fhir: httpx.Client) -> None:
    pid = f"at-{uuid.uuid4().hex[:12]}"
    put(fhir, "Basic", pid, code={"text": "one"})
    time.sleep(1.1)
    # A second-precision `_at` covers the whole second after the first write settled.
    moment = datetime.now(UTC).replace(microsecond=0)
    time.sleep(1.1)
    put(fhir, "Basic", pid, code={"text": "two"})
    at = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    bundle = fhir.get(f"/Basic/{pid}/_history", params={"_at": at}).json()
    assert [e["resource"]["code"]["text"] for e in bundle["entry"]] == ["one"]


def test_type_and_system_history_include_new_writes(fhir: httpx.Client) -> None:
    start = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    marker = uuid.uuid4().hex[:12]
    put(fhir, "Device", f"dev-{marker}", status="active")
    put(fhir, "Location", f"loc-{marker}", name="Ward 4")

    type_entries = follow(fhir, f"/Device/_history?_since={start}&_count=50")
    assert f"dev-{marker}" in {e["resource"]["id"] for e in type_entries}
    assert {e["resource"]["resourceType"] for e in type_entries} == {"Device"}

    system_entries = follow(fhir, f"/_history?_since={start}&_count=2")
    ids = {e["fullUrl"].split("/fhir/")[1] for e in system_entries}
    assert {f"Device/dev-{marker}", f"Location/loc-{marker}"} <= ids


def test_bad_history_parameters_are_400(fhir: httpx.Client) -> None:
    for params in (
        {"_since": "yesterday"},
        {"_at": "2020-13-01"},
        {"_count": "-1"},
        {"_cursor": "!!"},
    ):
        response = fhir.get("/Patient/_history", params=params)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
