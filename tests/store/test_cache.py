"""The read cache never serves a version older than the change-stream lag: writes by any
other client invalidate it through the change stream, and a read that raced a write never
stores what it fetched."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from app.store.cache import CurrentCache
from app.store.changes import ChangeFeed
from app.store.client import EmbeddedServer

Doc = dict[str, Any]


@pytest.fixture
async def db(database: EmbeddedServer) -> AsyncIterator[AsyncDatabase[Doc]]:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(database.uri, tz_aware=True, tzinfo=UTC)
    yield client[f"cache_{uuid.uuid4().hex[:8]}"]
    await client.close()


async def wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_other_writers_invalidate_through_the_change_stream(db: AsyncDatabase[Doc]) -> None:
    cache, feed = CurrentCache(), ChangeFeed(db)
    feed.subscribe(cache)
    assert await feed.start()
    try:
        patients = db["Patient"]
        await patients.insert_one({"_id": "p1", "vid": 1})
        cache.put("Patient", "p1", {"_id": "p1", "vid": 1}, cache.epoch())
        assert cache.get("Patient", "p1") == {"_id": "p1", "vid": 1}

        # Another instance (a different client) writes version 2.
        await patients.replace_one({"_id": "p1"}, {"vid": 2})
        assert await wait_until(lambda: cache.get("Patient", "p1") is None)
    finally:
        await feed.stop()


async def test_history_writes_do_not_evict_current_entries(db: AsyncDatabase[Doc]) -> None:
    cache, feed = CurrentCache(), ChangeFeed(db)
    feed.subscribe(cache)
    assert await feed.start()
    try:
        cache.put("Patient", "p1", {"_id": "p1", "vid": 1}, cache.epoch())
        await db["history"].insert_one({"_id": "Patient/p1/1"})
        await db["Marker"].insert_one({"_id": "m"})
        # Once a later event has been seen, the history insert has been seen too.
        cache.put("Marker", "m", {"_id": "m"}, cache.epoch())
        await db["Marker"].replace_one({"_id": "m"}, {"x": 1})
        assert await wait_until(lambda: cache.get("Marker", "m") is None)
        assert cache.get("Patient", "p1") == {"_id": "p1", "vid": 1}
    finally:
        await feed.stop()


async def test_a_read_that_raced_an_invalidation_is_not_stored(db: AsyncDatabase[Doc]) -> None:
    cache, feed = CurrentCache(), ChangeFeed(db)
    feed.subscribe(cache)
    assert await feed.start()
    try:
        began = cache.epoch()  # a read starts and fetches version 1 ...
        cache.invalidate("Patient", "p1")  # ... while a write of version 2 commits
        cache.put("Patient", "p1", {"_id": "p1", "vid": 1}, began)
        assert cache.get("Patient", "p1") is None
        # A read that began after the write may be stored.
        cache.put("Patient", "p1", {"_id": "p1", "vid": 2}, cache.epoch())
        assert cache.get("Patient", "p1") == {"_id": "p1", "vid": 2}
    finally:
        await feed.stop()


async def test_a_stopped_stream_bypasses_and_empties_the_cache(db: AsyncDatabase[Doc]) -> None:
    cache, feed = CurrentCache(), ChangeFeed(db)
    feed.subscribe(cache)
    assert await feed.start()
    cache.put("Patient", "p1", {"_id": "p1"}, cache.epoch())
    await feed.stop()
    assert not cache.live
    assert cache.get("Patient", "p1") is None


async def test_size_zero_disables_the_cache(db: AsyncDatabase[Doc]) -> None:
    cache, feed = CurrentCache(max_entries=0), ChangeFeed(db)
    feed.subscribe(cache)
    assert await feed.start()
    cache.put("Patient", "p1", {"_id": "p1"}, cache.epoch())
    assert cache.get("Patient", "p1") is None
    await feed.stop()


async def test_least_recently_used_entries_are_evicted(db: AsyncDatabase[Doc]) -> None:
    cache, feed = CurrentCache(max_entries=2), ChangeFeed(db)
    feed.subscribe(cache)
    assert await feed.start()
    try:
        for n in range(3):
            cache.put("Basic", str(n), {"_id": str(n)}, cache.epoch())
        assert cache.get("Basic", "0") is None
        assert cache.get("Basic", "2") == {"_id": "2"}
    finally:
        await feed.stop()
