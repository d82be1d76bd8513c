"""OAuth 2.0 errors, as the authorization server and bearer-token checks report them.

OAuth endpoints (token, authorize, introspect, revoke) answer with the RFC 6749 §5.2 error
JSON, not with an OperationOutcome, so the security core raises `OAuthError` and the API
layer turns it into that JSON. A FHIR request refused because of its bearer token uses the
RFC 6750 §3 codes (`invalid_token`, `insufficient_scope`) and a `WWW-Authenticate` header.

`error` is the registered OAuth code a client may act on; `reason` is a stable, more precise
code for logs, audit events and tests (e.g. `expired`, `replayed_jti`), because several
different failures must share one OAuth code: the SMART spec requires every client
authentication failure to be reported as `invalid_client`.
"""

from __future__ import annotations

from typing import Literal

OAuthErrorCode = Literal[
    # RFC 6749 §4.1.2.1 and §5.2
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "unsupported_response_type",
    "invalid_scope",
    "access_denied",
    "server_error",
    "temporarily_unavailable",
    # RFC 6750 §3.1
    "invalid_token",
    "insufficient_scope",
]

# RFC 6749 §5.2 lets invalid_client be 401; RFC 6750 §3.1 fixes the bearer-token statuses.
_DEFAULT_STATUS: dict[str, int] = {
    "invalid_client": 401,
    "invalid_token": 401,
    "insufficient_scope": 403,
    "access_denied": 403,
    "server_error": 500,
    "temporarily_unavailable": 503,
}


class OAuthError(Exception):
    """An OAuth failure: the RFC 6749 `error` code, a human description and a precise reason."""

    def __init__(
        self,
        error: OAuthErrorCode,
        description: str,
        *,
        reason: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error: OAuthErrorCode = error
        self.description = description
        self.reason = reason
        self.status = status if status is not None else _DEFAULT_STATUS.get(error, 400)

    def to_json(self) -> dict[str, str]:
        """The RFC 6749 §5.2 response body."""
        return {"error": self.error, "error_description": self.description}

    def www_authenticate(self, realm: str = "hestia") -> str | None:
        """The RFC 6750 §3 `WWW-Authenticate` value, for errors about a bearer token."""
        if self.error not in ("invalid_token", "insufficient_scope", "invalid_request"):
            return None
        # error_description must not contain '"' or '\' (RFC 6750 §3).
        description = self.description.replace("\\", "").replace('"', "'")
        return f'Bearer realm="{realm}", error="{self.error}", error_description="{description}"'
