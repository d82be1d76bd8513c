"""HL7 v2 ingestion: store the bytes, map them, write the resources and their Provenance, ACK.

For each message:
1. the bytes are stored as a raw payload (app/store/raw.py) before anything else, so nothing
   is lost whatever happens next; a duplicate (same sender and MSH-10) stops here and gets the
   first one's ACK;
2. the pure mapper turns them into a transaction Bundle (or an `Hl7v2Error`: AE/AR);
3. ONE database transaction, on the same write path as the REST API (Interactions' `*_in`
   writes in a UnitOfWork, flushed by Store.run_transaction), reads what the partial updates
   and merges need, writes every resource, then the Provenance whose targets are the exact
   versions just written, and marks the payload `mapped` with its ACK;
4. the ACK is built: AA, AE with ERR (cannot be mapped), AR (unparseable, unsupported, or
   Hestia could not store it; HL7 v2.5 §2.9.2 lets the sender resend after an AR).

Re-processing runs steps 2–4 again on a stored payload, e.g. after a mapper fix.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import PyMongoError

from app.fhir.interactions import Current, Interactions, UnitOfWork, version_from_doc
from app.fhir.outcome import FhirError
from app.fhir.search.parameters import registry
from app.ingest.acks import HTTP_STATUS, batch_envelope, internal_error, is_batch, worst
from app.ingest.header import Header, read_header
from app.ingest.merging import repoint_references, resolve_entries
from app.ingest.mllp import MllpServer, MllpSettings
from app.ingest.writes import unchanged
from app.store.raw import FAILED_STATUSES, RawPayload, RawSource, RawStore, Status
from app.store.versions import StoreUnavailable, Version, VersionConflict, WriteBatch, now_utc
from mappers.hl7v2 import (
    Hl7v2Error,
    InternalMappingError,
    MappingOptions,
    MappingResult,
    build_ack,
    split_batch,
)
from mappers.hl7v2.errors import APPLICATION_INTERNAL_ERROR
from mappers.hl7v2.messages import map_parsed

JsonDict = dict[str, Any]
log = logging.getLogger("hestia.ingest")

HL7V2_ER7 = "x-application/hl7-v2+er7"
APPLY_ATTEMPTS = 4
_TRANSIENT = (PyMongoError, StoreUnavailable, VersionConflict, OSError)

# The mapping step: a parsed message → MappingResult or Hl7v2Error (mappers.hl7v2.map_parsed).
Mapper = Callable[..., MappingResult]


@dataclass(frozen=True)
class IngestSettings:
    # One message (an MLLP frame, or one message of an HTTP batch); larger ones get AR.
    max_message_bytes: int = 8 * 1024 * 1024
    max_batch_messages: int = 10_000
    # How long a duplicate waits for its original, still being processed, to get its ACK.
    duplicate_wait_seconds: float = 10.0
    mapping: MappingOptions = field(default_factory=MappingOptions)


@dataclass
class IngestResult:
    """What became of one message."""

    raw_id: str | None  # None only when not even the bytes could be stored
    status: Status
    ack: bytes
    ack_code: str
    message_type: str = ""
    control_id: str = ""
    duplicate: bool = False
    resources: list[str] = field(default_factory=list)  # "Type/id/_history/vid"
    provenance: str | None = None  # "Provenance/id/_history/vid"
    outcome: JsonDict | None = None

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.status]

    def summary(self) -> JsonDict:
        return {
            "payload": self.raw_id,
            "status": self.status,
            "ackCode": self.ack_code,
            "messageType": self.message_type,
            "controlId": self.control_id,
            "duplicate": self.duplicate,
            "resources": self.resources,
            "provenance": self.provenance,
            **({"outcome": self.outcome} if self.outcome else {}),
        }


@dataclass
class BatchResult:
    """The answer to a body holding one message or several (FHS/BHS batch or concatenated)."""

    ack: bytes  # one ACK, or the batch of ACKs in an FHS/BHS envelope
    results: list[IngestResult]

    @property
    def status(self) -> Status:
        return worst([r.status for r in self.results])

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.status]


@dataclass
class _Applied:
    resources: list[Version]
    provenance: Version | None
    ack: bytes


class Hl7v2Ingestor:
    def __init__(
        self,
        interactions: Interactions,
        raw: RawStore,
        settings: IngestSettings | None = None,
        *,
        mapper: Mapper = map_parsed,
    ) -> None:
        self.interactions = interactions
        self.mapper = mapper
        self.store = interactions.store
        self.raw = raw
        self.settings = settings or IngestSettings()
        reg = registry()
        self._compartment_types = [t for t in reg.resource_types if reg.patient_compartment(t)]

    # Intake

    async def ingest_body(
        self, body: bytes, *, transport: str, peer: str | None, content_type: str = HL7V2_ER7
    ) -> BatchResult:
        """One message, or a batch file / concatenation of messages, each ACKed on its own."""
        if not body.strip():
            error = Hl7v2Error("the body is empty", segment="MSH", ack_code="AR")
            ack = build_ack(body, "AR", [error])
            result = IngestResult(None, "rejected", ack, "AR", outcome=error.to_outcome())
            return BatchResult(ack, [result])
        # Bytes with no recognisable MSH are still one payload: stored, then answered AR.
        messages = split_batch(body) or [body]
        if len(messages) > self.settings.max_batch_messages:
            error = Hl7v2Error(
                f"the batch holds {len(messages)} messages; at most "
                f"{self.settings.max_batch_messages} are accepted at once",
                ack_code="AR",
            )
            ack = build_ack(messages[0], "AR", [error])
            result = IngestResult(None, "rejected", ack, "AR", outcome=error.to_outcome())
            return BatchResult(batch_envelope([ack]), [result])
        results = [
            await self.ingest(m, transport=transport, peer=peer, content_type=content_type)
            for m in messages
        ]
        if len(results) == 1 and not is_batch(body):
            return BatchResult(results[0].ack, results)
        return BatchResult(batch_envelope([r.ack for r in results]), results)

    async def ingest(
        self, payload: bytes, *, transport: str, peer: str | None, content_type: str = HL7V2_ER7
    ) -> IngestResult:
        """Store, map, write and acknowledge one message."""
        header = read_header(payload)
        if len(payload) > self.settings.max_message_bytes:
            return self._too_large(payload, len(payload), self.settings.max_message_bytes, header)
        source = RawSource(transport, peer, header.sending_application, header.sending_facility)
        try:
            stored, original = await self.raw.insert(
                payload,
                content_type=content_type,
                source=source,
                control_id=header.control_id,
                received_at=now_utc(),
            )
        except _TRANSIENT:
            log.exception("could not store an HL7 v2 payload")
            error = internal_error("the message could not be stored; send it again later")
            ack = build_ack(header.message or payload, "AR", [error])
            return IngestResult(
                None, "error", ack, "AR", header.message_type, header.control_id,
                outcome=error.to_outcome(),
            )  # fmt: skip
        if original is not None:
            return await self._answer_duplicate(stored, original, header)
        return await self._process(stored, header)

    async def reject_oversized(self, head: bytes, size: int, limit: int, peer: str | None) -> bytes:
        """The ACK for an MLLP frame over the size limit (its bytes were never buffered)."""
        return self._too_large(head, size, limit, read_header(head)).ack

    def _too_large(self, payload: bytes, size: int, limit: int, header: Header) -> IngestResult:
        error = Hl7v2Error(
            f"the message is {size} bytes; at most {limit} bytes are accepted", ack_code="AR"
        )
        ack = build_ack(header.message or payload, "AR", [error])
        log.warning("HL7 v2 message of %d bytes refused (limit %d)", size, limit)
        return IngestResult(
            None, "rejected", ack, "AR", header.message_type, header.control_id,
            outcome=error.to_outcome(),
        )  # fmt: skip

    async def _answer_duplicate(
        self, stored: RawPayload, original: RawPayload, header: Header
    ) -> IngestResult:
        deadline = asyncio.get_running_loop().time() + self.settings.duplicate_wait_seconds
        while original.status == "received" and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # the original is being processed right now
            found = await self.raw.get(original.id)
            if found is None:
                break
            original = found
        if original.status in ("received", "error") or original.ack is None:
            # The first attempt never finished (crash, database outage): finish it now.
            return await self._process(original, read_header(original.data))
        return IngestResult(
            raw_id=original.id,
            status=original.status,
            ack=original.ack,
            ack_code=original.ack_code or "",
            message_type=original.message_type or header.message_type,
            control_id=original.control_id,
            duplicate=True,
            resources=list(original.resources),
            provenance=original.provenance,
            outcome=original.outcome,
        )

    # Re-processing

    async def reprocess(self, raw_id: str) -> IngestResult | None:
        """Map a stored payload again (None when there is no such payload)."""
        payload = await self.raw.get(raw_id)
        if payload is None:
            return None
        if payload.status == "duplicate" and payload.duplicate_of:
            # A reused control id: the original is the message of record.
            original = await self.raw.get(payload.duplicate_of)
            if original is not None:
                payload = original
        return await self._process(payload, read_header(payload.data))

    async def reprocess_failed(self, *, limit: int = 100) -> list[IngestResult]:
        """Map again every payload that failed (AE), was rejected (AR) or hit an error, oldest
        first; up to `limit` of them per call."""
        results = []
        for payload in await self.raw.list_by_status(FAILED_STATUSES, limit=limit):
            results.append(await self._process(payload, read_header(payload.data)))
        return results

    # One message

    async def _process(self, payload: RawPayload, header: Header) -> IngestResult:
        if header.message is None:
            assert header.error is not None
            return await self._fail(payload, header, header.error)
        try:
            result = self._map(payload, header)
        except Hl7v2Error as error:
            return await self._fail(payload, header, error)
        try:
            applied = await self._apply_with_retries(payload, result, header)
        except Hl7v2Error as error:
            return await self._fail(payload, header, error)
        except FhirError as error:
            # The mapped resources were refused by the store's validation: a mapping defect
            # or a value the mapper let through. AE, keeping the store's own OperationOutcome.
            reason = f"a mapped resource was refused: {error.diagnostics}"
            refused = Hl7v2Error(reason[:1000], error_code=APPLICATION_INTERNAL_ERROR)
            return await self._fail(payload, header, refused, outcome=error.to_outcome())
        except _TRANSIENT:
            log.exception("HL7 v2 payload %s could not be written", payload.id)
            unavailable = internal_error("the message could not be stored; send it again later")
            return await self._fail(payload, header, unavailable, status="error")
        return IngestResult(
            raw_id=payload.id,
            status="mapped",
            ack=applied.ack,
            ack_code="AA",
            message_type=result.message_type,
            control_id=result.control_id,
            resources=[_versioned(v) for v in applied.resources],
            provenance=_versioned(applied.provenance) if applied.provenance else None,
        )

    def _map(self, payload: RawPayload, header: Header) -> MappingResult:
        assert header.message is not None
        try:
            return self.mapper(
                header.message,
                raw_id=payload.id,
                received_at=payload.received_at,
                options=self.settings.mapping,
            )
        except Hl7v2Error:
            raise
        except Exception as exc:  # a mapper defect still gets an answer (AE) and is kept
            log.exception("HL7 v2 mapping failed unexpectedly on payload %s", payload.id)
            raise InternalMappingError(
                f"internal error while mapping: {type(exc).__name__}"
            ) from exc

    async def _fail(
        self,
        payload: RawPayload,
        header: Header,
        error: Hl7v2Error,
        *,
        outcome: JsonDict | None = None,
        status: Status | None = None,
    ) -> IngestResult:
        final: Status = status or ("rejected" if error.ack_code == "AR" else "failed")
        ack = build_ack(header.message or payload.data, error.ack_code, [error])
        outcome = outcome or error.to_outcome()
        try:
            await self.raw.record(
                payload.id,
                status=final,
                ack=ack,
                ack_code=error.ack_code,
                message_type=header.message_type,
                outcome=outcome,
                processed_at=now_utc(),
            )
        except _TRANSIENT:
            log.exception("could not record the outcome of HL7 v2 payload %s", payload.id)
            final = "error"
        return IngestResult(
            raw_id=payload.id,
            status=final,
            ack=ack,
            ack_code=error.ack_code,
            message_type=header.message_type,
            control_id=header.control_id,
            outcome=outcome,
        )

    async def _apply_with_retries(
        self, payload: RawPayload, result: MappingResult, header: Header
    ) -> _Applied:
        # Store.run_transaction already retries a conflict a few times within milliseconds;
        # messages racing on one hot resource (a busy patient) get a longer, jittered wait.
        for attempt in range(APPLY_ATTEMPTS):
            try:
                return await self._apply(payload, result, header)
            except VersionConflict:
                if attempt == APPLY_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0.05, 0.25) * (attempt + 1))
        raise AssertionError("unreachable")

    async def _apply(self, payload: RawPayload, result: MappingResult, header: Header) -> _Applied:
        """Write the message's resources, its Provenance and the payload's new status in one
        transaction (retried whole on a write conflict)."""
        provenance_entry = next(
            (e for e in result.bundle["entry"] if e["resource"]["resourceType"] == "Provenance"),
            None,
        )
        skip = [provenance_entry["request"]["url"]] if provenance_entry else []
        assert header.message is not None
        ack = build_ack(header.message, "AA")
        warnings = [w.reason for w in result.warnings]

        async def attempt(session: AsyncClientSession) -> _Applied:
            uow = UnitOfWork(session, WriteBatch(self.store), (payload.id,))
            # Every resource the message names is read once, with one query per type: the
            # merges and the version checks below both work from these documents.
            current = await self._read_current(session, result)
            entries = await resolve_entries(self.store, session, result, skip=skip, current=current)
            if result.patient_merges:
                written_urls = [e["request"]["url"] for e in entries]
                entries += await repoint_references(
                    self.store,
                    session,
                    result.patient_merges,
                    self._compartment_types,
                    exclude=written_urls,
                )
            versions: list[Version] = []
            for entry in entries:
                versions.append(await self._put(uow, entry["resource"], current))
            provenance: Version | None = None
            if provenance_entry is not None:
                body = {
                    **provenance_entry["resource"],
                    "target": [{"reference": _versioned(v)} for v in versions],
                }
                provenance = await self._put(uow, body, current)
            await uow.flush()
            await self.raw.record(
                payload.id,
                status="mapped",
                ack=ack,
                ack_code="AA",
                message_type=result.message_type,
                resources=[_versioned(v) for v in versions],
                provenance=_versioned(provenance) if provenance else None,
                warnings=warnings,
                processed_at=now_utc(),
                session=session,
            )
            return _Applied(versions, provenance, ack)

        return await self.store.run_transaction(attempt)

    async def _read_current(
        self, session: AsyncClientSession, result: MappingResult
    ) -> dict[str, JsonDict | None]:
        """The current documents of every `Type/id` the mapped Bundle writes, by URL (None:
        never stored)."""
        by_type: dict[str, list[str]] = {}
        for entry in result.bundle["entry"]:
            kind, _, resource_id = entry["request"]["url"].partition("/")
            by_type.setdefault(kind, []).append(resource_id)
        current: dict[str, JsonDict | None] = {}
        for kind, ids in by_type.items():
            found = await self.store.read_current_many(kind, ids, session)
            current.update({f"{kind}/{i}": found.get(i) for i in ids})
        return current

    async def _put(
        self,
        uow: UnitOfWork,
        resource: JsonDict,
        current: dict[str, JsonDict | None],
    ) -> Version:
        """Stage the next version of `resource`, or, when it says exactly what the stored one
        says, keep that version: feeds repeat the patient and the visit in every message, and a
        repeat adds no version. The Provenance still names it, at the version it confirmed."""
        kind, resource_id = str(resource["resourceType"]), str(resource["id"])
        url = f"{kind}/{resource_id}"
        known = Current(current[url]) if url in current else None
        if known is not None and unchanged(known.doc, resource):
            return version_from_doc(kind, {**known.doc, "id": resource_id})
        self.interactions.prepare_update(kind, resource_id, resource)
        written = await self.interactions.update_in(uow, kind, resource_id, resource, current=known)
        assert written.version is not None
        return written.version

    # MLLP

    async def on_mllp_message(self, payload: bytes, peer: str | None) -> bytes:
        """Answer one MLLP frame; never raises (an ACK is owed whatever happens)."""
        try:
            if is_batch(payload) or len(split_batch(payload)) > 1:
                return (await self.ingest_body(payload, transport="mllp", peer=peer)).ack
            return (await self.ingest(payload, transport="mllp", peer=peer)).ack
        except Exception:
            log.exception("MLLP message from %s could not be processed", peer)
            return build_ack(payload, "AR", [internal_error("internal error; send it again")])

    def mllp_server(self, settings: MllpSettings | None = None) -> MllpServer:
        """An MLLP listener feeding this service (call `await server.start()`). Its frame limit
        defaults to this service's `max_message_bytes`."""
        settings = settings or MllpSettings(max_frame_bytes=self.settings.max_message_bytes)
        return MllpServer(self.on_mllp_message, self.reject_oversized, settings)

    # Listing

    async def failed(self, *, limit: int = 100) -> list[RawPayload]:
        return await self.raw.list_by_status(FAILED_STATUSES, limit=limit)


def _versioned(version: Version) -> str:
    return f"{version.resource_type}/{version.id}/_history/{version.vid}"


__all__ = [
    "HL7V2_ER7",
    "BatchResult",
    "Hl7v2Ingestor",
    "IngestResult",
    "IngestSettings",
]
