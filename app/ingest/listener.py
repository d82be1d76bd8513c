"""The MLLP listener as `hestia serve --mllp-port` runs it: every message is answered, and
audited before its ACK leaves (an MLLP message is an access like an HTTP request)."""

from __future__ import annotations

from app.audit.events import AuditFacts, AuditSource, build_events
from app.audit.log import AuditAppender
from app.ingest.mllp import MllpServer, MllpSettings
from app.ingest.service import Hl7v2Ingestor

# ACK code (MSA-1) → the HTTP status the same answer has on POST /ingest/hl7v2.
ACK_STATUS = {"AA": 200, "CA": 200, "AE": 422, "CE": 422, "AR": 400, "CR": 400}


def ack_code(ack: bytes) -> str:
    for segment in ack.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA") and len(segment) > 4:
            separator = segment[3:4]
            return segment.split(separator)[1].decode("ascii", "replace")[:2]
    return "AR"


def control_id(message: bytes) -> str | None:
    """MSH-10, for the audit record (an identifier, not content)."""
    first = message.lstrip(b"\x0b\r\n").split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not first.startswith(b"MSH") or len(first) < 4:
        return None
    fields = first.split(first[3:4])
    # MSH-1 is the separator itself, so MSH-10 is at index 9.
    return fields[9].decode("utf-8", "replace")[:64] if len(fields) > 9 else None


def audited_mllp_server(
    ingestor: Hl7v2Ingestor,
    settings: MllpSettings,
    audit_log: AuditAppender | None,
    source: AuditSource,
) -> MllpServer:
    async def on_message(payload: bytes, peer: str | None) -> bytes:
        ack = await ingestor.on_mllp_message(payload, peer)
        if audit_log is not None:
            code = ack_code(ack)
            facts = AuditFacts(
                "mllp",
                peer=peer.rsplit(":", 1)[0] if peer else None,
                status=ACK_STATUS.get(code, 400),
                details=[("ack", code)]
                + ([("msh-10", cid)] if (cid := control_id(payload)) else []),
            )
            # Raises AuditUnavailable when the audit store is down: the connection then closes
            # without an ACK, and the sender resends later (fail closed).
            await audit_log.append_all(build_events(facts, source))
        return ack

    return MllpServer(on_message, ingestor.reject_oversized, settings)
