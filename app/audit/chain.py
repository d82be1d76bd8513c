"""The hash chain: how audit events are laid out, serialised and hashed.

An event is the document
    {_id: seq, prev, hash, resource, recorded, batch, writer, written}
where `resource` is the AuditEvent (its id is the seq). `seq` numbers events 1, 2, 3 … with no
gaps, `prev` is the `hash` of event seq-1 (or of the retention checkpoint it follows), and
`hash` is SHA-256 over the canonical serialisation of every other field, `_id` included. So
changing, deleting, inserting or swapping events breaks the chain at the first place it was
touched.

Events are stored durably in the journal, one block document per group commit (see
app/audit/journal.py), and later indexed for auditors (projection.py): one document per event,
the shape of a FHIR store's current versions so that the ordinary search engine answers
auditors' AuditEvent searches, holding the event's fields but its `resource`, plus the derived
fields `compartments`, `s` (search keys), `deleted` and `block` (the `_id` of the journal block
holding it). The AuditEvent itself is read from the journal, checked against the event's hash
(journal.resources_of): auditors see what the chain vouches for, and the index costs the
database a third less per event (measured: 0.13 against 0.2 ms of database CPU per document).
The derived fields are not hashed: they are recomputed from the hashed `resource` when the
chain is verified. Index documents written before 2026-12-03 still hold the resource.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from app.audit.events import JsonDict, event_patients
from app.fhir.search.extract import build_index
from app.store.versions import instant

AUDIT_DATABASE_SUFFIX = "_audit"
# The search index of the journal, named like a FHIR store's current collection: the search
# engine reads it as one.
EVENTS = "AuditEvent"
# Fields of an indexed event that are derived from its resource, and so not hashed.
DERIVED_FIELDS = frozenset({"hash", "compartments", "s", "deleted", "block"})
# The AuditEvent search parameters auditors get (issue: date, patient, agent, entity, type,
# subtype, action, outcome, address, source); only their keys are extracted, to keep the cost
# of auditing every request low.
SEARCH_PARAMETERS = frozenset(
    {
        "date",
        "patient",
        "agent",
        "entity",
        "type",
        "subtype",
        "action",
        "outcome",
        "address",
        "source",
    }
)
# The durable record: one block of consecutive events per group commit.
JOURNAL = "audit_journal"
CHECKPOINTS = "audit_checkpoints"
GENESIS = "0" * 64


# Key variants kept for the audit log: plain values, date bounds, string prefixes and exact
# strings, identifiers. The `:text` prefix lists and `:contains` grams would double the cost of
# every audited request, so those modifiers are not offered on AuditEvent.
AUDIT_KEY_SUFFIXES = frozenset({"", "lo", "hi", "p", "x", "identifier"})
REFUSED_MODIFIERS = frozenset({"text", "contains"})


def search_keys(event: JsonDict) -> JsonDict:
    keys = build_index(event, text_search=False, only=SEARCH_PARAMETERS)
    return {k: v for k, v in keys.items() if k.partition(":")[2] in AUDIT_KEY_SUFFIXES}


def seq_key(seq: int) -> str:
    """The `_id` of event `seq`: zero-padded text, so that string order is sequence order and
    the documents have the string ids the search engine pages by, as a FHIR store's do."""
    return f"{seq:020d}"


def audit_database_name(main_database: str) -> str:
    """`hestia` → `hestia_audit`: the audit log lives beside, never inside, the FHIR data."""
    return f"{main_database}{AUDIT_DATABASE_SUFFIX}"


@lru_cache(maxsize=256)
def instant_text(value: datetime) -> str:
    """The FHIR instant of a datetime (naive means UTC). Cached: a block's events share its
    `written` time and mostly their `recorded` millisecond, and formatting them was a quarter
    of what chaining and packing a block cost."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return instant(value)


def _canonical_value(value: Any) -> Any:
    # Datetimes become FHIR instants so that naive and aware clients hash alike, and so that
    # MongoDB's millisecond precision cannot change the text.
    if isinstance(value, datetime):
        return instant_text(value)
    raise TypeError(f"{type(value).__name__} cannot be hashed")


def canonical(document: JsonDict) -> bytes:
    body = {k: v for k, v in document.items() if k not in DERIVED_FIELDS}
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
    """Chained event documents for `events`, following the event (head_seq, head_hash)."""
    written = millis(datetime.now(UTC))
    documents = []
    prev = head_hash
    for offset, event in enumerate(events, start=1):
        seq = head_seq + offset
        document: JsonDict = {
            "_id": seq_key(seq),
            "prev": prev,
            "resource": {**event, "id": str(seq)},
            "recorded": recorded_of(event),
            "batch": batch,
            "writer": writer,
            "written": written,
        }
        document["hash"] = digest(document)
        prev = document["hash"]
        documents.append(document)
    return documents


def derived_fields(event: JsonDict) -> JsonDict:
    """What the search index adds to a chained event: patients, search keys, not deleted."""
    resource = event["resource"]
    return {
        "compartments": event_patients(resource),
        "s": search_keys(resource),
        "deleted": False,
    }


def indexed(event: JsonDict, block: str) -> JsonDict:
    """The search-index document of a chained event held by journal block `block`:
    everything but the resource, plus the derived fields."""
    document = {k: v for k, v in event.items() if k != "resource"}
    document.update(derived_fields(event), block=block)
    return document
