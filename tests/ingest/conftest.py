"""Ingestion wired as create_app would wire it, on the session's real embedded database.

Each test gets its own database name, so tests do not see each other's patients.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.fhir.interactions import Interactions
from app.fhir.search.execute import SearchEngine
from app.ingest.mllp import MllpServer, MllpSettings
from app.ingest.service import Hl7v2Ingestor, IngestSettings
from app.main import create_app
from app.settings import Settings
from app.store.client import Database, EmbeddedServer
from app.store.indexes import ensure_search_indexes
from app.store.raw import RawStore
from app.store.versions import Store

CORPUS = Path("/work/shared/corpus")
HL7V2 = CORPUS / "hl7v2"


@dataclass
class Wiring:
    database: Database
    store: Store
    interactions: Interactions
    raw: RawStore
    ingestor: Hl7v2Ingestor

    async def current(self, reference: str) -> dict[str, Any] | None:
        kind, _, resource_id = reference.partition("/")
        doc = await self.store.read_current(kind, resource_id)
        if doc is None or doc.get("deleted"):
            return None
        resource: dict[str, Any] = doc["resource"]
        return resource

    async def count(self, kind: str) -> int:
        return await self.store.count(kind, {"deleted": False})


# Types the tests write: their search and compartment indexes are built as in production.
INDEXED_TYPES = ("Patient", "Encounter", "Observation", "DiagnosticReport", "Provenance")


async def wire(
    uri: str, settings: IngestSettings | None = None, *, indexed: Sequence[str] = ()
) -> Wiring:
    database = Database(uri, f"ingest_{uuid.uuid4().hex[:12]}")
    store = Store(database.db)
    await store.ensure_indexes(list(indexed))
    await ensure_search_indexes(store, list(indexed))
    interactions = Interactions(store, SearchEngine(store).match_ids)
    raw = RawStore(database.db)
    await raw.ensure_indexes()
    return Wiring(database, store, interactions, raw, Hl7v2Ingestor(interactions, raw, settings))


@pytest.fixture
async def wiring(database: EmbeddedServer) -> AsyncIterator[Wiring]:
    wired = await wire(database.uri, indexed=INDEXED_TYPES)
    yield wired
    await wired.database.client.drop_database(wired.database.db.name)
    await wired.database.close()


@pytest.fixture
async def mllp(wiring: Wiring) -> AsyncIterator[MllpServer]:
    server = wiring.ingestor.mllp_server(MllpSettings(port=0, max_frame_bytes=64 * 1024))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http(wiring: Wiring, database: EmbeddedServer) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (create_app and its lifespan) on this test's database, over ASGI."""
    settings = Settings(mongodb_uri=database.uri, database=wiring.database.db.name, auth=False)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hestia.test") as client:
            yield client
