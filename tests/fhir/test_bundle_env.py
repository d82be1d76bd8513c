"""Shared set-up for the Bundle and interaction tests: a fresh database on the session's
embedded server per test, the store, interactions with the basic matcher, and a processor
whose search callable is built on that matcher (the real search engine is wired later)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from app.fhir.bundle import BundleProcessor
from app.fhir.interactions import Interactions
from app.fhir.search.execute import SearchEngine
from app.store.client import EmbeddedServer
from app.store.versions import Store

JsonDict = dict[str, Any]
BASE = "http://hestia.test/fhir"


@dataclass
class Env:
    store: Store
    interactions: Interactions
    processor: BundleProcessor

    async def transaction(self, entries: list[JsonDict], **kwargs: Any) -> JsonDict:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        return await self.processor.process(
            bundle, base_url=BASE, max_entries=kwargs.pop("max_entries", 1000), **kwargs
        )

    async def batch(self, entries: list[JsonDict], **kwargs: Any) -> JsonDict:
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": entries}
        return await self.processor.process(
            bundle, base_url=BASE, max_entries=kwargs.pop("max_entries", 1000), **kwargs
        )

    async def count(self, resource_type: str) -> int:
        return await self.store.count(resource_type, {"deleted": False})

    async def history_count(self) -> int:
        return await self.store.count_history({})


def make_search(interactions: Interactions) -> Any:
    async def search(resource_type: str, criteria: list[tuple[str, str]]) -> JsonDict:
        ids = await interactions.matcher(resource_type, criteria)
        entries = []
        for resource_id in ids:
            version = await interactions.read(resource_type, resource_id)
            entries.append(
                {
                    "fullUrl": f"{BASE}/{resource_type}/{resource_id}",
                    "resource": version.resource,
                    "search": {"mode": "match"},
                }
            )
        return {"resourceType": "Bundle", "type": "searchset", "total": len(ids), "entry": entries}

    return search


@pytest.fixture(scope="session")
async def mongo(database: EmbeddedServer) -> AsyncIterator[AsyncMongoClient[JsonDict]]:
    client: AsyncMongoClient[JsonDict] = AsyncMongoClient(database.uri, tz_aware=True, tzinfo=UTC)
    yield client
    await client.close()


@pytest.fixture
async def env(mongo: AsyncMongoClient[JsonDict]) -> AsyncIterator[Env]:
    name = f"bundle_{uuid.uuid4().hex[:12]}"
    store = Store(mongo[name])
    await store.ensure_indexes([])
    interactions = Interactions(store, SearchEngine(store).match_ids)
    yield Env(store, interactions, BundleProcessor(interactions, make_search(interactions)))
    await mongo.drop_database(name)


def patient(mrn: str | None = None, **extra: Any) -> JsonDict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": mrn or uuid.uuid4().hex}],
        "name": [{"family": "Chalmers", "given": ["Peter"]}],
        **extra,
    }


def post(resource: JsonDict, full_url: str | None = None, **request: Any) -> JsonDict:
    entry: JsonDict = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    if full_url is not None:
        entry["fullUrl"] = full_url
    return entry


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"
