"""Fixtures of the audit tests: a fresh audit database per test on the session's real server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from app.audit.chain import EVENTS, seq_key
from app.audit.log import AuditLog
from app.store.client import EmbeddedServer
from tests.audit.app_under_test import build_app

Db = AsyncDatabase[dict[str, Any]]


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
    """Stored audit documents with seq > after, in chain order."""
    cursor = db[EVENTS].find({"_id": {"$gt": seq_key(after)}}).sort("_id", 1)
    return [doc async for doc in cursor]


async def head_seq(db: Db) -> int:
    newest = await db[EVENTS].find_one({}, sort=[("_id", -1)])
    return int(newest["_id"]) if newest else 0
