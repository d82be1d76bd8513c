"""The audit journal: the durable record of the chain, one block document per group commit.

A block holds the consecutive events one writer made durable in one insert:
    {_id: seq_key(first), first, last, prev, hash, recorded_min, recorded_max,
     batch, writer, written, events: <JSON of [{_id, prev, hash, resource, recorded}, …]>}
`prev` is the hash before the block's first event and `hash` that of its last one, so the
blocks chain exactly as their events do. `batch`, `writer` and `written` are the same for every
event of a block and are stored once; `events_of` puts them back.

The events are one binary value holding their JSON (`recorded` as a FHIR instant), not nested
documents: nothing queries inside them, and the embedded database otherwise decodes, copies and
re-encodes every field of every event. On it a durable block of 8 events cost 1.5 ms of
database CPU nested against 1.0 ms packed. Blocks written nested before are still read.

That JSON is zlib-compressed (level 1). A block's events repeat the same codings, agents and
source, and each event's `prev` is the `hash` before it: a block of 8 read events shrinks from
12.0 kB to 1.3 kB, of 100 from 150 kB to 9 kB. An audit log grows with every access, so this
is most of its disk; and on the embedded database, which handles every byte in Python, an
audited read cost it 0.16–0.17 against 0.25–0.28 ms of CPU with 16 connections
(docs/performance.md). Blocks stored as plain JSON before are still read: JSON text starts
with `[`, a zlib stream never does.

Why blocks: an audited access waits for its group commit, and the commit's cost is the bulk of
what auditing adds to a read. On the embedded database one durable insert of a block of 16
events took 1.7 ms, against 4.9 ms for the same 16 events as 16 documents with their search
keys (w: majority, j: true; end to end: benchmarks/read_latency.py --audit both). The
per-event documents auditors search are built afterwards from the journal (projection.py).

The block `_id` is its first seq, and a writer only ever chains after the last event of a block
it read, so a writer with a stale head always collides with an existing block's `_id`: the
unique `_id` index is the compare-and-swap that keeps one total order across processes.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from bson import Binary
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from app.audit.chain import CHECKPOINTS, GENESIS, JOURNAL, digest, instant_text, millis
from app.audit.events import JsonDict

# Stored once per block, not per event.
BLOCK_FIELDS = ("batch", "writer", "written")
# The most events one block holds; probes of the `last` index rely on it.
MAX_BLOCK_EVENTS = 500
# Seqs covered by one range read of the journal.
WINDOW_EVENTS = 2_000
# zlib's fastest level: 9-17 times smaller on audit blocks, about 1 µs of CPU per event.
COMPRESSION_LEVEL = 1
# The most a block's events may inflate to: a document is at most 16 MiB compressed, and a
# tampered block must not make a reader inflate without bound.
MAX_EVENTS_BYTES = 64 * 1024 * 1024


def block_of(events: list[JsonDict]) -> JsonDict:
    """The journal document of consecutive chained events (from chain.link)."""
    if not 0 < len(events) <= MAX_BLOCK_EVENTS:
        raise ValueError(f"a journal block holds 1 to {MAX_BLOCK_EVENTS} events")
    first, last = events[0], events[-1]
    recorded = [event["recorded"] for event in events]
    return {
        "_id": first["_id"],
        "first": int(first["_id"]),
        "last": int(last["_id"]),
        "prev": first["prev"],
        "hash": last["hash"],
        "recorded_min": min(recorded),
        "recorded_max": max(recorded),
        **{field: first[field] for field in BLOCK_FIELDS},
        "events": packed(
            [{k: v for k, v in event.items() if k not in BLOCK_FIELDS} for event in events]
        ),
    }


class UnreadableBlock(ValueError):
    """A block whose events cannot be decoded: the journal was damaged or tampered with."""


def packed(events: list[JsonDict]) -> Binary:
    """A block's events as the one binary value it stores: their JSON, compressed."""
    return compressed(
        orjson.dumps([{**event, "recorded": instant_text(event["recorded"])} for event in events])
    )


def compressed(text: bytes) -> Binary:
    """JSON text as the audit collections store it (`inflated` reads it back)."""
    return Binary(zlib.compress(text, COMPRESSION_LEVEL))


def inflated(raw: bytes) -> bytes:
    """JSON text stored compressed, or (written before) as it is. Raises ValueError or
    zlib.error for anything else."""
    if raw[:1] == b"[":
        return raw
    inflater = zlib.decompressobj()
    text = inflater.decompress(raw, MAX_EVENTS_BYTES)
    if inflater.unconsumed_tail or inflater.unused_data or not inflater.eof:
        raise ValueError("the block's events are truncated or inflate past the limit")
    return text


