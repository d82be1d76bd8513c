"""`hestia audit verify`: walk the chain and report the first broken link.

A link is broken when an event's seq is not the next one (a deletion), its `prev` is not the
previous event's hash (a deletion with renumbering, a reorder, or a rewritten predecessor), or
its hash does not match its content (a modification). After a retention purge the walk starts
at the latest checkpoint, which must itself be vouched for by the purge event in the chain.

The walk covers the journal, block by block, and the auditors' index (block_index.py) beside
it: each index document must be the one the journal block of the same `_id` gives, computed
again here. One that differs (changed keys would hide or invent an access in auditors'
searches), one missing between indexed neighbours, or one with no journal block behind it is
reported as broken at the block's first seq.

What no chain can show is the newest events being cut off together: compare the reported head
(seq and hash) with a copy kept elsewhere, e.g. the last NDJSON export sent to the SIEM.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from app.audit.block_index import Previous, index_block, previous_of
from app.audit.chain import BLOCK_INDEX, CHECKPOINTS, GENESIS, JOURNAL, digest, seq_key
from app.audit.events import JsonDict
from app.audit.journal import (
    UnreadableBlock,
    blocks_after,
    events_of,
    inflated,
    latest_checkpoint,
    stored_events,
)

PURGE_SUBTYPE = "audit-purge"
THROUGH_SEQ = "through-seq"
ANCHOR_HASH = "anchor-hash"


@dataclass
class VerifyReport:
    ok: bool
    checked: int
    first_seq: int | None = None
    last_seq: int | None = None
    head_hash: str | None = None
    broken_seq: int | None = None
    reason: str | None = None
    checkpoint_seq: int | None = None

    def summary(self) -> str:
        start = f" after checkpoint {self.checkpoint_seq}" if self.checkpoint_seq else ""
        if self.ok:
            return (
                f"OK: {self.checked} events{start}, seq {self.first_seq}..{self.last_seq}, "
                f"head {self.head_hash}"
            )
        return f"BROKEN at seq {self.broken_seq}: {self.reason} ({self.checked} events checked)"

    def broken(self, seq: int, reason: str) -> VerifyReport:
        self.ok = False
        self.broken_seq = seq
        self.reason = reason
        return self


def purge_marker(event: JsonDict) -> tuple[int, str] | None:
    """(through_seq, anchor) if `event` records a retention purge."""
    if not any(c.get("code") == PURGE_SUBTYPE for c in event.get("subtype", [])):
        return None
    values: dict[str, str] = {}
    for entity in event.get("entity", []):
        for detail in entity.get("detail", []):
            values[str(detail.get("type"))] = str(detail.get("valueString"))
    try:
        return int(values[THROUGH_SEQ]), values[ANCHOR_HASH]
    except (KeyError, ValueError):
        return None


async def verify_chain(database: AsyncDatabase[Any], *, batch_size: int = 1000) -> VerifyReport:
    checkpoint = await latest_checkpoint(database[CHECKPOINTS])
    start_after = int(checkpoint["through_seq"]) if checkpoint else 0
    prev = str(checkpoint["anchor"]) if checkpoint else GENESIS
    report = VerifyReport(ok=True, checked=0, checkpoint_seq=start_after or None)
    vouched = checkpoint is None
    marker = (start_after, prev)
    expected = start_after + 1
    index = _IndexWalk(database, start_after, batch_size)
    # The true newest block, by a full sort: a hole cut into the journal must not make the
    # walk stop early, as a probe for the head could.
    newest = await database[JOURNAL].find_one({}, {"last": 1}, sort=[("last", DESCENDING)])
    until = int(newest["last"]) if newest is not None else start_after
    async for block in blocks_after(database, start_after, until=until):
        try:
            stored = stored_events(block)
        except UnreadableBlock:
            first = block.get("first")
            return report.broken(
                expected,
                f"the events of the journal block starting at event {first} cannot be read",
            )
        failure = _broken_block(block, stored, expected, prev)
        if failure is not None:
            return report.broken(expected, failure)
        failure = await index.check(block, stored)
        if failure is not None:
            return report.broken(int(block["first"]), failure)
        for event in events_of(block, stored):
            seq = int(event["_id"])
            if seq <= start_after:
                continue
            failure = _broken_link(event, expected, prev)
            if failure is not None:
                return report.broken(seq if seq == expected else expected, failure)
            if not vouched and purge_marker(event.get("resource", {})) == marker:
                vouched = True
            if report.first_seq is None:
                report.first_seq = seq
            report.last_seq = seq
            report.checked += 1
            prev = event["hash"]
            expected = seq + 1
    report.head_hash = prev if report.checked else None
    extra = await index.leftover()
    if extra is not None:
        return report.broken(
            extra, f"events from {extra} are in the search index but not in the journal"
        )
    if not vouched:
        return report.broken(
            start_after + 1,
            f"the checkpoint through seq {start_after} is not vouched for by a purge event "
            "in the chain",
        )
    return report


def _broken_block(block: JsonDict, events: list[JsonDict], expected: int, prev: str) -> str | None:
    first = int(block.get("first", 0))
    if block.get("_id") != seq_key(first):
        return f"the journal block starting at event {first} was moved (its _id is not {first})"
    if first > expected:
        return f"event {expected} is missing (the next stored event is {first})"
    if not events or [int(e["_id"]) for e in events] != list(
        range(first, int(block.get("last", 0)) + 1)
    ):
        return f"the journal block starting at event {first} does not hold events {first}.."
    if first == expected and block.get("prev") != prev:
        return (
            f"event {first} does not follow the event before it (prev hash mismatch: "
            "an event was deleted, reordered or rewritten)"
        )
    if block.get("hash") != events[-1].get("hash"):
        return f"the journal block ending at event {block.get('last')} was modified"
    return None


def _broken_link(event: JsonDict, expected: int, prev: str) -> str | None:
    seq = int(event["_id"])
    if seq != expected:
        return f"event {expected} is missing (the next stored event is {seq})"
    if event.get("prev") != prev:
        return (
            f"event {seq} does not follow the event before it (prev hash mismatch: "
            "an event was deleted, reordered or rewritten)"
        )
    if digest(event) != event.get("hash"):
        return f"event {seq} was modified (its hash does not match its content)"
    return None


class _IndexWalk:
    """The block index, walked in step with the journal."""

    def __init__(self, database: AsyncDatabase[Any], after: int, batch_size: int) -> None:
        self._cursor = (
            database[BLOCK_INDEX]
            .find({"_id": {"$gt": seq_key(after)}})
            .sort("_id", ASCENDING)
            .batch_size(batch_size)
        )
        self._documents: AsyncIterator[JsonDict] = aiter(self._cursor)
        self._next: JsonDict | None = None
        self._ended = False
        self._previous: Previous | None = None

    async def _peek(self) -> JsonDict | None:
        if self._next is None and not self._ended:
            try:
                self._next = await anext(self._documents)
            except StopAsyncIteration:
                self._ended = True
        return self._next

    async def check(self, block: JsonDict, stored: list[JsonDict]) -> str | None:
        """Why the index document of journal `block` is wrong, if it is; None if it is right
        or not built yet (the index is a prefix of the journal)."""
        first, last = int(block["first"]), int(block["last"])
        seed = self._previous is None
        expected = index_block(block, self._previous, stored)
        document = await self._peek()
        if seed and document is not None and document.get("_id") == block["_id"]:
            # The first block after a retention checkpoint was indexed when the blocks before
            # it still existed: its in-order stretch may begin before the checkpoint.
            stored_run = document.get("run")
            if isinstance(stored_run, int) and stored_run <= expected["run"] == first:
                expected["run"] = stored_run
        self._previous = previous_of(expected)
        if document is None:
            return None
        if document.get("_id") != block["_id"]:
            indexed = str(document.get("_id"))
            if indexed > str(block["_id"]):
                return f"events {first}..{last} are missing from the search index"
            return f"events from {int(indexed)} are in the search index but not in the journal"
        self._next = None
        if document.get("hash") != block["hash"]:
            return f"events {first}..{last} were modified in the search index"
        # The entries compared as JSON, not as stored: compressed or not, by this zlib or another.
        altered = f"events {first}..{last} have altered search keys in the search index"
        try:
            indexed_now = {**document, "events": inflated(bytes(document.get("events") or b""))}
        except (ValueError, zlib.error):
            return altered
        if indexed_now != {**expected, "events": inflated(bytes(expected["events"]))}:
            return altered
        return None

    async def leftover(self) -> int | None:
        document = await self._peek()
        return int(document["_id"]) if document is not None else None
