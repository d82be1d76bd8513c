"""An exception no handler takes still gets a FHIR answer that a browser app can read."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi.routing import APIRoute

from app.main import create_app
from app.settings import Settings
from app.store.client import EmbeddedServer

ORIGIN = "https://app.example.org"


PHI = " ".join(["patient", "Jane", "Doe,", "MRN", "4711"])  # kept out of any source line


async def _fail() -> None:
    raise RuntimeError(PHI)  # a message that must reach neither the client nor the log


@pytest.fixture
async def client(database: EmbeddedServer) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        mongodb_uri=database.uri, database=f"errors_{uuid.uuid4().hex[:8]}", auth=False
    )
    app = create_app(settings)
    # A defect stand-in, ahead of `/fhir/{type}` which would otherwise take the path.
    app.router.routes.insert(0, APIRoute("/fhir/$defect", _fail, methods=["GET"]))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hestia.test") as http:
            yield http


async def test_a_defect_is_a_500_outcome_with_cors_headers(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="hestia"):
        response = await client.get("/fhir/$defect", headers={"Origin": ORIGIN})
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.headers["access-control-allow-origin"] == "*"
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "exception"
    assert "Jane" not in response.text
    assert "RuntimeError" in caplog.text and PHI not in caplog.text


async def test_a_defect_is_audited_as_a_server_failure(client: httpx.AsyncClient) -> None:
    response = await client.get("/fhir/$defect")
    assert response.status_code == 500
    found = await client.get("/fhir/AuditEvent", params={"outcome": "8"})
    assert found.status_code == 200, found.text
    assert found.json()["total"] == 1
