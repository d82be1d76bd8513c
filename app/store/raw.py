"""Original payloads, kept byte for byte before anything is mapped (DESIGN: collection `raw`).

One document per received message: the bytes, their SHA-256, content type, when and from where
they came, the sender's control id, and what became of them (mapping status, the ACK sent, the
OperationOutcome of a failure, the resource versions written). The document is inserted before
mapping starts and updated when mapping ends, so a crash in between leaves the payload findable
with status `received`.

Duplicates: `dedup` is unique. It is the sender plus MSH-10 when the message has a control id,
or the SHA-256 of the bytes when it has none, so a second insert of the same message fails
atomically and the caller answers with the first one's ACK.

HL7 v2 messages are plain BSON binary: far below the 16 MB document limit. CSV extracts and
DICOM files can be far larger, so `insert_stream` keeps a payload inline only while it stays
under `inline_limit` and otherwise writes it to GridFS (bucket `raw_files`) chunk by chunk,
hashing as it goes: a 1 GB upload never sits in memory. `open_stream` reads either form back
in blocks. A DICOM payload may be kept header-only (its bytes up to the pixel data).

CSV payloads also have per-row rejections (collection `raw_rejections`: line, column, reason
and the row's text), replaced on every attempt, so a data manager can find each rejected row
afterwards and re-process the payload once the map is fixed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from bson import Binary, ObjectId
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from app.store.versions import instant

Doc = dict[str, Any]
RAW = "raw"
RAW_FILES = "raw_files"  # GridFS bucket
REJECTIONS = "raw_rejections"
# Kept inline (one BSON document) below this size; GridFS above.
INLINE_LIMIT = 4 * 1024 * 1024
# Rejections and findings kept on record per attempt; beyond this they are only counted.
MAX_KEPT_REJECTIONS = 100_000

# received: stored, mapping not finished; mapped: AA; failed: AE (cannot be mapped);
# rejected: AR (unparseable or unsupported); error: Hestia failed (database down…), AR sent;
# duplicate: a control id reused for different bytes, kept but not mapped; partial: a CSV
# whose good rows were written and whose bad rows were rejected (re-processable).
Status = Literal["received", "mapped", "partial", "failed", "rejected", "error", "duplicate"]
STATUSES: tuple[Status, ...] = (
    "received", "mapped", "partial", "failed", "rejected", "error", "duplicate"
)  # fmt: skip
# What "reprocess all failed" picks up: mapping errors and rejections too, since a mapper that
# learned a new message type turns yesterday's AR into today's AA.
FAILED_STATUSES: tuple[Status, ...] = ("failed", "rejected", "error")
# What "needs attention" lists: failures plus CSV payloads with rejected rows.
ATTENTION_STATUSES: tuple[Status, ...] = ("failed", "rejected", "error", "partial")


@dataclass(frozen=True)
class RawSource:
    """Where a payload came from."""

    transport: str  # "mllp" | "http"
    peer: str | None = None  # "host:port" of the remote end
    sending_application: str = ""  # MSH-3
    sending_facility: str = ""  # MSH-4

    def as_doc(self) -> Doc:
        return {
            "transport": self.transport,
            "peer": self.peer,
            "sending_application": self.sending_application,
            "sending_facility": self.sending_facility,
        }


@dataclass
class RawPayload:
    id: str
    data: bytes
    sha256: str
    content_type: str
    received_at: datetime
    source: RawSource
    control_id: str
    status: Status
    message_type: str = ""
    ack: bytes | None = None
    ack_code: str | None = None
    outcome: Doc | None = None
    resources: list[str] = field(default_factory=list)
    provenance: str | None = None
    attempts: int = 0
    duplicate_of: str | None = None
    kind: str = "hl7v2"  # hl7v2 | csv | dicom | fhir
    size: int = 0
    file_id: Any = None  # GridFS file id when the bytes are not inline
    header_only: bool = False
    map_name: str = ""
    filename: str = ""
    findings: list[Doc] = field(default_factory=list)  # OperationOutcome issues
    report: Doc | None = None  # counts of the last attempt (CSV rows, DICOM files)

    @property
    def in_gridfs(self) -> bool:
        return self.file_id is not None

    @classmethod
    def from_doc(cls, doc: Doc) -> RawPayload:
        src = doc.get("source") or {}
        return cls(
            id=str(doc["_id"]),
            data=bytes(doc["data"]),
            sha256=str(doc["sha256"]),
            content_type=str(doc.get("content_type", "")),
            received_at=doc["received_at"],
            source=RawSource(
                transport=str(src.get("transport", "")),
                peer=src.get("peer"),
                sending_application=str(src.get("sending_application", "")),
                sending_facility=str(src.get("sending_facility", "")),
            ),
            control_id=str(doc.get("control_id", "")),
            status=doc.get("status", "received"),
            message_type=str(doc.get("message_type", "")),
            ack=bytes(doc["ack"]) if doc.get("ack") is not None else None,
            ack_code=doc.get("ack_code"),
            outcome=doc.get("outcome"),
            resources=list(doc.get("resources") or []),
            provenance=doc.get("provenance"),
            attempts=int(doc.get("attempts", 0)),
            duplicate_of=doc.get("duplicate_of"),
            kind=str(doc.get("kind", "hl7v2")),
            size=int(doc.get("size", len(doc.get("data") or b""))),
            file_id=doc.get("file_id"),
            header_only=bool(doc.get("header_only", False)),
            map_name=str(doc.get("map_name", "")),
            filename=str(doc.get("filename", "")),
            findings=list(doc.get("findings") or []),
            report=doc.get("report"),
        )

    def as_binary(self) -> Doc:
        """The payload as a FHIR Binary, which Provenance.entity references as its source."""
        return {
            "resourceType": "Binary",
            "id": self.id,
            "meta": {"lastUpdated": instant(self.received_at)},
            "contentType": self.content_type,
            "data": base64.b64encode(self.data).decode("ascii"),
        }


@dataclass(frozen=True)
class RowRejection:
    """One CSV row that could not be mapped, kept for the data manager and for re-processing."""

    line: int
    column: str | None
    reason: str
    row: str = ""  # the row's cells, re-joined as CSV

    def as_doc(self) -> Doc:
        return {"line": self.line, "column": self.column, "reason": self.reason, "row": self.row}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dedup_key(sending_application: str, sending_facility: str, control_id: str, sha: str) -> str:
    if control_id:
        # Upper-cased like the mapper's sender namespace: "LAB" and "lab" are one system.
        return "\x1f".join(
            ("cid", sending_application.upper(), sending_facility.upper(), control_id)
        )
    return f"sha256\x1f{sha}"


class RawStore:
    def __init__(self, db: AsyncDatabase[Doc], *, inline_limit: int = INLINE_LIMIT) -> None:
        self.collection = db[RAW]
        self.rejections_collection = db[REJECTIONS]
        self.files = AsyncGridFSBucket(db, bucket_name=RAW_FILES)
        self.inline_limit = inline_limit

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("dedup", unique=True, name="dedup")
        await self.collection.create_index(
            [("status", ASCENDING), ("received_at", ASCENDING)], name="status"
        )
        await self.collection.create_index("sha256", name="sha256")
        await self.rejections_collection.create_index(
            [("raw", ASCENDING), ("line", ASCENDING)], name="raw_line"
        )

    async def insert(
        self,
        data: bytes,
        *,
        content_type: str,
        source: RawSource,
        control_id: str,
        received_at: datetime,
    ) -> tuple[RawPayload, RawPayload | None]:
        """Store a payload. Returns (stored, original): `original` is the earlier payload this one
        duplicates, or None when it is new.

        A duplicate with identical bytes is not stored again (only counted on the original);
        one that reuses a control id for different bytes is stored with status `duplicate` so
        nothing the sender sent is lost.
        """
        sha = sha256_hex(data)
        key = dedup_key(source.sending_application, source.sending_facility, control_id, sha)
        doc: Doc = {
            "_id": str(ObjectId()),
            "dedup": key,
            "data": Binary(data),
            "sha256": sha,
            "size": len(data),
            "content_type": content_type,
            "received_at": received_at,
            "source": source.as_doc(),
            "control_id": control_id,
            "status": "received",
            "attempts": 0,
        }
        try:
            await self.collection.insert_one(doc)
            return RawPayload.from_doc(doc), None
        except DuplicateKeyError:
            pass
        original_doc = await self.collection.find_one_and_update(
            {"dedup": key},
            {"$inc": {"duplicates": 1}, "$set": {"last_duplicate_at": received_at}},
            return_document=ReturnDocument.AFTER,
        )
        if original_doc is None:  # the original vanished (manual cleanup): store as new
            doc["dedup"] = f"{key}\x1f{doc['_id']}"
            await self.collection.insert_one(doc)
            return RawPayload.from_doc(doc), None
        original = RawPayload.from_doc(original_doc)
        if original.sha256 == sha:
            return original, original
        doc.update(
            dedup=f"dup\x1f{doc['_id']}",
            status="duplicate",
            duplicate_of=original.id,
        )
        await self.collection.insert_one(doc)
        return RawPayload.from_doc(doc), original

    async def get(self, raw_id: str) -> RawPayload | None:
        doc = await self.collection.find_one({"_id": raw_id})
        return RawPayload.from_doc(doc) if doc else None

    async def record(
        self,
        raw_id: str,
        *,
        status: Status,
        ack: bytes,
        ack_code: str,
        message_type: str = "",
        outcome: Doc | None = None,
        resources: Sequence[str] = (),
        provenance: str | None = None,
        warnings: Sequence[str] = (),
        processed_at: datetime,
        session: AsyncClientSession | None = None,
    ) -> None:
        """What mapping produced: status, the ACK sent, and the outcome or the versions written."""
        await self.collection.update_one(
            {"_id": raw_id},
            {
                "$set": {
                    "status": status,
                    "ack": Binary(ack),
                    "ack_code": ack_code,
                    "message_type": message_type,
                    "outcome": outcome,
                    "resources": list(resources),
                    "provenance": provenance,
                    "warnings": list(warnings),
                    "processed_at": processed_at,
                },
                "$inc": {"attempts": 1},
            },
            session=session,
        )

    async def list_by_status(
        self, statuses: Sequence[Status] = FAILED_STATUSES, *, limit: int = 100
    ) -> list[RawPayload]:
        """Payloads in the given statuses, oldest first (the order they should be re-run in)."""
        cursor = (
            self.collection.find({"status": {"$in": list(statuses)}})
            .sort([("received_at", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        return [RawPayload.from_doc(doc) async for doc in cursor]

    # Large payloads: CSV extracts and DICOM files

    async def insert_stream(
        self,
        blocks: AsyncIterable[bytes],
        *,
        kind: str,
        content_type: str,
        source: RawSource,
        received_at: datetime,
        extra: Doc | None = None,
    ) -> tuple[RawPayload, RawPayload | None]:
        """Store a payload arriving in blocks; returns (stored, original) like `insert`.

        Duplicates are recognised by SHA-256 (these feeds have no control id): the same bytes
        sent again are not stored twice and the earlier payload is returned as `original`.
        """
        digest = hashlib.sha256()
        head: list[bytes] = []
        size = 0
        upload = None
        raw_id = str(ObjectId())
        async for block in blocks:
            if not block:
                continue
            digest.update(block)
            size += len(block)
            if upload is None:
                head.append(block)
                if size > self.inline_limit:
                    upload = self.files.open_upload_stream(
                        raw_id, metadata={"raw": raw_id, "content_type": content_type}
                    )
                    for part in head:
                        await upload.write(part)
                    head = []
            else:
                await upload.write(block)
        if upload is not None:
            await upload.close()
        sha = digest.hexdigest()
        doc: Doc = {
            "_id": raw_id,
            "dedup": f"{kind}\x1fsha256\x1f{sha}",
            "sha256": sha,
            "size": size,
            "kind": kind,
            "content_type": content_type,
            "received_at": received_at,
            "source": source.as_doc(),
            "control_id": "",
            "status": "received",
            "attempts": 0,
            **(extra or {}),
        }
        if upload is None:
            doc["data"] = Binary(b"".join(head))
        else:
            doc["data"] = Binary(b"")
            doc["file_id"] = upload._id
        try:
            await self.collection.insert_one(doc)
            return RawPayload.from_doc(doc), None
        except DuplicateKeyError:
            if upload is not None:
                await self._delete_file(upload._id)
        original_doc = await self.collection.find_one_and_update(
            {"dedup": doc["dedup"]},
            {"$inc": {"duplicates": 1}, "$set": {"last_duplicate_at": received_at}},
            return_document=ReturnDocument.AFTER,
        )
        if original_doc is None:  # removed meanwhile: keep this copy as a new payload
            raise DuplicateKeyError("the original payload vanished; send it again")
        original = RawPayload.from_doc(original_doc)
        return original, original

    async def insert_bytes(
        self,
        data: bytes,
        *,
        kind: str,
        content_type: str,
        source: RawSource,
        received_at: datetime,
        extra: Doc | None = None,
    ) -> tuple[RawPayload, RawPayload | None]:
        async def once() -> AsyncIterator[bytes]:
            yield data

        return await self.insert_stream(
            once(),
            kind=kind,
            content_type=content_type,
            source=source,
            received_at=received_at,
            extra=extra,
        )

    async def open_stream(self, payload: RawPayload) -> AsyncIterator[bytes]:
        """The payload's bytes in blocks (GridFS chunk size), whichever way they are kept."""
        if payload.file_id is None:
            if payload.data:
                yield payload.data
            return
        try:
            stream = await self.files.open_download_stream(payload.file_id)
        except NoFile as exc:
            raise LookupError(f"the bytes of payload {payload.id} are missing") from exc
        while True:
            block = await stream.readchunk()
            if not block:
                break
            yield block

    async def read_all(self, payload: RawPayload) -> bytes:
        """The whole payload in memory: for payloads known to be small (one DICOM file)."""
        if payload.file_id is None:
            return payload.data
        return b"".join([block async for block in self.open_stream(payload)])

    async def _delete_file(self, file_id: Any) -> None:
        with contextlib.suppress(NoFile):
            await self.files.delete(file_id)

    async def record_result(
        self,
        raw_id: str,
        *,
        status: Status,
        outcome: Doc | None,
        report: Doc,
        findings: Sequence[Doc] = (),
        provenance: Sequence[str] = (),
        resources: Sequence[str] = (),
        processed_at: datetime,
        session: AsyncClientSession | None = None,
    ) -> None:
        """The outcome of mapping a CSV or DICOM payload (HL7 v2 uses `record`)."""
        await self.collection.update_one(
            {"_id": raw_id},
            {
                "$set": {
                    "status": status,
                    "outcome": outcome,
                    "report": report,
                    "findings": list(findings),
                    "provenance_list": list(provenance),
                    "resources": list(resources),
                    "processed_at": processed_at,
                },
                "$inc": {"attempts": 1},
            },
            session=session,
        )

    async def set_status(self, raw_id: str, status: Status) -> None:
        await self.collection.update_one({"_id": raw_id}, {"$set": {"status": status}})

    # Row-level rejections (CSV)

    async def clear_rejections(self, raw_id: str) -> None:
        """Forget the rejections of an earlier attempt (re-processing starts afresh)."""
        await self.rejections_collection.delete_many({"raw": raw_id})

    async def add_rejections(self, raw_id: str, rejections: Sequence[RowRejection]) -> None:
        if rejections:
            await self.rejections_collection.insert_many(
                [{"raw": raw_id, **r.as_doc()} for r in rejections], ordered=False
            )

    async def rejections(
        self, raw_id: str, *, limit: int = 100, after_line: int = 0
    ) -> list[RowRejection]:
        cursor = (
            self.rejections_collection.find({"raw": raw_id, "line": {"$gt": after_line}})
            .sort([("line", ASCENDING)])
            .limit(limit)
        )
        return [
            RowRejection(int(d["line"]), d.get("column"), str(d["reason"]), str(d.get("row", "")))
            async for d in cursor
        ]

    async def count_rejections(self, raw_id: str) -> int:
        return int(await self.rejections_collection.count_documents({"raw": raw_id}))

    async def list_payloads(
        self,
        statuses: Sequence[Status],
        *,
        kinds: Sequence[str] = (),
        limit: int = 100,
    ) -> list[RawPayload]:
        """Payloads in the given statuses (and kinds), oldest first, without their bytes."""
        query: Doc = {"status": {"$in": list(statuses)}}
        if kinds:
            # Payloads stored before `kind` existed are HL7 v2.
            query["kind"] = {"$in": [*kinds, None]} if "hl7v2" in kinds else {"$in": list(kinds)}
        cursor = (
            self.collection.find(query, {"data": 0})
            .sort([("received_at", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        return [RawPayload.from_doc({**doc, "data": b""}) async for doc in cursor]

    async def latest(self, *, limit: int = 20) -> list[RawPayload]:
        cursor = self.collection.find({}).sort([("received_at", DESCENDING)]).limit(limit)
        return [RawPayload.from_doc(doc) async for doc in cursor]


__all__ = [
    "ATTENTION_STATUSES",
    "FAILED_STATUSES",
    "INLINE_LIMIT",
    "RAW",
    "RAW_FILES",
    "REJECTIONS",
    "STATUSES",
    "RawPayload",
    "RawSource",
    "RawStore",
    "RowRejection",
    "Status",
    "dedup_key",
    "sha256_hex",
]