def stored_events(block: JsonDict) -> list[JsonDict]:
    """A block's events as stored (without the block's shared fields). Raises UnreadableBlock."""
    raw = block.get("events")
    events: Any = raw  # a block written before events were packed holds them nested
    try:
        if isinstance(raw, bytes):
            events = orjson.loads(inflated(raw))
            for event in events:
                event["recorded"] = millis(datetime.fromisoformat(event["recorded"]))
    except (orjson.JSONDecodeError, zlib.error, TypeError, KeyError, ValueError):
        events = None
    if not isinstance(events, list) or not all(isinstance(event, dict) for event in events):
        raise UnreadableBlock(f"the events of block {block.get('_id')} cannot be read")
    return events


def events_of(block: JsonDict, stored: list[JsonDict] | None = None) -> list[JsonDict]:
    """The chained event documents of a block, each whole again; `stored` is the block's
    `stored_events` when the caller has decoded them already. Raises UnreadableBlock."""
    shared = {field: block.get(field) for field in BLOCK_FIELDS}
    events = stored if stored is not None else stored_events(block)
    return [{**event, **shared} for event in events]


async def read_head(
    journal: AsyncCollection[JsonDict],
    checkpoints: AsyncCollection[JsonDict],
    known: tuple[int, str] | None = None,
) -> tuple[int, str]:
    """(seq, hash) of the newest event; the latest checkpoint, or genesis, if none is left.

    `known` is a head read earlier: then only the blocks after it are looked at.
    """
    if known is not None:
        newer = await journal.find({"last": {"$gt": known[0]}}, {"last": 1, "hash": 1}).to_list(
            None
        )
        if not newer:
            return known
        newest = max(newer, key=lambda block: int(block["last"]))
        return int(newest["last"]), str(newest["hash"])
    # A purge inserts its checkpoint before it deletes the blocks behind it. Searched from an
    # older checkpoint, the deleted blocks look like the end of the chain, and a writer that
    # chained there would fork it: so a search counts only if the checkpoint did not move.
    while True:
        floor = await latest_checkpoint(checkpoints)
        head = await _head_after(journal, floor)
        if _same_checkpoint(floor, await latest_checkpoint(checkpoints)):
            if head is None:  # only if the journal lost blocks while we looked: verify reports it
                raise UnreadableBlock("the audit journal lost blocks while its head was read")
            return head


def _same_checkpoint(one: JsonDict | None, other: JsonDict | None) -> bool:
    return (one or {}).get("_id") == (other or {}).get("_id")


async def _head_after(
    journal: AsyncCollection[JsonDict], floor: JsonDict | None
) -> tuple[int, str] | None:
    """The newest journaled event after checkpoint `floor` (or the floor itself); None if the
    journal changed under the search in a way only a purge explains."""
    floor_head = (int(floor["through_seq"]), str(floor["anchor"])) if floor else (0, GENESIS)
    last = await newest_seq(journal, floor_head[0])
    if last is None:
        return floor_head
    # Blocks other writers append during the search can end it inside a block, on a seq that
    # is no block's last: take the newest block that holds it or ends soon after. An older
    # head than the newest is safe: chaining after it collides with the next block's _id.
    block = await journal.find_one(
        {"last": {"$gte": last, "$lt": last + MAX_BLOCK_EVENTS}},
        {"last": 1, "hash": 1},
        sort=[("last", DESCENDING)],
    )
    if block is None:
        return None
    return int(block["last"]), str(block["hash"])


async def recorded_through(journal: AsyncCollection[JsonDict], seq: int) -> datetime | None:
    """When event `seq`, a block's last, was recorded (None after a checkpoint, or if no block
    ends there)."""
    block = await journal.find_one({"last": seq}, {"recorded_max": 1})
    recorded = None if block is None else block.get("recorded_max")
    if not isinstance(recorded, datetime):
        return None
    return recorded if recorded.tzinfo is not None else recorded.replace(tzinfo=UTC)


async def _holds(journal: AsyncCollection[JsonDict], seq: int) -> bool:
    """Whether event `seq` is journaled: the block holding it ends within MAX_BLOCK_EVENTS."""
    found = await journal.find_one(
        {"last": {"$gte": seq, "$lt": seq + MAX_BLOCK_EVENTS}}, {"_id": 1}
    )
    return found is not None


