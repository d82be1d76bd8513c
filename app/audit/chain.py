"""The hash chain: how audit events are laid out, serialised and hashed.

An event is the document
    {_id: seq, prev, hash, resource, recorded, batch, writer, written}
where `resource` is the AuditEvent (its id is the seq). `seq` numbers events 1, 2, 3 … with no
gaps, `prev` is the `hash` of event seq-1 (or of the retention checkpoint it follows), and
`hash` is SHA-256 over the canonical serialisation of every other field, `_id` included. So
changing, deleting, inserting or swapping events breaks the chain at the first place it was
touched.

Events are stored durably in the journal, one block document per group commit (see
app/audit/journal.py), and indexed for auditors afterwards, one index document per block
(block_index.py). Auditors get the AuditEvent itself from the journal, checked against the
event's hash: they see what the chain vouches for. The index is derived, never hashed, and
recomputed from the hashed events when the chain is verified.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from app.audit.events import JsonDict
from app.fhir.search.extract import build_index
from app.store.versions import instant

AUDIT_DATABASE_SUFFIX = "_audit"
# The per-event search index of versions before the block index (block_index.py): no longer
# written or read; retention still purges what an older version left there.
LEGACY_EVENT_INDEX = "AuditEvent"
# The field of a chained event that is not part of its hashed content.
UNHASHED_FIELDS = frozenset({"hash"})
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
# The auditors' index of the journal, one document per block (block_index.py), and its
# optional index for patient queries (log.ensure_indexes, search.py).
BLOCK_INDEX = "audit_block_index"
PATIENT_KEY = "s.patient"
PATIENT_INDEX = "patients_last"
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
    body = {k: v for k, v in document.items() if k not in UNHASHED_FIELDS}
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
    events: list[JsonDict],
    head_seq: int,
    head_hash: str,
    *,
    batch: str,
    writer: str,
    floor: datetime | None = None,
) -> list[JsonDict]:
    """Chained event documents for `events`, following the event (head_seq, head_hash).

    `recorded` never goes back along the chain: an event is recorded no earlier than the one
    before it (`floor`, the head's), so chain order is also `recorded` order and auditors'
    date-ordered searches page by seq (app/audit/search.py). An event built a moment before
    another but committed after it (two workers, two hosts, clocks apart) is recorded when the
    log took it; the difference is the commit wait, milliseconds."""
    written = millis(datetime.now(UTC))
    documents = []
    prev = head_hash
    for offset, event in enumerate(events, start=1):
        seq = head_seq + offset
        recorded = recorded_of(event)
        resource = {**event, "id": str(seq)}
        if floor is not None and recorded < floor:
            recorded = floor
            resource["recorded"] = instant_text(recorded)
        floor = recorded
        document: JsonDict = {
            "_id": seq_key(seq),
            "prev": prev,
            "resource": resource,
            "recorded": recorded,
            "batch": batch,
            "writer": writer,
            "written": written,
        }
        document["hash"] = digest(document)
        prev = document["hash"]
        documents.append(document)
    return documents
