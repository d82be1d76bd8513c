"""Fixtures of the security tests: the live authorization server and its database."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC
from typing import Any

import httpx
import pytest
import uvicorn
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from app.store.client import EmbeddedServer, free_port
from tests.security.live_server import PATIENT_NAMES, LiveServer, build_app


@pytest.fixture(scope="session")
def live(database: EmbeddedServer) -> Iterator[LiveServer]:
    port = free_port()
    server_info = LiveServer(root=f"http://127.0.0.1:{port}", db_name=f"sec_{uuid.uuid4().hex[:8]}")
    config = uvicorn.Config(
        build_app(server_info, database.uri), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test authorization server did not start")
        time.sleep(0.05)
    yield server_info
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="session")
async def sec_db(
    database: EmbeddedServer, live: LiveServer
) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    """The live server's database, from the test's side (to register clients, users…)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        database.uri, tz_aware=True, tzinfo=UTC
    )
    db = client[live.db_name]
    await db["Patient"].insert_many(
        [
            {
                "_id": pid,
                "deleted": False,
                "resource": {"resourceType": "Patient", "id": pid, "name": [{"text": name}]},
            }
            for pid, name in PATIENT_NAMES.items()
        ]
    )
    yield db
    await client.close()


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.root, timeout=30, follow_redirects=False) as client:
        yield client
