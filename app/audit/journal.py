"""The audit journal: the durable record of the chain, one block document per group commit.

A block holds the consecutive events one writer made durable in one insert:
    {_id: seq_key(first), first, last, prev, hash, recorded_min, recorded_max,
     batch, writer, written, events: [{_id, prev, hash, resource, recorded}, …]}
`prev` is the hash before the block's first event and `hash` that of its last one, so the
blocks chain exactly as their events do. `batch`, `writer` and `written` are the same for every
event of a block and are stored once; `events_of` puts them back.

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

from collections.abc import AsyncIterator
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from app.audit.chain import CHECKPOINTS, GENESIS, JOURNAL, seq_key
from app.audit.events import JsonDict

# Stored once per block, not per event.
BLOCK_FIELDS = ("batch", "writer", "written")


def block_of(events: list[JsonDict]) -> JsonDict:
    """The journal document of consecutive chained events (from chain.link)."""
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
        "events": [{k: v for k, v in event.items() if k not in BLOCK_FIELDS} for event in events],
    }


def events_of(block: JsonDict) -> list[JsonDict]:
    """The chained event documents of a block, each whole again."""
    shared = {field: block.get(field) for field in BLOCK_FIELDS}
    return [{**event, **shared} for event in block.get("events", [])]


async def read_head(
    journal: AsyncCollection[JsonDict], checkpoints: AsyncCollection[JsonDict]
) -> tuple[int, str]:
    """(seq, hash) of the newest event; the latest checkpoint, or genesis, if none is left."""
    newest = await journal.find_one({}, {"last": 1, "hash": 1}, sort=[("_id", DESCENDING)])
    if newest is not None:
        return int(newest["last"]), str(newest["hash"])
    checkpoint = await latest_checkpoint(checkpoints)
    if checkpoint is not None:
        return int(checkpoint["through_seq"]), str(checkpoint["anchor"])
    return 0, GENESIS


async def latest_checkpoint(checkpoints: AsyncCollection[JsonDict]) -> JsonDict | None:
    found: JsonDict | None = await checkpoints.find_one({}, sort=[("through_seq", DESCENDING)])
    return found


async def checkpoint_seq(database: AsyncDatabase[Any]) -> int:
    found = await latest_checkpoint(database[CHECKPOINTS])
    return int(found["through_seq"]) if found else 0


async def blocks_after(
    database: AsyncDatabase[Any], seq: int, *, batch_size: int = 100
) -> AsyncIterator[JsonDict]:
    """The blocks holding events after `seq`, in chain order (the first may start before)."""
    journal = database[JOURNAL]
    holding = await journal.find_one(
        {"_id": {"$lte": seq_key(seq + 1)}}, {"_id": 1}, sort=[("_id", DESCENDING)]
    )
    start = holding["_id"] if holding is not None else seq_key(0)
    cursor = journal.find({"_id": {"$gte": start}}).sort("_id", ASCENDING).batch_size(batch_size)
    async for block in cursor:
        if int(block.get("last", 0)) > seq:
            yield block


async def journal_events(database: AsyncDatabase[Any], after: int = 0) -> AsyncIterator[JsonDict]:
    """Every journaled event with seq > `after`, in chain order."""
    async for block in blocks_after(database, after):
        for event in events_of(block):
            if int(event["_id"]) > after:
                yield event


async def head_seq(database: AsyncDatabase[Any]) -> int:
    seq, _ = await read_head(database[JOURNAL], database[CHECKPOINTS])
    return seq
