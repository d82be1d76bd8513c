"""Fixtures of the security tests: the live authorization server and its database."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from app.store.client import EmbeddedServer, free_port
from tests.conftest import RunningServer, start_hestia, stop_hestia
from tests.security.live_server import PATIENT_NAMES, LiveServer, build_app, serving_in_thread
from tests.security.stand_in_idp import StandInIdp, running_idp

# The `aud` tenant "a" of the stand-in IdP puts in its tokens for Hestia (tenant "b" uses the
# default: the FHIR base URL).
IDP_AUDIENCE = "hestia-api"


@pytest.fixture(scope="session")
def live(database: EmbeddedServer) -> Iterator[LiveServer]:
    port = free_port()
    server_info = LiveServer(root=f"http://127.0.0.1:{port}", db_name=f"sec_{uuid.uuid4().hex[:8]}")
    with serving_in_thread(
        build_app(server_info, database.uri), port, "the test authorization server"
    ):
        yield server_info


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


@pytest.fixture(scope="session")
def idp() -> Iterator[StandInIdp]:
    """A stand-in external identity provider with tenants "a", "b" and "unconfigured"."""
    with running_idp("a", "b", "unconfigured") as server:
        yield server


@pytest.fixture(scope="session")
def secured_hestia(
    database: EmbeddedServer, idp: StandInIdp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The real app (`hestia serve`, authentication on, default CORS) trusting the stand-in
    IdP's tenants "a" and "b", configured as an operator would: HESTIA_EXTERNAL_ISSUERS."""
    issuers = [
        {
            "issuer": idp.issuer("a"),
            "jwks_uri": idp.jwks_uri("a"),
            "audience": IDP_AUDIENCE,
            # Short, so the rotation test need not wait the default 10 s between refetches.
            "min_refresh_seconds": 0.2,
        },
        {"issuer": idp.issuer("b"), "jwks_uri": idp.jwks_uri("b")},
    ]
    server = start_hestia(
        tmp_path_factory.mktemp("secured"),
        {
            "HESTIA_AUTH": "on",
            "HESTIA_MONGODB_URI": database.uri,
            "HESTIA_DATABASE": f"secured_{uuid.uuid4().hex[:8]}",
            "HESTIA_EXTERNAL_ISSUERS": json.dumps(issuers),
            "HESTIA_CORS_ORIGINS": "",  # blank: the default, whatever the caller's env says
        },
        name="secured",
    )
    yield server
    stop_hestia(server)
