"""A small FastAPI app whose routes describe their accesses the way Hestia's routes must.

Each route sets `request.state.audit_facts` before doing anything that can fail, so a denied or
failed request is audited with what it tried to touch. A tiny authentication layer in front of
the router sets `request.state.access` (a real `AccessContext`) or answers 401 before routing,
as the security layer will.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.audit import AuditMiddleware
from app.api.http import FhirResponse, error_response
from app.audit.events import AuditFacts
from app.audit.log import AuditLog
from app.fhir.outcome import Forbidden, NotFound, Unauthorized
from app.main import install_error_handlers
from app.security.policy import AccessContext
from app.security.scopes import parse_scopes

SOURCE = "hestia-test"
VERSION = "3"
PATIENTS_OF = {"Observation/o1": "Patient/p1", "Observation/o2": "Patient/p2"}


class FakeBearer:
    """`Authorization: Bearer <client>|<fhirUser>|<jti>` → AccessContext; `Bearer bad` → 401."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            raw = headers.get(b"authorization", b"").decode()
            if raw == "Bearer bad":
                await error_response(Unauthorized("The access token is invalid"))(
                    scope, receive, send
                )
                return
            if raw.startswith("Bearer "):
                client_id, fhir_user, jti = ([*raw[7:].split("|"), "", "", ""])[:3]
                scope.setdefault("state", {})["access"] = AccessContext(
                    client_id=client_id or None,
                    scopes=parse_scopes("user/*.cruds"),
                    fhir_user=fhir_user or None,
                    jti=jti or None,
                )
        await self.app(scope, receive, send)


def _facts(request: Request, interaction: str, **kwargs: Any) -> AuditFacts:
    facts = AuditFacts(interaction, **kwargs)
    request.state.audit_facts = facts
    return facts


def _check_denied(request: Request) -> None:
    if request.headers.get("x-deny"):
        raise Forbidden("The token's scopes do not allow this")


def build_app(log: AuditLog) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/fhir/metadata")
    async def metadata(request: Request) -> Response:
        _facts(request, "capabilities")
        return FhirResponse({"resourceType": "CapabilityStatement"})

    @app.get("/fhir/boom")
    async def boom(request: Request) -> Response:
        _facts(request, "operation", operation="$boom")
        raise RuntimeError("unexpected")

    @app.get("/fhir/_history")
    async def history_system(request: Request) -> Response:
        facts = _facts(request, "history-system")
        facts.patients = ["Patient/p1", "Patient/p2"]
        return FhirResponse({"resourceType": "Bundle", "type": "history"})

    @app.get("/fhir")
    async def search_system(request: Request) -> Response:
        _facts(request, "search-system", query=request.url.query)
        return FhirResponse({"resourceType": "Bundle", "type": "searchset"})

    @app.post("/fhir")
    async def bundle(request: Request) -> Response:
        body = await request.json()
        facts = _facts(request, str(body.get("type", "batch")))
        facts.patients = ["Patient/p1"]
        return FhirResponse({"resourceType": "Bundle", "type": f"{facts.interaction}-response"})

    @app.post("/fhir/{resource_type}/{resource_id}/$everything")
    async def everything(request: Request, resource_type: str, resource_id: str) -> Response:
        _facts(
            request,
            "operation",
            resource_type=resource_type,
            resource_id=resource_id,
            operation="$everything",
        )
        _check_denied(request)
        return FhirResponse({"resourceType": "Bundle", "type": "searchset"})

    @app.get("/fhir/{resource_type}/_history")
    async def history_type(request: Request, resource_type: str) -> Response:
        _facts(request, "history-type", resource_type=resource_type)
        return FhirResponse({"resourceType": "Bundle", "type": "history"})

    @app.get("/fhir/{resource_type}")
    async def search_type(request: Request, resource_type: str) -> Response:
        facts = _facts(request, "search-type", resource_type=resource_type, query=request.url.query)
        _check_denied(request)
        # The patients whose data the (pretend) result carries.
        facts.patients = [f"Patient/{p}" for p in request.query_params.getlist("patient")]
        return FhirResponse({"resourceType": "Bundle", "type": "searchset"})

    @app.post("/fhir/{resource_type}")
    async def create(request: Request, resource_type: str) -> Response:
        facts = _facts(request, "create", resource_type=resource_type)
        _check_denied(request)
        facts.resource_id, facts.version_id = "new1", "1"
        facts.patients = ["Patient/p1"] if resource_type != "Patient" else []
        return FhirResponse({"resourceType": resource_type, "id": "new1"}, 201)

    @app.get("/fhir/{resource_type}/{resource_id}")
    async def read(request: Request, resource_type: str, resource_id: str) -> Response:
        facts = _facts(request, "read", resource_type=resource_type, resource_id=resource_id)
        _check_denied(request)
        reference = f"{resource_type}/{resource_id}"
        if resource_id == "missing":
            raise NotFound(f"{reference} is not known")
        facts.version_id = VERSION
        if reference in PATIENTS_OF:
            facts.patients = [PATIENTS_OF[reference]]
        return FhirResponse({"resourceType": resource_type, "id": resource_id})

    @app.get("/fhir/{resource_type}/{resource_id}/_history/{vid}")
    async def vread(request: Request, resource_type: str, resource_id: str, vid: str) -> Response:
        _facts(
            request, "vread", resource_type=resource_type, resource_id=resource_id, version_id=vid
        )
        return FhirResponse({"resourceType": resource_type, "id": resource_id})

    @app.get("/fhir/{resource_type}/{resource_id}/_history")
    async def history_instance(request: Request, resource_type: str, resource_id: str) -> Response:
        _facts(request, "history-instance", resource_type=resource_type, resource_id=resource_id)
        return FhirResponse({"resourceType": "Bundle", "type": "history"})

    @app.put("/fhir/{resource_type}/{resource_id}")
    async def update(request: Request, resource_type: str, resource_id: str) -> Response:
        _facts(
            request, "update", resource_type=resource_type, resource_id=resource_id, version_id="4"
        )
        return FhirResponse({"resourceType": resource_type, "id": resource_id})

    @app.patch("/fhir/{resource_type}/{resource_id}")
    async def patch(request: Request, resource_type: str, resource_id: str) -> Response:
        _facts(
            request, "patch", resource_type=resource_type, resource_id=resource_id, version_id="5"
        )
        return FhirResponse({"resourceType": resource_type, "id": resource_id})

    @app.delete("/fhir/{resource_type}/{resource_id}")
    async def delete(request: Request, resource_type: str, resource_id: str) -> Response:
        _facts(request, "delete", resource_type=resource_type, resource_id=resource_id)
        return Response(status_code=204)

    @app.post("/ingest/hl7v2")
    async def ingest(request: Request) -> Response:
        facts = _facts(request, "ingest", details=[("message-control-id", "MSG0001")])
        facts.patients = ["Patient/p9"]
        return FhirResponse({"resourceType": "OperationOutcome", "issue": []}, 202)

    @app.post("/oauth/token")
    async def token(request: Request) -> Response:
        _facts(request, "token", client_id="app-x")
        return Response(b'{"access_token":"t"}', media_type="application/json")

    @app.get("/public")
    async def public() -> Response:
        return Response(b"not audited")

    app.add_middleware(FakeBearer)
    app.add_middleware(AuditMiddleware, log=log, source_name=SOURCE)
    return app
