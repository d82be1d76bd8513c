"""The last answer to an exception no handler took: a 500 OperationOutcome, given inside the
CORS layer.

Starlette answers such exceptions in its outermost middleware, outside every middleware the
app adds, so its 500 carries no CORS headers and a browser app cannot even read that the
server failed. This boundary sits just inside CORS: the response it gives passes back through
CORS (and the audit gate) like any other. Starlette's own handler stays behind it for failures
in the outer middlewares themselves.
"""

from __future__ import annotations

import logging
import traceback

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.http import error_response
from app.fhir.outcome import FhirError

log = logging.getLogger("hestia")


def internal_error() -> FhirError:
    return FhirError("Internal server error", status=500, code="exception")


def log_unexpected(exc: BaseException, method: str, path: str) -> None:
    # The type and the frames only: exception texts can carry PHI from the payload.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unexpected %s on %s %s\n%s", type(exc).__name__, method, path, frames)


class InternalErrorBoundary:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise  # half a response is out: only closing the connection is left
            log_unexpected(exc, scope.get("method", ""), scope.get("path", ""))
            await error_response(internal_error())(scope, receive, send)
