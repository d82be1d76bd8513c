"""The audit trail: AuditEvent builders, the hash-chained log, verify, export and retention."""

from app.audit.chain import audit_database_name
from app.audit.events import AuditFacts, AuditSource, build_events
from app.audit.log import AuditLog, AuditUnavailable
from app.audit.verify import VerifyReport, verify_chain

__all__ = [
    "AuditFacts",
    "AuditLog",
    "AuditSource",
    "AuditUnavailable",
    "VerifyReport",
    "audit_database_name",
    "build_events",
    "verify_chain",
]
