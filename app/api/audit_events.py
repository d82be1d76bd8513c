"""`GET /fhir/AuditEvent…`: the audit log, read by auditors through the FHIR API.

The log is a separate, insert-only store (app/audit/log.py). Its documents have the shape of a
FHIR store's current versions, so the ordinary search engine answers these searches; only the
parameters the log extracts are offered. Writes are refused with 405: nothing, not even this
server's FHIR API, may change the audit trail.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from app.api.access import authorize
from app.audit.chain import REFUSED_MODIFIERS, SEARCH_PARAMETERS, digest
from app.audit.journal import UnreadableBlock, journaled_event
from app.audit.projection import AuditIndex
from app.context import Services
from app.fhir.outcome import BadRequest, FhirError, Forbidden, MethodNotAllowed, NotFound
from app.fhir.search.parse import RESULT_PARAMETERS
from app.security.policy import Access, PolicyInteraction
from app.store.versions import Version, instant

JsonDict = dict[str, Any]

AUDIT_EVENT = "AuditEvent"


def refuse_write(method: str) -> None:
    raise MethodNotAllowed(
        f"{method} is not offered on AuditEvent: the audit log is append-only, written only by "
        "the server, and read by auditors through read, vread and search"
    )


def capability_entry(search_parameters: list[JsonDict]) -> JsonDict:
    """What the CapabilityStatement says about AuditEvent: read and search, nothing else."""
    return {
        "interaction": [{"code": c} for c in ("read", "vread", "search-type")],
        "versioning": "no-version",
        "readHistory": False,
        "updateCreate": False,
        "conditionalCreate": False,
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchParam": [p for p in search_parameters if p["name"] in SEARCH_PARAMETERS],
        "documentation": "The audit log: readable with user/ or system/AuditEvent.rs only",
    }


def refuse_in_general_search(types: list[str]) -> None:
    if AUDIT_EVENT in types:
        raise BadRequest(
            "AuditEvents live in the audit log: search them with GET AuditEvent?…",
            expression=["_type"],
        )


async def authorize_auditor(request: Request, interaction: PolicyInteraction) -> Access:
    """Only a scope naming AuditEvent itself, at user or system level, reads the log.

    A wildcard (`system/*.rs`) is not enough, and a patient-level scope never is: the log
    describes other people's accesses.
    """
    access = await authorize(request, interaction, AUDIT_EVENT)
    services: Services = request.app.state.services
    if not services.settings.auth:
        return access
    named = [g for g in access.grants if g.resource_type == AUDIT_EVENT and g.level != "patient"]
    if not named or access.patient_scope is not None:
        raise Forbidden(
            "Reading AuditEvents needs an auditor scope naming AuditEvent "
            "(user/AuditEvent.rs or system/AuditEvent.rs); patient-level scopes never allow it"
        )
    return access


def check_parameters(items: list[tuple[str, str]]) -> None:
    offered = SEARCH_PARAMETERS | RESULT_PARAMETERS
    for name, _ in items:
        base, _, modifier = name.partition(":")
        base = base.split(".", 1)[0]
        if modifier in REFUSED_MODIFIERS:
            raise BadRequest(
                f"AuditEvent search does not offer :{modifier}; use the plain parameter",
                expression=[name[:60]],
            )
        if base not in offered:
            raise BadRequest(
                f"AuditEvent search supports {', '.join(sorted(SEARCH_PARAMETERS))}; "
                f"'{name[:60]}' is not one of them",
                expression=[name[:60]],
            )


async def index_for_auditors(audit_index: AuditIndex) -> None:
    """Bring the auditors' index up to date before their query. A journal block that cannot be
    decoded is damage or tampering: the answer would be silently incomplete, so the query is
    refused with an OperationOutcome that says so and where to look."""
    try:
        await audit_index.catch_up()
    except UnreadableBlock as exc:
        raise journal_damage(exc) from None


def journal_damage(exc: UnreadableBlock) -> FhirError:
    return FhirError(
        f"The audit journal cannot be read ({exc}); `hestia audit verify` reports the "
        "first damaged event",
        status=500,
        code="exception",
    )


async def read_event(request: Request, event_id: str, vid: str | None = None) -> Version:
    """An AuditEvent straight from the journal, checked against its hash."""
    services: Services = request.app.state.services
    if not event_id.isdigit() or (vid is not None and vid != "1"):
        raise NotFound(f"AuditEvent/{event_id[:64]} is not known")
    seq = int(event_id)
    try:
        event = await journaled_event(services.audit_store.db, seq) if 0 < seq < 2**62 else None
    except UnreadableBlock as exc:
        raise journal_damage(exc) from None
    if event is None:
        raise NotFound(f"AuditEvent/{event_id} is not known")
    if digest(event) != event.get("hash"):
        raise journal_damage(UnreadableBlock(f"event {seq} does not match its hash"))
    written = event["written"]
    resource = {**event["resource"], "meta": {"versionId": "1", "lastUpdated": instant(written)}}
    return Version(AUDIT_EVENT, str(seq), 1, written, resource)
