"""Original payloads, kept byte for byte before anything is mapped (DESIGN: collection `raw`).

One document per received message: the bytes, their SHA-256, content type, when and from where
they came, the sender's control id, and what became of them (mapping status, the ACK sent, the
OperationOutcome of a failure, the resource versions written). The document is inserted before
mapping starts and updated when mapping ends, so a crash in between leaves the payload findable
with status `received`.

Duplicates: `dedup` is unique. It is the sender plus MSH-10 when the message has a control id,
or the SHA-256 of the bytes when it has none, so a second insert of the same message fails
atomically and the caller answers with the first one's ACK.

Payloads are plain BSON binary: HL7 v2 messages are far below the 16 MB document limit, and
the HTTP and MLLP intakes cap a message's size well under it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from bson import Binary, ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from app.store.versions import instant

Doc = dict[str, Any]
RAW = "raw"

# received: stored, mapping not finished; mapped: AA; failed: AE (cannot be mapped);
# rejected: AR (unparseable or unsupported); error: Hestia failed (database down…), AR sent;
# duplicate: a control id reused for different bytes, kept but not mapped.
Status = Literal["received", "mapped", "failed", "rejected", "error", "duplicate"]
# What "reprocess all failed" picks up: mapping errors and rejections too, since a mapper that
# learned a new message type turns yesterday's AR into today's AA.
FAILED_STATUSES: tuple[Status, ...] = ("failed", "rejected", "error")


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
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.collection = db[RAW]

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("dedup", unique=True, name="dedup")
        await self.collection.create_index(
            [("status", ASCENDING), ("received_at", ASCENDING)], name="status"
        )
        await self.collection.create_index("sha256", name="sha256")

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

    async def latest(self, *, limit: int = 20) -> list[RawPayload]:
        cursor = self.collection.find({}).sort([("received_at", DESCENDING)]).limit(limit)
        return [RawPayload.from_doc(doc) async for doc in cursor]


__all__ = [
    "FAILED_STATUSES",
    "RAW",
    "RawPayload",
    "RawSource",
    "RawStore",
    "Status",
    "dedup_key",
    "sha256_hex",
]
