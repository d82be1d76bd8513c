"""The audit gate: no response leaves before its AuditEvent is durable.

A pure ASGI middleware (BaseHTTPMiddleware would buffer bodies and break streaming). For every
HTTP request under the audited prefixes it holds back `http.response.start`, builds the events
from what the route put in `request.state.audit_facts` (or, if the route never ran or never
said, from the method and path), awaits the group-commit append, and only then lets the response
go. If the append fails, the client gets a 503 OperationOutcome instead: fail closed.

    audit_log = AuditLog()
    app.add_middleware(AuditMiddleware, log=audit_log, source_name="hestia")
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit.events import AuditFacts, AuditSource, build_events
from app.audit.infer import infer_facts
from app.audit.log import AuditAppender, AuditUnavailable
from app.fhir.outcome import ServiceUnavailable

log = logging.getLogger("hestia.audit")

DEFAULT_PREFIXES = ("/fhir", "/ingest", "/oauth")
FACTS_KEY = "audit_facts"
ACCESS_KEY = "access"
UNAVAILABLE_STATUS = 503
RETRY_AFTER_SECONDS = "5"


def _unavailable_body() -> bytes:
    error = ServiceUnavailable("The audit log is unavailable, so the request was not served")
    return orjson.dumps(error.to_outcome())


def _is_cors_preflight(scope: Scope) -> bool:
    """A browser's own CORS check: no credentials, no data touched, nothing to audit."""
    return scope.get("method") == "OPTIONS" and any(
        name == b"access-control-request-method" for name, _ in scope.get("headers", ())
    )


class AuditMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        log: AuditAppender,
        source_name: str,
        *,
        prefixes: Sequence[str] = DEFAULT_PREFIXES,
        fhir_prefix: str = "/fhir",
        site: str | None = None,
    ) -> None:
        self.app = app
        self.log = log
        self.source = AuditSource(source_name, site)
        self.prefixes = tuple(p.rstrip("/") for p in prefixes)
        self.fhir_prefix = fhir_prefix

    def audited(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.audited(scope.get("path", ""))
            or _is_cors_preflight(scope)
        ):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        started = False
        refused = False

        async def send_after_audit(message: Message) -> None:
            nonlocal started, refused
            if message["type"] == "http.response.start":
                started = True
                try:
                    await self.record(scope, int(message["status"]))
                except AuditUnavailable:
                    refused = True
                    await self._send_unavailable(send)
                    return
            elif refused:
                return  # the original body belongs to a response that was never sent
            await send(message)

        try:
            await self.app(scope, receive, send_after_audit)
        except Exception:
            if not started:
                # The server's outer error handler turns this into a 500: record that.
                try:
                    await self.record(scope, 500)
                except AuditUnavailable:
                    log.error("a failed request could not be audited")
            raise

    def facts_for(self, scope: Scope, status: int) -> AuditFacts:
        state: dict[str, Any] = scope.get("state") or {}
        given = state.get(FACTS_KEY)
        if isinstance(given, AuditFacts):
            facts = replace(given, patients=list(given.patients), details=list(given.details))
        else:
            facts = infer_facts(
                scope.get("method", "GET"),
                scope.get("path", ""),
                scope.get("query_string", b"").decode("latin-1"),
                fhir_prefix=self.fhir_prefix,
            )
        facts.with_agent(state.get(ACCESS_KEY))
        facts.status = status
        if facts.peer is None:
            client = scope.get("client")
            if client:
                facts.peer = str(client[0])
        return facts

    async def record(self, scope: Scope, status: int) -> None:
        facts = self.facts_for(scope, status)
        try:
            events = build_events(facts, self.source)
        except ValueError:
            # A route named an interaction we do not know: audit what the URL says instead.
            log.error("unknown audit interaction %r", facts.interaction)
            scope["state"].pop(FACTS_KEY, None)
            events = build_events(self.facts_for(scope, status), self.source)
        await self.log.append_all(events)

    async def _send_unavailable(self, send: Send) -> None:
        body = _unavailable_body()
        await send(
            {
                "type": "http.response.start",
                "status": UNAVAILABLE_STATUS,
                "headers": [
                    (b"content-type", b"application/fhir+json; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", RETRY_AFTER_SECONDS.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
