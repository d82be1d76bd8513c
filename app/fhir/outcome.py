"""OperationOutcome and the error types that map to HTTP statuses.

Every layer below `app/api` raises `FhirError` (or a subclass); the API turns it into an
HTTP response carrying the OperationOutcome. Nothing a client sends should end as a 500.
"""

from __future__ import annotations

from typing import Any

JsonDict = dict[str, Any]


def issue(
    severity: str,
    code: str,
    diagnostics: str,
    expression: list[str] | None = None,
    location: list[str] | None = None,
) -> JsonDict:
    """One OperationOutcome.issue (R4 operationoutcome.html)."""
    out: JsonDict = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        out["expression"] = expression
    if location:
        out["location"] = location
    return out


def outcome(*issues: JsonDict) -> JsonDict:
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


def information(diagnostics: str) -> JsonDict:
    return outcome(issue("information", "informational", diagnostics))


class FhirError(Exception):
    """An error with an HTTP status and the OperationOutcome issues that explain it."""

    status: int = 400
    code: str = "invalid"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: list[str] | None = None,
        status: int | None = None,
        code: str | None = None,
        issues: list[JsonDict] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.diagnostics = diagnostics
        self.headers = headers or {}
        self.issues = issues or [issue("error", self.code, diagnostics, expression)]

    def to_outcome(self) -> JsonDict:
        return outcome(*self.issues)


class BadRequest(FhirError):
    status = 400
    code = "invalid"


class Unprocessable(FhirError):
    status = 422
    code = "processing"


class NotFound(FhirError):
    status = 404
    code = "not-found"


class Gone(FhirError):
    status = 410
    code = "deleted"


class MethodNotAllowed(FhirError):
    status = 405
    code = "not-supported"


class NotAcceptable(FhirError):
    status = 406
    code = "not-supported"


class UnsupportedMediaType(FhirError):
    status = 415
    code = "not-supported"


class Conflict(FhirError):
    status = 409
    code = "conflict"


class PreconditionFailed(FhirError):
    status = 412
    code = "conflict"


class PayloadTooLarge(FhirError):
    status = 413
    code = "too-costly"


class Unauthorized(FhirError):
    status = 401
    code = "login"


class Forbidden(FhirError):
    status = 403
    code = "forbidden"


class ServiceUnavailable(FhirError):
    status = 503
    code = "transient"
