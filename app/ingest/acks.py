"""How an ingestion outcome is answered: ACK code, HTTP status, and batch ACK envelopes."""

from __future__ import annotations

from datetime import UTC, datetime

from app.store.raw import Status
from mappers.hl7v2.errors import APPLICATION_INTERNAL_ERROR, Hl7v2Error

# The status a payload ends in → the HTTP status of the answer carrying its ACK.
HTTP_STATUS: dict[Status, int] = {
    "mapped": 200,
    "duplicate": 200,
    "failed": 422,  # AE: understood, cannot be mapped
    "rejected": 400,  # AR: unparseable or unsupported
    "error": 503,  # AR: Hestia could not process it now; the sender should retry
    "received": 503,
}
_SEVERITY: dict[Status, int] = {
    "mapped": 0,
    "duplicate": 0,
    "failed": 1,
    "rejected": 2,
    "received": 3,
    "error": 3,
}


def worst(statuses: list[Status]) -> Status:
    """The status that decides a batch's HTTP status (its body holds each message's ACK)."""
    return max(statuses, key=lambda s: _SEVERITY[s]) if statuses else "rejected"


def internal_error(reason: str) -> Hl7v2Error:
    """An ERR for failures on Hestia's side (HL7 v2.5 §2.9.2: AR, the sender may resend)."""
    return Hl7v2Error(reason, error_code=APPLICATION_INTERNAL_ERROR, ack_code="AR")


def batch_envelope(acks: list[bytes], now: datetime | None = None) -> bytes:
    """Wrap per-message ACKs in FHS/BHS … BTS/FTS, answering a batch with a batch."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    head = f"FHS|^~\\&|HESTIA||||{stamp}\rBHS|^~\\&|HESTIA||||{stamp}\r".encode("ascii")
    tail = f"BTS|{len(acks)}\rFTS|1\r".encode("ascii")
    return head + b"".join(acks) + tail


def is_batch(payload: bytes) -> bool:
    return payload.lstrip(b"\xef\xbb\xbf\r\n \t")[:3] in (b"FHS", b"BHS")
