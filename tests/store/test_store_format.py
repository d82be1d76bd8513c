"""A server claims the store format it writes, and one older than the store's format refuses
to start rather than misread what a newer version wrote."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from app.store.client import EmbeddedServer
from app.store.store_format import COLLECTION, FORMAT, NewerStoreFormat, claim_format
from tests.conftest import start_hestia

Doc = dict[str, Any]


@pytest.fixture
async def db(database: EmbeddedServer) -> AsyncIterator[AsyncDatabase[Doc]]:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(database.uri, tz_aware=True, tzinfo=UTC)
    yield client[f"format_{uuid.uuid4().hex[:8]}"]
    await client.close()


async def test_a_store_takes_the_format_of_the_newest_server_that_wrote_it(
    db: AsyncDatabase[Doc],
) -> None:
    assert await claim_format(db) == FORMAT
    assert await claim_format(db) == FORMAT
    assert await db[COLLECTION].count_documents({}) == 1

    # A store written by format 1 servers has no record; claiming raises it, never lowers it.
    await db[COLLECTION].delete_many({})
    await db[COLLECTION].insert_one({"_id": "format", "format": 1})
    assert await claim_format(db) == FORMAT


async def test_an_older_server_refuses_a_newer_store(db: AsyncDatabase[Doc]) -> None:
    await db[COLLECTION].insert_one({"_id": "format", "format": FORMAT + 1})
    with pytest.raises(NewerStoreFormat, match=f"format {FORMAT + 1}"):
        await claim_format(db)
    assert (await db[COLLECTION].find_one({}))["format"] == FORMAT + 1  # type: ignore[index]


async def test_the_server_does_not_start_on_a_newer_store(
    database: EmbeddedServer, db: AsyncDatabase[Doc], tmp_path: Path
) -> None:
    await db[COLLECTION].insert_one({"_id": "format", "format": FORMAT + 1})
    env = {"HESTIA_MONGODB_URI": database.uri, "HESTIA_DATABASE": db.name}
    with pytest.raises(RuntimeError, match="written by a newer version of Hestia"):
        start_hestia(tmp_path, env)
    assert await db["history"].count_documents({}) == 0
