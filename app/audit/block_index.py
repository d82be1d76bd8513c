"""The auditors' index of the journal: one document per journal block.

Each document holds, for the events of one block (app/audit/journal.py):
    {_id: the block's _id, first, last, hash, run, recorded_min, recorded_max,
     compartments: <every patient the block's events name>,
     s: <every search key of the block's events, per parameter>,
     events: <JSON of [[seq, hash, compartments, keys], …], one entry per event>}
The per-event entries are compressed as the journal's events are (journal.packed): for a block
of 8 read events 5.1 kB of keys become 0.8 kB, which was most of the document's size.

`compartments` and `s` are the union of the events' own, so a filter made of positive
conditions (equalities, ranges, presence) that one event meets is met by its block: the
database picks the blocks that may hold a match, and the app matches each of their events
exactly on its own keys (app/audit/search.py). Against one document per event this costs the
database about a sixteenth per event (2.5 against 41 µs, measured on the embedded server) and
the indexer a third (keys are computed once per distinct element value, not per event).

`run` is the first seq of the stretch of the chain, up to and including this block, whose
events are in `recorded` order. The writer keeps `recorded` from going back along the chain
(chain.link), so on a chain written since then it is the seq after the retention checkpoint;
older events were stamped when built and may be a few milliseconds out of order. Date-ordered
searches page by seq only where the stretch they read is in order.

Everything here is derived from the journal, so `hestia audit verify` recomputes each document
and reports one that differs.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from itertools import pairwise
from typing import Any, NamedTuple

import orjson

from app.audit.chain import search_keys, seq_key
from app.audit.events import JsonDict, event_patients
from app.audit.journal import compressed, events_of, inflated

# Elements whose values are the same from one event to the next (the server, the kind of
# access, the client) hit the cache; `recorded` changes every millisecond but repeats within one.
_KEY_CACHE_ENTRIES = 4096


# Not read by any AuditEvent search parameter.
_NOT_KEYED = frozenset({"resourceType", "id", "outcomeDesc"})


class Previous(NamedTuple):
    """What indexing a block needs of the block before it in the chain."""

    last: int
    recorded_max: datetime
    run: int


class IndexedEvent(NamedTuple):
    seq: int
    hash: str
    compartments: list[str]
    keys: dict[str, list[Any]]


@lru_cache(maxsize=_KEY_CACHE_ENTRIES)
def _element_keys(name: str, value_json: bytes) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    element = {"resourceType": "AuditEvent", name: orjson.loads(value_json)}
    return tuple((key, tuple(values)) for key, values in search_keys(element).items())


def event_keys(resource: JsonDict) -> dict[str, list[Any]]:
    """The search keys of an AuditEvent, element by element.

    Every AuditEvent search parameter's expression reads one top-level element per branch
    (`patient` reads agent.who and entity.what), so the keys of the whole event are the
    union of each element's; tests/audit/test_block_search.py checks that they are equal."""
    merged: dict[str, list[Any]] = {}
    for name, value in resource.items():
        if name in _NOT_KEYED:
            continue
        for key, values in _element_keys(name, orjson.dumps(value)):
            have = merged.get(key)
            if have is None:
                merged[key] = list(values)
            else:  # a key two elements give (patient): rare, and short
                have.extend(v for v in values if v not in have)
    return merged


def _union(lists: Iterable[Iterable[Any]]) -> list[Any]:
    found: dict[Any, None] = {}
    for values in lists:
        found.update(dict.fromkeys(values))
    return list(found)


def index_block(
    block: JsonDict, previous: Previous | None, stored: list[JsonDict] | None = None
) -> JsonDict:
    """The index document of a journal block (raises journal.UnreadableBlock), given the
    index of the block before it (None after a retention checkpoint or at genesis), and the
    block's `stored_events` when the caller has decoded them already."""
    events = events_of(block, stored)
    indexed = [
        IndexedEvent(
            int(event["_id"]),
            str(event["hash"]),
            event_patients(event["resource"]),
            event_keys(event["resource"]),
        )
        for event in events
    ]
    recorded: list[datetime] = [event["recorded"] for event in events]
    first, last = int(block["first"]), int(block["last"])
    in_order = all(a <= b for a, b in pairwise(recorded))
    if not in_order:
        run = last + 1  # no stretch in order reaches past this block
    elif previous is None or previous.last != first - 1 or recorded[0] < previous.recorded_max:
        run = first
    else:
        run = previous.run
    keys: dict[str, dict[Any, None]] = {}
    for event in indexed:
        for name, values in event.keys.items():
            keys.setdefault(name, {}).update(dict.fromkeys(values))
    return {
        "_id": block["_id"],
        "first": first,
        "last": last,
        "hash": block["hash"],
        "run": run,
        "recorded_min": min(recorded),
        "recorded_max": max(recorded),
        "compartments": _union(event.compartments for event in indexed),
        "s": {name: list(values) for name, values in keys.items()},
        "events": compressed(orjson.dumps([list(event) for event in indexed])),
    }


def previous_of(document: JsonDict) -> Previous:
    recorded: datetime = document["recorded_max"]
    if recorded.tzinfo is None:  # a client that reads datetimes naive: they are UTC
        recorded = recorded.replace(tzinfo=UTC)
    return Previous(int(document["last"]), recorded, int(document["run"]))


def indexed_events(document: JsonDict) -> list[IndexedEvent]:
    """The per-event entries of an index document. ValueError if they cannot be read."""
    try:
        entries = orjson.loads(inflated(document["events"]))
        return [IndexedEvent(int(s), str(h), list(c), dict(k)) for s, h, c, k in entries]
    except (KeyError, TypeError, ValueError, zlib.error, orjson.JSONDecodeError) as exc:
        raise ValueError(f"the index of block {document.get('_id')} cannot be read") from exc


def event_document(event: IndexedEvent, block_id: str) -> JsonDict:
    """An event as the search engine sees a stored resource: its keys, its patients, and what
    app/audit/journal.resources_of needs to read it from the journal."""
    return {
        "_id": seq_key(event.seq),
        "s": event.keys,
        "compartments": event.compartments,
        "deleted": False,
        "block": block_id,
        "hash": event.hash,
    }
