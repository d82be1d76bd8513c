"""FHIR's HTTP conventions: content negotiation, body limits, Prefer, ETags, responses."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.fhir.outcome import (
    BadRequest,
    FhirError,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
    outcome,
)
from app.store.versions import Version

FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json-patch+json")
FORMAT_JSON = {"json", "application/json", "application/fhir+json"}
XML_HINTS = ("xml",)


def json_bytes(data: Any, pretty: bool = False) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 if pretty else 0)


class FhirResponse(Response):
    media_type = f"{FHIR_JSON}; charset=utf-8"

    def __init__(
        self,
        content: Any = None,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        pretty: bool = False,
    ) -> None:
        body = b"" if content is None else json_bytes(content, pretty)
        super().__init__(body, status_code, headers)
        if content is None:
            del self.headers["content-type"]


def error_response(error: FhirError) -> FhirResponse:
    return FhirResponse(error.to_outcome(), error.status, headers=error.headers)


def negotiate(request: Request) -> None:
    """Only JSON is served: XML or other formats get 406 naming what is supported."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        if fmt.split(";")[0].strip().lower() not in FORMAT_JSON:
            raise NotAcceptable(
                f"_format '{fmt[:40]}' is not supported: this server speaks only FHIR JSON "
                "(application/fhir+json)"
            )
        return
    accept = request.headers.get("accept")
    if not accept:
        return
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if any(k in ("*/*", "application/*") or "json" in k for k in kinds):
        return
    raise NotAcceptable(
        f"Accept '{accept[:60]}' cannot be served: this server speaks only FHIR JSON "
        "(application/fhir+json)"
    )


def check_content_type(request: Request, allowed: tuple[str, ...] = JSON_TYPES[:2]) -> str:
    raw = request.headers.get("content-type", "")
    kind = raw.split(";")[0].strip().lower()
    if kind in allowed:
        return kind
    if any(h in kind for h in XML_HINTS):
        raise UnsupportedMediaType(
            f"Content-Type '{raw[:60]}' is not supported: this server accepts only FHIR JSON "
            "(application/fhir+json)"
        )
    raise UnsupportedMediaType(
        f"Content-Type '{raw[:60] or '(none)'}' is not supported; send one of: "
        + ", ".join(allowed)
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing it with 413 before parsing when it is over the limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The body is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def prefer_return(request: Request) -> str:
    prefer = request.headers.get("prefer", "")
    for part in prefer.split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "return":
            value = value.strip().strip('"').lower()
            if value in ("minimal", "representation", "operationoutcome"):
                return value
    return "representation"


def prefer_strict(request: Request) -> bool:
    prefer = request.headers.get("prefer", "")
    return any(p.strip().lower().replace(" ", "") == "handling=strict" for p in prefer.split(","))


def http_date(value: datetime) -> str:
    return format_datetime(value, usegmt=True)


def parse_http_date(value: str, header: str) -> datetime:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{header} is not an HTTP date: '{value[:40]}'") from None
    return parsed


def version_headers(version: Version, base: str, with_location: bool = False) -> dict[str, str]:
    headers = {
        "ETag": f'W/"{version.vid}"',
        "Last-Modified": http_date(version.updated),
    }
    if with_location:
        headers["Location"] = f"{base}/{version.resource_type}/{version.id}/_history/{version.vid}"
    return headers


def write_response(
    request: Request, status: int, version: Version | None, base: str, message: str
) -> FhirResponse:
    """The answer to create/update/patch, shaped by `Prefer: return=`."""
    headers = version_headers(version, base, with_location=True) if version else {}
    mode = prefer_return(request)
    if mode == "minimal" or version is None:
        return FhirResponse(None, status, headers)
    if mode == "operationoutcome":
        return FhirResponse(
            outcome({"severity": "information", "code": "informational", "diagnostics": message}),
            status,
            headers,
        )
    return FhirResponse(version.resource, status, headers, pretty=is_pretty(request))


def is_pretty(request: Request) -> bool:
    return request.query_params.get("_pretty", "").lower() == "true"
