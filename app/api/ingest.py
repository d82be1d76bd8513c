"""Ingestion over HTTP: HL7 v2, CSV, DICOM and auto-detected payloads; stored payloads.

- POST /ingest/hl7v2: a message or a batch file, answered with its ACK;
- POST /ingest/csv?map=NAME: a CSV extract, streamed (never held whole in memory), answered
  with the row-level report;
- POST /ingest/dicom: Part 10 files as application/dicom, multipart/form-data or a zip;
- POST /ingest: no format given; HL7 v2, CSV (map by header signature), DICOM, zip, or FHIR
  JSON (a transaction/batch Bundle goes where POST /fhir goes, a resource where POST
  /fhir/{type} goes);
- GET /ingest/payloads?status=…&kind=…: stored payloads with their findings; GET
  /ingest/payloads/{id} and …/rejections for one payload's report and rejected rows;
- POST /ingest/$reprocess?payload=ID[&map=NAME]: map a stored payload again.

The HL7 v2 service is `request.app.state.ingest` (an `Hl7v2Ingestor`, wired by create_app);
the CSV and DICOM services are `app.state.csv_ingest` / `app.state.dicom_ingest` when wired,
else made on first use over the HL7 v2 service's store.
`binary_router` serves stored payloads as FHIR Binary resources, so the `Binary/<id>` that each
Provenance names as its source resolves; include it before the generic FHIR router.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse

from app.api import fhir
from app.api.access import authorize
from app.api.http import FhirResponse, is_pretty, read_body
from app.fhir import model
from app.fhir.outcome import (
    BadRequest,
    FhirError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from app.ingest.csv_ingest import CsvIngestor, CsvReport
from app.ingest.dicom_ingest import (
    DicomFileResult,
    DicomIngestor,
    DicomSettings,
    is_zip,
    worst_status,
)
from app.ingest.service import HL7V2_ER7, Hl7v2Ingestor
from app.security.policy import PolicyInteraction
from app.store.raw import ATTENTION_STATUSES, STATUSES, RawPayload, RawSource, Status
from app.store.versions import now_utc
from mappers.detect import detect

router = APIRouter(prefix="/ingest")
binary_router = APIRouter(prefix="/fhir")

# What POST /ingest/hl7v2 accepts; the ACK is answered in the same media type.
HL7V2_TYPES = (HL7V2_ER7, "text/plain", "application/hl7-v2")
DEFAULT_MAX_BODY = 64 * 1024 * 1024
MAX_REPROCESS = 1000
CSV_TYPES = ("text/csv", "application/csv", "text/plain")
ZIP_TYPES = ("application/zip", "application/x-zip-compressed")
DICOM_TYPES = ("application/dicom", "application/octet-stream")
# A CSV extract is streamed to storage, so it may be far larger than other bodies.
DEFAULT_MAX_CSV_BYTES = 8 * 1024 * 1024 * 1024
DEFAULT_MAX_DICOM_BYTES = 2 * 1024 * 1024 * 1024
MAX_JSON_BINARY = 64 * 1024 * 1024
DETECT_HEAD = 4096

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
    raw = ingestor(request).raw
    media = payload.content_type or HL7V2_ER7
    if _wants_fhir(request):
        if payload.in_gridfs:
            if payload.size > MAX_JSON_BINARY:
                raise PayloadTooLarge(
                    f"Binary/{raw_id} is {payload.size} bytes, too large to send as FHIR JSON; "
                    "ask for its own content type"
                )
            payload.data = await raw.read_all(payload)
        return FhirResponse(payload.as_binary(), 200, pretty=is_pretty(request))
    if payload.in_gridfs:
        return StreamingResponse(raw.open_stream(payload), 200, media_type=media)
    return Response(payload.data, 200, media_type=media)


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


# CSV, DICOM and auto-detection


def _setting(request: Request, name: str, env: str, default: Any) -> Any:
    """A setting by name when app/settings.py has it, else HESTIA_<env>, else the default."""
    services = getattr(request.app.state, "services", None)
    settings = getattr(services, "settings", None)
    value = getattr(settings, name, None)
    if value not in (None, ""):
        return value
    raw = os.environ.get(f"HESTIA_{env}", "")
    if raw == "":
        return default
    return type(default)(raw) if default is not None else raw


def csv_ingestor(request: Request) -> CsvIngestor:
    service = getattr(request.app.state, "csv_ingest", None)
    if isinstance(service, CsvIngestor):
        return service
    hl7 = ingestor(request)
    service = CsvIngestor(hl7.interactions, hl7.raw)
    request.app.state.csv_ingest = service
    return service


def dicom_ingestor(request: Request) -> DicomIngestor:
    service = getattr(request.app.state, "dicom_ingest", None)
    if isinstance(service, DicomIngestor):
        return service
    hl7 = ingestor(request)
    keep = str(_setting(request, "dicom_keep", "DICOM_KEEP", "file"))
    if keep not in ("file", "header"):
        keep = "file"
    settings = DicomSettings(
        wado_base_url=_setting(request, "wado_base_url", "WADO_BASE_URL", None),
        keep="header" if keep == "header" else "file",
    )
    service = DicomIngestor(hl7.interactions, hl7.raw, settings)
    request.app.state.dicom_ingest = service
    return service


def _media(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _limited(
    blocks: AsyncIterator[bytes], limit: int, head: bytes = b""
) -> AsyncIterator[bytes]:
    size = len(head)
    if head:
        yield head
    async for block in blocks:
        size += len(block)
        if size > limit:
            raise PayloadTooLarge(f"The body exceeds the limit of {limit} bytes")
        yield block


def _csv_response(request: Request, report: CsvReport) -> Response:
    headers = {"X-Hestia-Payload": report.payload}
    return FhirResponse(report.as_json(), report.http_status, headers, pretty=is_pretty(request))


async def _ingest_csv(
    request: Request, blocks: AsyncIterator[bytes], map_name: str | None, media: str
) -> Response:
    service = csv_ingestor(request)
    limit = int(_setting(request, "max_csv_bytes", "MAX_CSV_BYTES", DEFAULT_MAX_CSV_BYTES))
    source = RawSource("http", _peer(request))
    report = await service.ingest_stream(
        _limited(blocks, limit), map_name=map_name, source=source, content_type=media
    )
    return _csv_response(request, report)


@router.post("/csv")
async def post_csv(request: Request) -> Response:
    """A CSV extract through the map `?map=NAME` (chosen by header signature when absent)."""
    await authorize_feed(request, "create", "*")
    media = _media(request)
    if media not in CSV_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type '{media or '(none)'}' is not accepted here; send text/csv"
        )
    map_name = request.query_params.get("map") or None
    return await _ingest_csv(request, request.stream(), map_name, media)


def _dicom_response(request: Request, results: list[DicomFileResult]) -> Response:
    ids = [r.payload for r in results[:50] if r.payload]
    headers = {"X-Hestia-Payload": ",".join(ids)} if ids else {}
    if not results:
        raise BadRequest("the upload holds no DICOM file")
    status = worst_status(results)
    if len(results) == 1 and results[0].outcome is not None:
        return FhirResponse(results[0].outcome, status, headers, pretty=is_pretty(request))
    body = {"files": [r.as_json() for r in results]}
    return FhirResponse(body, status, headers, pretty=is_pretty(request))


async def _dicom_parts(request: Request, limit: int) -> list[tuple[str, bytes]]:
    form = await request.form(max_files=10_000, max_fields=100)
    files: list[tuple[str, bytes]] = []
    size = 0
    try:
        for _key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                size += len(data)
                if size > limit:
                    raise PayloadTooLarge(f"The upload exceeds the limit of {limit} bytes")
                files.append((value.filename or "", data))
    finally:
        await form.close()
    return files


@router.post("/dicom")
async def post_dicom(request: Request) -> Response:
    """DICOM Part 10 files: one (application/dicom), several (multipart) or a zip."""
    await authorize_feed(request, "create", "*")
    service = dicom_ingestor(request)
    limit = int(_setting(request, "max_dicom_bytes", "MAX_DICOM_BYTES", DEFAULT_MAX_DICOM_BYTES))
    media = _media(request)
    source = RawSource("http", _peer(request))
    if media.startswith("multipart/"):
        files = await _dicom_parts(request, limit)
    elif media in DICOM_TYPES or media in ZIP_TYPES:
        files = [("", await read_body(request, limit))]
    else:
        raise UnsupportedMediaType(
            f"Content-Type '{media or '(none)'}' is not accepted here; send application/dicom, "
            "multipart/form-data or application/zip"
        )
    return _dicom_response(request, await service.ingest_files(files, source=source))


@router.post("")
async def post_any(request: Request) -> Response:
    """Any supported payload, its format recognised from its first bytes."""
    await authorize_feed(request, "create", "*")
    media = _media(request)
    stream = request.stream()
    head = b""
    async for block in stream:
        head += block
        if len(head) >= DETECT_HEAD:
            break
    found = detect(head[:DETECT_HEAD], media)
    kind = found.kind
    if kind == "unknown" and is_zip(head):
        kind = "dicom"
    if kind == "csv":
        map_name = request.query_params.get("map") or found.csv_map
        if map_name is None:
            raise UnsupportedMediaType(
                f"{found.reason}: name the map with ?map=NAME or use POST /ingest/csv",
                expression=["map"],
            )
        return await _ingest_csv(request, _limited(stream, 2**62, head), map_name, "text/csv")
    if kind == "unknown":
        raise UnsupportedMediaType(
            f"Cannot tell the payload's format ({found.reason}); Hestia recognises HL7 v2 ER7, "
            "CSV with a known header, DICOM Part 10 (or a zip of them) and FHIR JSON"
        )
    limit = _body_limit(request)
    if kind == "dicom":
        limit = int(
            _setting(request, "max_dicom_bytes", "MAX_DICOM_BYTES", DEFAULT_MAX_DICOM_BYTES)
        )
    body = b"".join([block async for block in _limited(stream, limit, head)])
    if kind == "hl7v2":
        outcome = await ingestor(request).ingest_body(
            body, transport="http", peer=_peer(request), content_type=HL7V2_ER7
        )
        ids = [r.raw_id for r in outcome.results[:50] if r.raw_id]
        headers = {"X-Hestia-Payload": ",".join(ids)} if ids else {}
        return Response(outcome.ack, outcome.http_status, headers, media_type=HL7V2_ER7)
    if kind == "dicom":
        source = RawSource("http", _peer(request))
        results = await dicom_ingestor(request).ingest_files([("", body)], source=source)
        return _dicom_response(request, results)
    if kind == "dicom-json":
        raise UnsupportedMediaType(
            "DICOM JSON is recognised but not ingested; send the Part 10 files to /ingest/dicom"
        )
    return await _ingest_fhir(request, body, found.resource_type or "")


async def _ingest_fhir(request: Request, body: bytes, resource_type: str) -> Response:
    """FHIR JSON: kept as a raw payload, then handled exactly as POST /fhir[/{type}]."""
    raw = ingestor(request).raw
    stored, _original = await raw.insert_bytes(
        body,
        kind="fhir",
        content_type="application/fhir+json",
        source=RawSource("http", _peer(request)),
        received_at=now_utc(),
    )
    inner = _json_request(request, body)
    try:
        if resource_type == "Bundle":
            response = await fhir.bundle(inner)
        else:
            response = await fhir.create(inner, resource_type)
    except FhirError as error:
        await raw.record_result(
            stored.id,
            status="failed",
            outcome=error.to_outcome(),
            report={"httpStatus": error.status},
            processed_at=now_utc(),
        )
        raise
    await raw.record_result(
        stored.id,
        status="mapped",
        outcome=None,
        report={"httpStatus": response.status_code},
        processed_at=now_utc(),
    )
    response.headers["X-Hestia-Payload"] = stored.id
    return response


def _json_request(request: Request, body: bytes) -> Request:
    """The same request, as the FHIR routes expect it: JSON content type, body already read."""
    scope = dict(request.scope)
    scope["headers"] = [
        (k, v) for k, v in request.scope["headers"] if k.lower() != b"content-type"
    ] + [(b"content-type", b"application/fhir+json")]
    inner = Request(scope, request.receive)
    inner._body = body  # starlette serves a cached body to stream() and body()
    return inner


def _payload_json(payload: RawPayload) -> JsonDict:
    return {
        "id": payload.id,
        "kind": payload.kind,
        "status": payload.status,
        "receivedAt": payload.received_at.isoformat(),
        "contentType": payload.content_type,
        "size": payload.size,
        "sha256": payload.sha256,
        "source": payload.source.as_doc(),
        "attempts": payload.attempts,
        **({"map": payload.map_name} if payload.map_name else {}),
        **({"file": payload.filename} if payload.filename else {}),
        **({"controlId": payload.control_id} if payload.control_id else {}),
        **({"messageType": payload.message_type} if payload.message_type else {}),
        **({"report": payload.report} if payload.report else {}),
        "findings": {"resourceType": "OperationOutcome", "issue": payload.findings}
        if payload.findings
        else None,
        "outcome": payload.outcome,
    }


def _statuses(request: Request) -> tuple[Status, ...]:
    raw = request.query_params.get("status", "attention")
    if raw == "attention":
        return ATTENTION_STATUSES
    chosen: list[Status] = []
    for value in raw.split(","):
        if value == "failed":
            chosen.extend(("failed", "rejected", "error"))
            continue
        match = next((s for s in STATUSES if s == value), None)
        if match is None:
            raise BadRequest(
                f"status '{value[:40]}' is not one of: attention, {', '.join(STATUSES)}",
                expression=["status"],
            )
        chosen.append(match)
    return tuple(dict.fromkeys(chosen))


@router.get("/payloads")
async def list_all_payloads(request: Request) -> Response:
    """Stored payloads of any kind by status (default: those needing attention), with their
    findings (an OperationOutcome each) and report."""
    await authorize_feed(request, "search", "Binary")
    kinds = [k for k in request.query_params.get("kind", "").split(",") if k]
    for kind in kinds:
        if kind not in ("hl7v2", "csv", "dicom", "fhir"):
            raise BadRequest(f"unknown kind '{kind[:20]}'", expression=["kind"])
    findings_only = request.query_params.get("findings") == "true"
    payloads = await ingestor(request).raw.list_payloads(
        _statuses(request), kinds=kinds, limit=_count(request)
    )
    if findings_only:
        payloads = [p for p in payloads if p.findings]
    body = {"payloads": [_payload_json(p) for p in payloads]}
    return FhirResponse(body, 200, pretty=is_pretty(request))


@router.get("/payloads/{raw_id}")
async def get_payload(request: Request, raw_id: str) -> Response:
    await authorize_feed(request, "read", "Binary")
    _check_id(raw_id, "id")
    raw = ingestor(request).raw
    payload = await raw.get(raw_id)
    if payload is None:
        raise NotFound(f"No payload '{raw_id}' is stored", expression=["id"])
    body = _payload_json(payload)
    if payload.kind == "csv":
        body["rejectedRows"] = await raw.count_rejections(raw_id)
    return FhirResponse(body, 200, pretty=is_pretty(request))


@router.get("/payloads/{raw_id}/rejections")
async def get_rejections(request: Request, raw_id: str) -> Response:
    """A CSV payload's rejected rows (line, column, reason, row), `?after=LINE` to page."""
    await authorize_feed(request, "read", "Binary")
    _check_id(raw_id, "id")
    after = request.query_params.get("after", "0")
    if not after.isdigit():
        raise BadRequest("after must be a line number", expression=["after"])
    raw = ingestor(request).raw
    if await raw.get(raw_id) is None:
        raise NotFound(f"No payload '{raw_id}' is stored", expression=["id"])
    rows = await raw.rejections(raw_id, limit=_count(request), after_line=int(after))
    body = {"payload": raw_id, "rejections": [r.as_doc() for r in rows]}
    return FhirResponse(body, 200, pretty=is_pretty(request))


