"""HL7 v2 over HTTP: POST a message or a batch file, get its ACK; re-process stored payloads.

The ingestion service is `request.app.state.ingest` (an `Hl7v2Ingestor`, wired by create_app).
`binary_router` serves stored payloads as FHIR Binary resources, so the `Binary/<id>` that each
Provenance names as its source resolves; include it before the generic FHIR router.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api import fhir
from app.api.access import authorize
from app.api.http import FhirResponse, is_pretty, read_body
from app.fhir import model
from app.fhir.outcome import (
    BadRequest,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from app.ingest.service import HL7V2_ER7, Hl7v2Ingestor
from app.security.policy import PolicyInteraction

router = APIRouter(prefix="/ingest")
binary_router = APIRouter(prefix="/fhir")

# What POST /ingest/hl7v2 accepts; the ACK is answered in the same media type.
HL7V2_TYPES = (HL7V2_ER7, "text/plain", "application/hl7-v2")
DEFAULT_MAX_BODY = 64 * 1024 * 1024
MAX_REPROCESS = 1000

JsonDict = dict[str, Any]


def ingestor(request: Request) -> Hl7v2Ingestor:
    service = getattr(request.app.state, "ingest", None)
    if not isinstance(service, Hl7v2Ingestor):
        raise ServiceUnavailable("HL7 v2 ingestion is not running on this server")
    return service


async def authorize_feed(
    request: Request, interaction: PolicyInteraction, resource_type: str
) -> None:
    """Raw feeds hold many patients' data: only system-level (or practitioner user-level) scopes
    reach them, never a patient's own (a Binary is outside every patient compartment, so the
    compartment filter cannot narrow it)."""
    access = await authorize(request, interaction, resource_type)
    context = getattr(request.state, "access", None)
    fhir_user = str(getattr(context, "fhir_user", "") or "")
    if any(grant.level == "patient" for grant in access.grants) or "Patient/" in fhir_user:
        raise Forbidden(
            f"{interaction} on HL7 v2 payloads needs a system/ or user/ scope of a non-patient "
            "user; patient-facing tokens cannot reach raw feeds"
        )


def _body_limit(request: Request) -> int:
    services = getattr(request.app.state, "services", None)
    settings = getattr(services, "settings", None)
    return int(getattr(settings, "max_body_bytes", DEFAULT_MAX_BODY))


def _peer(request: Request) -> str | None:
    client = request.client
    return f"{client.host}:{client.port}" if client else None


@router.post("/hl7v2")
async def post_hl7v2(request: Request) -> Response:
    """One HL7 v2 message, or a batch (FHS/BHS … BTS/FTS); the body of the answer is the ACK
    (a batch gets a batch of ACKs). 200 AA; 422 AE; 400 AR; 503 when it could not be stored."""
    await authorize_feed(request, "create", "*")
    service = ingestor(request)
    raw_type = request.headers.get("content-type", "")
    kind = raw_type.split(";")[0].strip().lower()
    if kind not in HL7V2_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type '{raw_type[:60] or '(none)'}' is not accepted here; send HL7 v2 ER7 "
            f"as one of: {', '.join(HL7V2_TYPES)}"
        )
    body = await read_body(request, _body_limit(request))
    outcome = await service.ingest_body(
        body, transport="http", peer=_peer(request), content_type=kind
    )
    # The stored payload ids (Binary ids), for the sender's records; a batch lists its first 50.
    ids = [r.raw_id for r in outcome.results[:50] if r.raw_id]
    headers = {"X-Hestia-Payload": ",".join(ids)} if ids else {}
    return Response(outcome.ack, outcome.http_status, headers, media_type=kind)


@router.post("/hl7v2/$reprocess")
async def reprocess(request: Request) -> Response:
    """Map stored payloads again: `?payload=<id>` (repeatable), or `?status=failed` for every
    payload that failed, was rejected or hit an error (at most `_count`, default 100)."""
    await authorize_feed(request, "update", "*")
    service = ingestor(request)
    ids = request.query_params.getlist("payload")
    status = request.query_params.get("status")
    if ids and status:
        raise BadRequest("Give either payload ids or status=failed, not both")
    if ids:
        results = []
        for raw_id in ids:
            _check_id(raw_id, "payload")
            result = await service.reprocess(raw_id)
            if result is None:
                raise NotFound(f"No HL7 v2 payload '{raw_id}' is stored", expression=["payload"])
            results.append(result)
    elif status == "failed":
        results = await service.reprocess_failed(limit=_count(request))
    else:
        raise BadRequest(
            "Say what to re-process: ?payload=<id> (repeatable) or ?status=failed",
            expression=["payload"],
        )
    body = {"reprocessed": [r.summary() for r in results]}
    return FhirResponse(body, 200, pretty=is_pretty(request))


@router.get("/hl7v2/payloads")
async def list_payloads(request: Request) -> Response:
    """Stored payloads awaiting attention (`?status=failed`, the default), oldest first."""
    await authorize_feed(request, "search", "Binary")
    service = ingestor(request)
    status = request.query_params.get("status", "failed")
    if status != "failed":
        raise BadRequest("Only status=failed can be listed", expression=["status"])
    payloads = await service.failed(limit=_count(request))
    body = {
        "payloads": [
            {
                "id": p.id,
                "status": p.status,
                "receivedAt": p.received_at.isoformat(),
                "controlId": p.control_id,
                "messageType": p.message_type,
                "source": p.source.as_doc(),
                "sha256": p.sha256,
                "attempts": p.attempts,
                "outcome": p.outcome,
            }
            for p in payloads
        ]
    }
    return FhirResponse(body, 200, pretty=is_pretty(request))


@binary_router.get("/Binary/{raw_id}")
async def read_binary(request: Request, raw_id: str) -> Response:
    """A stored payload as a FHIR Binary: JSON when asked for FHIR/JSON, else its own bytes
    and content type (R4 binary.html#rest)."""
    _check_id(raw_id, "id")
    payload = await ingestor(request).raw.get(raw_id)
    if payload is None:
        # Not a stored payload: an ordinary Binary resource, read with the ordinary rules.
        return await fhir.read(request, "Binary", raw_id)
    await authorize_feed(request, "read", "Binary")
    if _wants_fhir(request):
        return FhirResponse(payload.as_binary(), 200, pretty=is_pretty(request))
    return Response(payload.data, 200, media_type=payload.content_type or HL7V2_ER7)


def _wants_fhir(request: Request) -> bool:
    fmt = request.query_params.get("_format", "").lower()
    if fmt:
        return "json" in fmt
    accept = request.headers.get("accept", "").lower()
    return "fhir" in accept or "application/json" in accept


def _check_id(value: str, name: str) -> None:
    if not model.ID_PATTERN.fullmatch(value):
        raise BadRequest(f"'{value[:70]}' is not a valid id", expression=[name])


def _count(request: Request) -> int:
    raw = request.query_params.get("_count", "100")
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequest("_count must be a positive integer", expression=["_count"])
    return min(int(raw), MAX_REPROCESS)
