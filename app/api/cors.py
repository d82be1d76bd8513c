"""CORS for browser-based SMART apps, on the endpoints such apps call cross-origin.

A SMART app running in a browser (a public client) fetches the discovery documents, posts to
the token endpoint and calls the FHIR API from its own origin. Those calls carry the access
token in the `Authorization` header, never in a cookie, so allowing any origin WITHOUT
credentials gives a web page nothing it could not already do with a token it holds; it is
what SMART apps expect and the default (`HESTIA_CORS_ORIGINS=*`).

The authorize endpoint and its login and patient-picker pages are NOT covered: they are
top-level navigations in the user's browser, carry the sign-in session cookie, and must never
be readable by another origin's script.

Preflights (OPTIONS with `Access-Control-Request-Method`) are answered here, before routing
and authentication, so they never meet a 401, 404 or 405.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

# Paths browser apps call cross-origin: the FHIR API (with metadata and .well-known), and the
# OAuth endpoints a public client uses with fetch().
CORS_PATHS = ("/fhir", "/oauth/token", "/oauth/introspect", "/oauth/revoke", "/oauth/jwks")
ALLOWED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "Accept",
    "If-Match",
    "If-None-Match",
    "If-None-Exist",
    "If-Modified-Since",
    "Prefer",
)
# Headers FHIR clients read from responses (create's Location, versioning's ETag, the
# 401 challenge); not CORS-safelisted, so they must be exposed explicitly.
EXPOSED_HEADERS = ("Location", "ETag", "Content-Location", "Last-Modified", "WWW-Authenticate")
PREFLIGHT_MAX_AGE = 600  # seconds browsers may cache a preflight answer


class BrowserAppCors:
    """Starlette's CORSMiddleware, applied only under `paths`; other paths pass through."""

    def __init__(
        self, app: ASGIApp, origins: Sequence[str], paths: Sequence[str] = CORS_PATHS
    ) -> None:
        self.app = app
        self.paths = tuple(p.rstrip("/") for p in paths)
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=ALLOWED_METHODS,
            allow_headers=ALLOWED_HEADERS,
            allow_credentials=False,
            expose_headers=EXPOSED_HEADERS,
            max_age=PREFLIGHT_MAX_AGE,
        )

    def covers(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.covers(scope.get("path", "")):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
