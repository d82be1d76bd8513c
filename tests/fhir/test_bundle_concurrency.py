"""Concurrent conditional creates: many clients post overlapping transactions that create the
same patient "if none exists". Snapshot isolation alone would let each of them create one;
the guard document (Store.claim_guard) must leave exactly one Patient."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC
from typing import Any

from pymongo import AsyncMongoClient

from app.fhir.bundle import BundleProcessor
from app.fhir.interactions import Interactions
from app.fhir.outcome import Conflict
from app.fhir.search.execute import SearchEngine
from app.store.client import EmbeddedServer
from app.store.versions import Store
from tests.fhir.test_bundle_env import BASE, Env, env, mongo, patient, post, urn

__all__ = ["env", "mongo"]

JsonDict = dict[str, Any]
CLIENTS = 12


def encounter_bundle(mrn: str) -> JsonDict:
    p_url = urn()
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            post(patient(mrn), p_url, ifNoneExist=f"identifier=urn:test:mrn|{mrn}"),
            post(
                {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"code": "AMB"},
                    "subject": {"reference": p_url},
                }
            ),
        ],
    }


async def assert_one_patient(env_store: Store, mrn: str, encounters: int) -> None:
    patients = await env_store.find("Patient", {"s.identifier": f"urn:test:mrn|{mrn}"})
    assert len(patients) == 1, [p["_id"] for p in patients]
    found = await env_store.find("Encounter", {})
    assert len(found) == encounters
    expected = f"Patient/{patients[0]['_id']}"
    assert {e["resource"]["subject"]["reference"] for e in found} == {expected}


async def test_concurrent_conditional_create_transactions_make_one_patient(env: Env) -> None:
    mrn = "same-patient-1"
    results = await asyncio.gather(
        *(
            env.processor.process(encounter_bundle(mrn), base_url=BASE, max_entries=10)
            for _ in range(CLIENTS)
        )
    )
    statuses = sorted(r["entry"][0]["response"]["status"] for r in results)
    assert statuses.count("201 Created") == 1
    assert statuses.count("200 OK") == CLIENTS - 1
    await assert_one_patient(env.store, mrn, CLIENTS)


async def test_concurrent_conditional_updates_make_one_patient(env: Env) -> None:
    mrn = "same-patient-2"

    def bundle() -> JsonDict:
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": patient(mrn),
                    "request": {"method": "PUT", "url": f"Patient?identifier=urn:test:mrn|{mrn}"},
                }
            ],
        }

    results = await asyncio.gather(
        *(env.processor.process(bundle(), base_url=BASE, max_entries=10) for _ in range(CLIENTS)),
        return_exceptions=True,
    )
    # Twelve writers of one document may exhaust their retries: those get 409, never a copy.
    failures = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(f, Conflict) for f in failures), failures
    patients = await env.store.find("Patient", {"s.identifier": f"urn:test:mrn|{mrn}"})
    assert len(patients) == 1
    assert patients[0]["vid"] == CLIENTS - len(failures)


def test_clients_in_separate_threads_with_their_own_connections(database: EmbeddedServer) -> None:
    """Independent clients (own thread, event loop and connection pool), like separate app
    instances behind a load balancer."""
    name = "bundle_threads"
    mrn = "same-patient-3"
    errors: list[BaseException] = []

    async def client_run() -> None:
        client: AsyncMongoClient[JsonDict] = AsyncMongoClient(
            database.uri, tz_aware=True, tzinfo=UTC
        )
        try:
            store = Store(client[name])
            processor = BundleProcessor(Interactions(store, SearchEngine(store).match_ids))
            for _ in range(3):
                await processor.process(encounter_bundle(mrn), base_url=BASE, max_entries=10)
        finally:
            await client.close()

    def thread_main() -> None:
        try:
            asyncio.run(client_run())
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=thread_main) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors

    async def check() -> None:
        client: AsyncMongoClient[JsonDict] = AsyncMongoClient(
            database.uri, tz_aware=True, tzinfo=UTC
        )
        try:
            await assert_one_patient(Store(client[name]), mrn, 18)
            await client.drop_database(name)
        finally:
            await client.close()

    asyncio.run(check())
