"""Fixtures of the audit tests: a fresh audit database per test on the session's real server."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC
from typing import Any

import httpx
import orjson
import pytest
from bson import Binary
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from app.audit.chain import BLOCK_INDEX, JOURNAL, seq_key
from app.audit.journal import head_seq, inflated, journal_events, packed, stored_events
from app.audit.log import AuditLog
from app.audit.projection import AuditIndex
from app.store.client import EmbeddedServer
from tests.audit.app_under_test import build_app

Db = AsyncDatabase[dict[str, Any]]
__all__ = [
    "Db",
    "head_seq",
    "index_all",
    "index_documents",
    "stored",
    "tamper_index",
    "tamper_journal",
]


@pytest.fixture(scope="session")
async def mongo(database: EmbeddedServer) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        database.uri, tz_aware=True, tzinfo=UTC
    )
    yield client
    await client.close()


@pytest.fixture
def audit_db(mongo: AsyncMongoClient[dict[str, Any]]) -> Db:
    return mongo[f"audit_{uuid.uuid4().hex[:10]}"]


@pytest.fixture
async def audit_log(audit_db: Db) -> AsyncIterator[AuditLog]:
    log = AuditLog(window=0.002)
    await log.start(audit_db)
    yield log
    await log.stop()


@pytest.fixture
async def http(audit_log: AuditLog) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(
        app=build_app(audit_log), raise_app_exceptions=False, client=("10.1.2.3", 51000)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://hestia.test") as client:
        yield client


async def stored(db: Db, after: int = 0) -> list[dict[str, Any]]:
    """Journaled audit events with seq > after, in chain order."""
    return [event async for event in journal_events(db, after)]


async def index_all(db: Db) -> int:
    """Bring the auditors' block index up to date, as an auditor's query does first."""
    return await AuditIndex(db).catch_up()


async def index_documents(db: Db) -> list[dict[str, Any]]:
    """The block index documents, in chain order."""
    return [doc async for doc in db[BLOCK_INDEX].find({}).sort("_id", 1)]


async def tamper_index(db: Db, seq: int, change: Callable[[list[Any]], None]) -> None:
    """Apply `change` to the index entry [seq, hash, compartments, keys] of event `seq`, as an
    intruder with write access to the database would."""
    document = await db[BLOCK_INDEX].find_one({"_id": {"$lte": seq_key(seq)}}, sort=[("_id", -1)])
    assert document is not None
    entries = orjson.loads(inflated(document["events"]))
    [entry] = [e for e in entries if e[0] == seq]
    change(entry)
    events = Binary(zlib.compress(orjson.dumps(entries)))
    await db[BLOCK_INDEX].update_one({"_id": document["_id"]}, {"$set": {"events": events}})


async def tamper_journal(db: Db, seq: int, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply `change` to event `seq` where the journal keeps it, as an intruder with write
    access to the database would."""
    block = await db[JOURNAL].find_one({"_id": {"$lte": seq_key(seq)}}, sort=[("_id", -1)])
    assert block is not None
    events = stored_events(block)
    [event] = [e for e in events if int(e["_id"]) == seq]
    change(event)
    block["events"] = packed(events)
    await db[JOURNAL].replace_one({"_id": block["_id"]}, block)
