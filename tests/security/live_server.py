"""A live authorization server for the security tests (fixtures in conftest.py): the SMART
router on a small FastAPI app, served by uvicorn on a free port, backed by the session's
embedded database.

The app also serves what a real deployment's FHIR API would (a CapabilityStatement with the
security block, a bearer-protected `GET /fhir/Patient/{id}`) and a client's JWK Set URL, so
`fhirclient` and `jwks_uri` clients can be driven over real HTTP.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import uvicorn
from fastapi import FastAPI
from pymongo import AsyncMongoClient
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp

from app.api import smart
from app.main import install_error_handlers
from app.security.discovery import capability_security
from app.security.policy import authenticate
from app.security.service import Security, SecurityConfig

PATIENT_NAMES = {"p1": "Alice Adams", "p2": "Bob Brown"}


@dataclass
class LiveServer:
    root: str
    db_name: str
    client_jwks: dict[str, Any] = field(default_factory=dict)  # served at /test-jwks

    @property
    def fhir_base(self) -> str:
        return f"{self.root}/fhir"

    @property
    def token_url(self) -> str:
        return f"{self.root}/oauth/token"

    @property
    def authorize_url(self) -> str:
        return f"{self.root}/oauth/authorize"


def build_app(live: LiveServer, uri: str) -> FastAPI:
    config = SecurityConfig(fhir_base=live.fhir_base)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True, tzinfo=UTC)
        app.state.security = await Security.open(client[live.db_name], config)
        yield
        await client.close()

    app = FastAPI(lifespan=lifespan)
    app.include_router(smart.discovery_router)
    app.include_router(smart.router)
    install_error_handlers(app)

    @app.get("/fhir/metadata")
    async def metadata() -> JSONResponse:
        return JSONResponse(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "date": "2026-01-01",
                "kind": "instance",
                "fhirVersion": "4.0.1",
                "format": ["json"],
                "rest": [{"mode": "server", "security": capability_security(config)}],
            }
        )

    @app.get("/fhir/Patient/{patient_id}")
    async def read_patient(patient_id: str, request: Request) -> JSONResponse:
        ctx = await authenticate(request.headers.get("authorization"), request.app.state.security)
        access = ctx.authorize("read", "Patient")
        access.ensure_visible([f"Patient/{patient_id}"], f"Patient/{patient_id}")
        return JSONResponse(
            {
                "resourceType": "Patient",
                "id": patient_id,
                "name": [{"text": PATIENT_NAMES.get(patient_id, "?")}],
            }
        )

    @app.get("/test-jwks")
    async def client_jwks() -> JSONResponse:
        return JSONResponse(live.client_jwks)

    return app


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextmanager
def serving_in_thread(app: ASGIApp, port: int, what: str) -> Iterator[None]:
    """Serve `app` with uvicorn on 127.0.0.1:`port` in a thread, for the `with` block."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)
