"""AuditEvent builders: what a handler knows about an access, turned into R4 AuditEvents.

The shape follows IHE Basic Audit Log Patterns (BALP) for RESTful interactions: `type` rest,
`subtype` the restful-interaction code, agents for the client application, the user and the
server, `source` this server, an entity for the resource (version-specific) and one for each
patient. Only identifiers go in: never a resource body, never an error's diagnostics (both can
carry PHI). A search's query string is the one exception BALP requires (`entity.query`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from app.store.versions import instant

JsonDict = dict[str, Any]

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
HESTIA_INTERACTION = "urn:hestia:audit-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
SECURITY_ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
CLIENT_ID_SYSTEM = "urn:hestia:client-id"

# The R4 restful-interaction codes (http://hl7.org/fhir/R4/codesystem-restful-interaction.html)
# with the AuditEvent.action BALP gives them: searches and operations are "E" (execute).
RESTFUL_ACTIONS: dict[str, str] = {
    "read": "R",
    "vread": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "create": "C",
    "search-type": "E",
    "search-system": "E",
    "capabilities": "R",
    "transaction": "E",
    "batch": "E",
    "operation": "E",
}

SEARCHES = frozenset({"search-type", "search-system"})
MULTI_PATIENT = SEARCHES | {"history-type", "history-system"}


@dataclass(frozen=True)
class _Kind:
    type: JsonDict
    subtype: JsonDict
    action: str


def _coding(system: str, code: str, display: str) -> JsonDict:
    return {"system": system, "code": code, "display": display}


_REST_TYPE = _coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation")
_AUTH_TYPE = _coding(DCM, "110114", "User Authentication")
_IMPORT_TYPE = _coding(DCM, "110107", "Import")
_EXPORT_TYPE = _coding(DCM, "110106", "Export")
_AUDIT_LOG_USED = _coding(DCM, "110101", "Audit Log Used")
# Shared by every event built here, as the codings above are: events are serialised as they
# are built (app/audit/chain.link) and nothing changes one in place.
_CLIENT_ROLE = {"coding": [_coding(DCM, "110153", "Source Role ID")]}
_SERVER_ROLE = {"coding": [_coding(DCM, "110152", "Destination Role ID")]}
_HUMAN_USER = {"coding": [_coding(SECURITY_ROLE_TYPE, "humanuser", "human user")]}
_UNAUTHENTICATED = {"display": "unauthenticated client"}
_SYSTEM_OBJECT = _coding(ENTITY_TYPE, "2", "System Object")
_PERSON = _coding(ENTITY_TYPE, "1", "Person")
_DOMAIN_RESOURCE = _coding(OBJECT_ROLE, "4", "Domain Resource")
_QUERY = _coding(OBJECT_ROLE, "24", "Query")
_PATIENT = _coding(OBJECT_ROLE, "1", "Patient")
_JOB = _coding(OBJECT_ROLE, "20", "Job")


def _hestia(code: str) -> JsonDict:
    return _coding(HESTIA_INTERACTION, code, code)


# Interactions that are not FHIR REST: ingestion, OAuth, and operator commands. DICOM's audit
# event types (DCM) classify them; the Hestia code system says exactly which one it was.
OTHER_KINDS: dict[str, _Kind] = {
    "ingest": _Kind(_IMPORT_TYPE, _hestia("ingest"), "C"),
    "mllp": _Kind(_IMPORT_TYPE, _hestia("mllp"), "C"),
    "authorize": _Kind(_AUTH_TYPE, _hestia("authorize"), "E"),
    "login": _Kind(_AUTH_TYPE, _coding(DCM, "110122", "Login"), "E"),
    "token": _Kind(_AUTH_TYPE, _hestia("token"), "E"),
    "introspect": _Kind(_AUTH_TYPE, _hestia("introspect"), "E"),
    "revoke": _Kind(_AUTH_TYPE, _coding(DCM, "110123", "Logout"), "E"),
    "oauth": _Kind(_AUTH_TYPE, _hestia("oauth"), "E"),
    "audit-verify": _Kind(_AUDIT_LOG_USED, _hestia("audit-verify"), "R"),
    "audit-export": _Kind(_EXPORT_TYPE, _hestia("audit-export"), "R"),
    "audit-purge": _Kind(_AUDIT_LOG_USED, _hestia("audit-purge"), "D"),
    "admin": _Kind(_AUDIT_LOG_USED, _hestia("admin"), "E"),
}

INTERACTIONS = frozenset(RESTFUL_ACTIONS) | frozenset(OTHER_KINDS)


RESTFUL_KINDS: dict[str, _Kind] = {
    interaction: _Kind(_REST_TYPE, _coding(RESTFUL_INTERACTION, interaction, interaction), action)
    for interaction, action in RESTFUL_ACTIONS.items()
}


def kind_of(interaction: str) -> _Kind:
    known = RESTFUL_KINDS.get(interaction) or OTHER_KINDS.get(interaction)
    if known is None:
        raise ValueError(f"unknown audit interaction {interaction!r}")
    return known


@dataclass
class AuditFacts:
    """What a route handler knows about one access. Set it as `request.state.audit_facts`.

    `interaction` is a restful-interaction code (`read`, `search-type`, …) or one of
    `OTHER_KINDS` (`ingest`, `token`, …). `patients` are references `Patient/<id>` of every
    patient whose data the response carries (or the request touched). `status` and `peer` are
    filled in by the middleware from the response and the connection when left None.
    """

    interaction: str
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    patients: list[str] = field(default_factory=list)
    # The query string as received (no leading "?"); for searches it becomes entity.query.
    query: str | None = None
    # e.g. "$everything" for interaction "operation".
    operation: str | None = None
    client_id: str | None = None
    fhir_user: str | None = None
    jti: str | None = None
    peer: str | None = None
    status: int | None = None
    # Extra (name, value) pairs for entity.detail, for identifiers only (e.g. a message id).
    details: list[tuple[str, str]] = field(default_factory=list)
    recorded: datetime | None = None

    def with_agent(self, access: Any) -> AuditFacts:
        """Copy client_id / fhir_user / jti from an `AccessContext`-like object when unset."""
        if access is None:
            return self
        self.client_id = self.client_id or getattr(access, "client_id", None)
        self.fhir_user = self.fhir_user or getattr(access, "fhir_user", None)
        self.jti = self.jti or getattr(access, "jti", None)
        return self


@dataclass(frozen=True)
class AuditSource:
    """This server, as AuditEvent.source and as the server agent."""

    name: str
    site: str | None = None


def outcome_code(status: int | None) -> str:
    """R4 audit-event-outcome: 0 success, 4 minor failure (client), 8 serious (server)."""
    if status is None or status < 400:
        return "0"
    if status < 500:
        return "4"
    return "8"


def _patient_reference(value: str) -> str:
    return value if "/" in value else f"Patient/{value}"


def patients_of(facts: AuditFacts) -> list[str]:
    """The distinct patients touched, in first-seen order; a Patient read counts itself."""
    found = [_patient_reference(p) for p in facts.patients if p]
    if facts.resource_type == "Patient" and facts.resource_id:
        found.insert(0, f"Patient/{facts.resource_id}")
    return list(dict.fromkeys(found))


def _agents(facts: AuditFacts, source: AuditSource) -> list[JsonDict]:
    client: JsonDict = {
        "type": _CLIENT_ROLE,
        "requestor": facts.fhir_user is None,
    }
    if facts.client_id:
        client["who"] = {"identifier": {"system": CLIENT_ID_SYSTEM, "value": facts.client_id}}
    else:
        client["who"] = _UNAUTHENTICATED
    if facts.peer:
        # R4 network-type 1 is a machine name, 2 an IP address.
        kind = "2" if facts.peer.replace(".", "").replace(":", "").isalnum() else "1"
        client["network"] = {"address": facts.peer, "type": kind}
    agents = [client, _server_agent(source)]
    if facts.fhir_user:
        agents.append(
            {
                "type": _HUMAN_USER,
                "who": {"reference": facts.fhir_user},
                "requestor": True,
            }
        )
    if facts.jti:
        # BALP puts the token id on the agent that the token speaks for.
        agents[-1 if facts.fhir_user else 0]["policy"] = [facts.jti]
    return agents


def _resource_entity(facts: AuditFacts) -> JsonDict | None:
    if not facts.resource_type:
        return None
    reference = facts.resource_type
    if facts.resource_id:
        reference += f"/{facts.resource_id}"
        if facts.version_id:
            reference += f"/_history/{facts.version_id}"
    entity: JsonDict = {
        "what": {"reference": reference} if facts.resource_id else {"display": reference},
        "type": _SYSTEM_OBJECT,
        "role": _DOMAIN_RESOURCE,
    }
    return entity


def _query_entity(facts: AuditFacts) -> JsonDict:
    target = facts.resource_type or ""
    text = f"{target}?{facts.query or ''}"
    entity: JsonDict = {
        "type": _SYSTEM_OBJECT,
        "role": _QUERY,
        "query": base64.b64encode(text.encode()).decode("ascii"),
    }
    if facts.resource_type:
        entity["what"] = {"display": facts.resource_type}
    return entity


def _patient_entity(reference: str) -> JsonDict:
    return {
        "what": {"reference": reference},
        "type": _PERSON,
        "role": _PATIENT,
    }


def _details(facts: AuditFacts) -> list[JsonDict]:
    details = list(facts.details)
    if facts.operation:
        details.insert(0, ("operation", facts.operation))
    return [{"type": name, "valueString": value} for name, value in details]


def build_events(facts: AuditFacts, source: AuditSource) -> list[JsonDict]:
    """The AuditEvents for one access: one, or one per patient for a multi-patient search.

    BALP asks for a separate event per patient when a query returns several patients' data,
    so that "all accesses to patient X" never needs to unpack a shared event.
    """
    kind = kind_of(facts.interaction)
    recorded = instant(facts.recorded or datetime.now(UTC))
    patients = patients_of(facts)
    base: list[JsonDict] = []
    resource = _resource_entity(facts)
    if facts.interaction in SEARCHES:
        base.append(_query_entity(facts))
    elif resource is not None:
        base.append(resource)
    details = _details(facts)
    if details and base:
        base[0] = {**base[0], "detail": details}
    elif details:
        # Nothing else to hang them on (ingest, operator commands): the job itself.
        base.append({"type": _SYSTEM_OBJECT, "role": _JOB})
        base[0]["detail"] = details
    if facts.interaction in MULTI_PATIENT and len(patients) > 1:
        groups = [[p] for p in patients]
    else:
        groups = [patients]
    events = []
    for group in groups:
        # No id yet: the log gives each event its chain seq as id (app/audit/chain.link).
        event: JsonDict = {
            "resourceType": "AuditEvent",
            "type": kind.type,
            "subtype": [kind.subtype],
            "action": kind.action,
            "recorded": recorded,
            "outcome": outcome_code(facts.status),
            "agent": _agents(facts, source),
            "source": _source(source),
        }
        if facts.status is not None:
            event["outcomeDesc"] = f"HTTP {facts.status}"
        entities = base + [_patient_entity(p) for p in group]
        if entities:
            event["entity"] = entities
        events.append(event)
    return events


@lru_cache(maxsize=16)
def _server_agent(source: AuditSource) -> JsonDict:
    return {"type": _SERVER_ROLE, "who": {"display": source.name}, "requestor": False}


@lru_cache(maxsize=16)
def _source(source: AuditSource) -> JsonDict:
    out: JsonDict = {
        "observer": {"display": source.name},
        "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
    }
    if source.site:
        out["site"] = source.site
    return out


def event_patients(event: JsonDict) -> list[str]:
    """The patient references an event names (role 1), for indexing."""
    out = []
    for entity in event.get("entity", []):
        if entity.get("role", {}).get("code") == "1":
            reference = entity.get("what", {}).get("reference")
            if isinstance(reference, str):
                out.append(reference)
    return out