async def newest_seq(journal: AsyncCollection[JsonDict], floor: int) -> int | None:
    """The newest journaled seq after `floor`, by a galloping then binary search.

    The embedded database answers a sort with no narrow filter by loading every document, and
    blocks are large; each probe here is a narrow range of the `last` index instead. Events
    after the floor are a contiguous run of seqs, so "is seq journaled" is true up to the head
    and false after it.
    """
    if not await _holds(journal, floor + 1):
        return None
    low, step = floor + 1, 1
    while await _holds(journal, low + step):
        low, step = low + step, step * 2
    high = low + step  # low is journaled, high is not
    while high - low > 1:
        middle = (low + high) // 2
        if await _holds(journal, middle):
            low = middle
        else:
            high = middle
    return low


async def latest_checkpoint(checkpoints: AsyncCollection[JsonDict]) -> JsonDict | None:
    found: JsonDict | None = await checkpoints.find_one({}, sort=[("through_seq", DESCENDING)])
    return found


async def checkpoint_seq(database: AsyncDatabase[Any]) -> int:
    found = await latest_checkpoint(database[CHECKPOINTS])
    return int(found["through_seq"]) if found else 0


async def blocks_after(
    database: AsyncDatabase[Any], seq: int, *, until: int | None = None
) -> AsyncIterator[JsonDict]:
    """The blocks holding events after `seq` (through `until`, default the head), in chain
    order. Read in narrow windows of the `last` index, for the reason given in newest_seq."""
    journal = database[JOURNAL]
    if until is None:
        until, _ = await read_head(journal, database[CHECKPOINTS])
    low = seq
    while low < until:
        high = min(low + WINDOW_EVENTS, until + MAX_BLOCK_EVENTS)
        blocks = (
            await journal.find({"last": {"$gt": low, "$lte": high}})
            .sort("last", ASCENDING)
            .to_list(None)
        )
        for block in blocks:
            yield block
        low = high


async def journal_events(
    database: AsyncDatabase[Any], after: int = 0, *, until: int | None = None
) -> AsyncIterator[JsonDict]:
    """Every journaled event with after < seq (<= until, default the head), in chain order."""
    async for _, event in located_events(database, after, until=until):
        yield event


async def located_events(
    database: AsyncDatabase[Any], after: int = 0, *, until: int | None = None
) -> AsyncIterator[tuple[JsonDict, JsonDict]]:
    """`journal_events`, each with the block holding it."""
    async for block in blocks_after(database, after, until=until):
        for event in events_of(block):
            seq = int(event["_id"])
            if seq > after and (until is None or seq <= until):
                yield block, event


async def journaled_event(database: AsyncDatabase[Any], seq: int) -> JsonDict | None:
    """Event `seq` as the journal holds it (None if it holds none). Raises UnreadableBlock."""
    return await anext(aiter(journal_events(database, seq - 1, until=seq)), None)


async def resources_of(database: AsyncDatabase[Any], documents: list[JsonDict]) -> None:
    """Give search-index documents (`_id`, `block`, `hash`; app/audit/search.py) their
    AuditEvent, from the journal.

    Each is read from the block the document names (one query for all of them), or, if that
    block does not hold it, looked up by its seq; either way the journal's event must hash to
    the document's `hash`. Raises UnreadableBlock when it is missing or does not: the journal
    or its index was damaged or tampered with, and an auditor must not get a silently
    different answer.
    """
    found: dict[str, JsonDict] = {}
    block_ids = sorted({str(doc["block"]) for doc in documents if doc.get("block")})
    if block_ids:
        async for block in database[JOURNAL].find({"_id": {"$in": block_ids}}):
            for held in events_of(block):
                found[str(held["_id"])] = held
    for doc in documents:
        seq_id = str(doc["_id"])
        event = found.get(seq_id)
        if event is None:
            seq = int(seq_id)
            event = await journaled_event(database, seq)
        if event is None or digest(event) != doc.get("hash"):
            raise UnreadableBlock(
                f"event {int(seq_id)} of the audit search index does not match the journal"
            )
        doc["resource"] = event["resource"]


async def head_seq(database: AsyncDatabase[Any]) -> int:
    seq, _ = await read_head(database[JOURNAL], database[CHECKPOINTS])
    return seq


async def ensure_journal_indexes(database: AsyncDatabase[Any]) -> None:
    # One entry per block, not per event: cheap on the request path, and what every range
    # read of the journal goes through.
    await database[JOURNAL].create_index([("last", ASCENDING)], name="last")
