"""Two concurrent updates of one resource never both succeed with the same version."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import RunningServer

JSON = {"Content-Type": "application/fhir+json"}
WRITERS = 12


def race(hestia: RunningServer, pid: str, headers: dict[str, str]) -> list[httpx.Response]:
    barrier = threading.Barrier(WRITERS)

    def attempt(n: int) -> httpx.Response:
        with httpx.Client(base_url=hestia.fhir, timeout=60) as client:
            body = {"resourceType": "Patient", "id": pid, "birthDate": f"19{n + 10}-01-01"}
            barrier.wait()
            return client.put(f"/Patient/{pid}", json=body, headers={**JSON, **headers})

    with ThreadPoolExecutor(WRITERS) as pool:
        return list(pool.map(attempt, range(WRITERS)))


def test_racing_if_match_updates_exactly_one_wins(
    hestia: RunningServer, fhir: httpx.Client
) -> None:
    pid = f"race-{uuid.uuid4().hex[:12]}"
    fhir.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}, headers=JSON)
    responses = race(hestia, pid, {"If-Match": 'W/"1"'})
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1, statuses
    # The losers learn that their base version is stale (412) or that the resource was busy (409).
    assert set(statuses) <= {200, 409, 412}, statuses
    history = fhir.get(f"/Patient/{pid}/_history").json()
    assert history["total"] == 2
    winner = next(r for r in responses if r.status_code == 200).json()
    assert fhir.get(f"/Patient/{pid}").json() == winner


def test_racing_blind_updates_get_distinct_versions(
    hestia: RunningServer, fhir: httpx.Client
) -> None:
    pid = f"race-{uuid.uuid4().hex[:12]}"
    fhir.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}, headers=JSON)
    responses = race(hestia, pid, {})
    ok = [r for r in responses if r.status_code == 200]
    assert all(r.status_code in (200, 409) for r in responses), [r.text for r in responses]
    versions = [r.json()["meta"]["versionId"] for r in ok]
    assert len(versions) == len(set(versions)), versions
    history = fhir.get(f"/Patient/{pid}/_history", params={"_count": 100}).json()
    assert history["total"] == 1 + len(ok)
    assert sorted(int(e["response"]["etag"][3:-1]) for e in history["entry"]) == list(
        range(1, len(ok) + 2)
    )
