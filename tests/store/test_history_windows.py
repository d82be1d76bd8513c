"""Type and system history pages, read in `updated` windows, list every version exactly once,
newest first, whatever the spacing of the writes: bursts sharing one millisecond, quiet
stretches of days, a burst far behind the newest version."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from app.fhir import history
from app.store.client import EmbeddedServer
from app.store.versions import Store, WriteBatch, WriteSpec
from app.store.write_clock import WriteClock

Doc = dict[str, Any]
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def store(database: EmbeddedServer) -> AsyncIterator[Store]:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(database.uri, tz_aware=True, tzinfo=UTC)
    store = Store(client[f"history_{uuid.uuid4().hex[:8]}"])
    await store.ensure_indexes([])
    yield store
    await client.drop_database(store.db.name)
    await client.close()


async def write_at(store: Store, resource_type: str, times: list[datetime]) -> None:
    """One version of a new resource per instant (several may share one)."""

    async def work(session: Any) -> None:
        batch = WriteBatch(store)
        for updated in times:
            resource_id = uuid.uuid4().hex[:12]
            body = {"resourceType": resource_type, "id": resource_id}
            spec = WriteSpec(resource_type, resource_id, body, "PUT")
            batch.add(spec, None, updated, lambda _vid, body=body: body)
        await batch.flush(session)

    await store.run_transaction(work)


async def every_page(store: Store, resource_type: str | None, count: int, **kw: Any) -> list[Doc]:
    seen: list[Doc] = []
    cursor = None
    for _ in range(200):
        page = await history.history(store, resource_type, None, count=count, cursor=cursor, **kw)
        assert page.total is None  # not counted: it would cost what reading everything costs
        assert len(page.entries) <= count
        seen += page.entries
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor
    raise AssertionError("history paging did not end")


def expected(docs: list[Doc]) -> list[str]:
    return [d["_id"] for d in sorted(docs, key=lambda d: (d["updated"], d["_id"]), reverse=True)]


async def test_pages_cross_bursts_and_quiet_stretches_without_loss_or_repeat(store: Store) -> None:
    old_burst = [NOW - timedelta(days=40)] * 25  # 25 versions in one millisecond
    spread = [NOW - timedelta(days=3, minutes=7 * n) for n in range(30)]
    recent = [NOW - timedelta(seconds=n) for n in range(12)]
    await write_at(store, "Observation", old_burst)
    await write_at(store, "Observation", spread)
    await write_at(store, "Observation", recent)
    await write_at(store, "Patient", [NOW - timedelta(days=10)] * 3)
    stored = await store.history.find({}).to_list(None)

    for count in (1, 7, 50):
        listed = await every_page(store, "Observation", count)
        assert [d["_id"] for d in listed] == expected(
            [d for d in stored if d["type"] == "Observation"]
        )
        everything = await every_page(store, None, count)
        assert [d["_id"] for d in everything] == expected(stored)


async def test_only_a_count_alone_is_counted(store: Store) -> None:
    await write_at(store, "Specimen", [NOW - timedelta(hours=h) for h in range(5)])
    assert (await history.history(store, "Specimen", None, count=0)).total == 5
    assert (await history.history(store, "Specimen", None, count=2)).total is None


async def test_since_is_the_floor_of_the_windows(store: Store) -> None:
    await write_at(store, "Condition", [NOW - timedelta(days=d) for d in (1, 5, 9, 30)])
    since = (NOW - timedelta(days=6)).isoformat()
    listed = await every_page(store, "Condition", 1, since=since)
    assert [d["updated"] for d in listed] == [NOW - timedelta(days=1), NOW - timedelta(days=5)]


async def test_a_stale_write_clock_still_finds_newer_versions(store: Store) -> None:
    """The clock only says where the first window begins; that window is open upwards."""
    await write_at(store, "Encounter", [NOW - timedelta(days=2)])
    store.clock = WriteClock()
    store.clock.note("Encounter", NOW - timedelta(days=400))  # knows nothing of that write
    page = await history.history(store, "Encounter", None, count=10)
    assert [d["updated"] for d in page.entries] == [NOW - timedelta(days=2)]


async def test_a_restarted_server_knows_where_the_newest_versions_are(store: Store) -> None:
    await write_at(store, "Procedure", [NOW - timedelta(days=20), NOW - timedelta(days=9)])
    restarted = WriteClock()
    await restarted.load(store.db)
    assert restarted.newest("Procedure") == NOW - timedelta(days=9)
    assert restarted.newest("*") == NOW - timedelta(days=9)


async def test_a_restarted_server_knows_where_the_oldest_versions_are(store: Store) -> None:
    """Ascending `_lastUpdated` pages start there (search/key_windows.py)."""
    await write_at(store, "Procedure", [NOW - timedelta(days=20)])
    await write_at(store, "Procedure", [NOW - timedelta(days=30), NOW - timedelta(days=2)])
    restarted = WriteClock()
    await restarted.load(store.db)
    assert restarted.oldest("Procedure") == NOW - timedelta(days=30)
    assert restarted.newest("Procedure") == NOW - timedelta(days=2)


async def test_a_clock_stored_without_first_writes_does_not_guess_them(store: Store) -> None:
    await store.db["write_clock"].insert_one({"_id": "Goal", "at": NOW})
    restarted = WriteClock()
    await restarted.load(store.db)
    restarted.note("Goal", NOW + timedelta(seconds=5))
    assert restarted.oldest("Goal") is None
    await restarted.persist(store.db)
    stored = await store.db["write_clock"].find_one({"_id": "Goal"})
    assert stored is not None and "first" not in stored