@router.post("/$reprocess")
async def reprocess_any(request: Request) -> Response:
    """Map stored payloads again, whatever their kind: `?payload=<id>` (repeatable), with
    `&map=NAME` to run a CSV through another map, or `?status=failed` (also `partial`)."""
    await authorize_feed(request, "update", "*")
    ids = request.query_params.getlist("payload")
    status = request.query_params.get("status")
    map_name = request.query_params.get("map") or None
    if ids and status:
        raise BadRequest("Give either payload ids or a status, not both")
    raw = ingestor(request).raw
    if not ids:
        if status not in ("failed", "partial", "attention"):
            raise BadRequest(
                "Say what to re-process: ?payload=<id> (repeatable) or ?status=failed|partial",
                expression=["payload"],
            )
        chosen = ATTENTION_STATUSES if status != "partial" else ("partial",)
        if status == "failed":
            chosen = ("failed", "rejected", "error")
        ids = [p.id for p in await raw.list_payloads(chosen, limit=_count(request))]
    results: list[JsonDict] = []
    for raw_id in ids:
        _check_id(raw_id, "payload")
        payload = await raw.get(raw_id)
        if payload is None:
            raise NotFound(f"No payload '{raw_id}' is stored", expression=["payload"])
        results.append(await _reprocess_one(request, payload, map_name))
    return FhirResponse({"reprocessed": results}, 200, pretty=is_pretty(request))


async def _reprocess_one(request: Request, payload: RawPayload, map_name: str | None) -> JsonDict:
    if payload.kind == "csv":
        report = await csv_ingestor(request).reprocess(payload.id, map_name=map_name)
        assert report is not None
        return report.as_json()
    if payload.kind == "dicom":
        result = await dicom_ingestor(request).reprocess(payload.id)
        assert result is not None
        return result.as_json()
    if payload.kind == "hl7v2":
        hl7 = await ingestor(request).reprocess(payload.id)
        assert hl7 is not None
        return hl7.summary()
    raise BadRequest(
        f"payload {payload.id} is FHIR JSON: send it again to POST /fhir instead",
        expression=["payload"],
    )
