"""Two Hestia instances on one database: a write through one is seen by reads through the other
(the read cache follows the database's change stream), and by the writer at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.store.client import EmbeddedServer
from tests.conftest import RunningServer, start_hestia, stop_hestia

JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def second(
    database: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    server = start_hestia(
        tmp_path_factory.mktemp("second"), {"HESTIA_MONGODB_URI": database.uri}, name="second"
    )
    yield server
    stop_hestia(server)


def test_writes_through_one_instance_reach_the_others_reads(
    hestia: RunningServer, second: RunningServer
) -> None:
    pid = f"cache-{uuid.uuid4().hex[:12]}"
    body = {"resourceType": "Patient", "id": pid, "gender": "male"}
    assert httpx.put(f"{hestia.fhir}/Patient/{pid}", json=body, headers=JSON).status_code == 201
    for _ in range(3):  # now cached by the second instance
        assert httpx.get(f"{second.fhir}/Patient/{pid}").json()["gender"] == "male"

    body["gender"] = "female"
    assert httpx.put(f"{hestia.fhir}/Patient/{pid}", json=body, headers=JSON).status_code == 200
    # The writer reads its own write at once.
    assert httpx.get(f"{hestia.fhir}/Patient/{pid}").json()["gender"] == "female"
    # The other instance within the change stream's lag.
    deadline = time.monotonic() + 2.0
    while httpx.get(f"{second.fhir}/Patient/{pid}").json()["gender"] != "female":
        assert time.monotonic() < deadline, "the second instance kept serving the old version"
        time.sleep(0.01)

    assert httpx.delete(f"{hestia.fhir}/Patient/{pid}").status_code == 204
    deadline = time.monotonic() + 2.0
    while httpx.get(f"{second.fhir}/Patient/{pid}").status_code != 410:
        assert time.monotonic() < deadline, "the second instance kept serving a deleted resource"
        time.sleep(0.01)
