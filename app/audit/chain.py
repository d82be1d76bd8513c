"""The hash chain: how a stored audit document is laid out, serialised and hashed.

A stored document is
    {_id: seq, prev, hash, event, recorded, patients, batch, writer, written}
where `seq` numbers events 1, 2, 3 … with no gaps, `prev` is the `hash` of event seq-1 (or of
the retention checkpoint it follows), and `hash` is SHA-256 over the canonical serialisation of
every other field, `_id` included. So changing, deleting, inserting or swapping events breaks
the chain at the first place it was touched.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

from app.audit.events import JsonDict, event_patients, instant

AUDIT_DATABASE_SUFFIX = "_audit"
EVENTS = "audit_events"
CHECKPOINTS = "audit_checkpoints"
GENESIS = "0" * 64


def audit_database_name(main_database: str) -> str:
    """`hestia` → `hestia_audit`: the audit log lives beside, never inside, the FHIR data."""
    return f"{main_database}{AUDIT_DATABASE_SUFFIX}"


def _canonical_value(value: Any) -> Any:
    # Datetimes become FHIR instants so that naive and aware clients hash alike, and so that
    # MongoDB's millisecond precision cannot change the text.
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return instant(value)
    raise TypeError(f"{type(value).__name__} cannot be hashed")


def canonical(document: JsonDict) -> bytes:
    body = {k: v for k, v in document.items() if k != "hash"}
    return orjson.dumps(
        body,
        option=orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME,
        default=_canonical_value,
    )


def digest(document: JsonDict) -> str:
    return hashlib.sha256(canonical(document)).hexdigest()


def millis(value: datetime) -> datetime:
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def recorded_of(event: JsonDict) -> datetime:
    raw = event.get("recorded")
    if isinstance(raw, str):
        try:
            return millis(datetime.fromisoformat(raw))
        except ValueError:
            pass
    return millis(datetime.now(UTC))


def link(
    events: list[JsonDict], head_seq: int, head_hash: str, *, batch: str, writer: str
) -> list[JsonDict]:
    """Documents for `events`, chained after the event (head_seq, head_hash)."""
    written = millis(datetime.now(UTC))
    documents = []
    prev = head_hash
    for offset, event in enumerate(events, start=1):
        document: JsonDict = {
            "_id": head_seq + offset,
            "prev": prev,
            "event": event,
            "recorded": recorded_of(event),
            "patients": event_patients(event),
            "batch": batch,
            "writer": writer,
            "written": written,
        }
        document["hash"] = digest(document)
        prev = document["hash"]
        documents.append(document)
    return documents
