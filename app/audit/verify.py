"""`hestia audit verify`: walk the chain and report the first broken link.

A link is broken when an event's seq is not the next one (a deletion), its `prev` is not the
previous event's hash (a deletion with renumbering, a reorder, or a rewritten predecessor), or
its hash does not match its content (a modification). After a retention purge the walk starts
at the latest checkpoint, which must itself be vouched for by the purge event in the chain.

What no chain can show is the newest events being cut off together: compare the reported head
(seq and hash) with a copy kept elsewhere, e.g. the last NDJSON export sent to the SIEM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from app.audit.chain import CHECKPOINTS, EVENTS, GENESIS, digest, seq_key
from app.audit.events import JsonDict
from app.audit.log import latest_checkpoint

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
    cursor = (
        database[EVENTS]
        .find({"_id": {"$gt": seq_key(start_after)}})
        .sort("_id", ASCENDING)
        .batch_size(batch_size)
    )
    async for document in cursor:
        seq = int(document["_id"])
        failure = _broken_link(document, expected, prev)
        if failure is not None:
            report.ok = False
            report.broken_seq = expected if seq != expected else seq
            report.reason = failure
            return report
        if not vouched and purge_marker(document.get("resource", {})) == marker:
            vouched = True
        if report.first_seq is None:
            report.first_seq = seq
        report.last_seq = seq
        report.checked += 1
        prev = document["hash"]
        expected = seq + 1
    report.head_hash = prev if report.checked else None
    if not vouched:
        report.ok = False
        report.broken_seq = start_after + 1
        report.reason = (
            f"the checkpoint through seq {start_after} is not vouched for by a purge event "
            "in the chain"
        )
    return report


def _broken_link(document: JsonDict, expected: int, prev: str) -> str | None:
    seq = int(document["_id"])
    if seq != expected:
        return f"event {expected} is missing (the next stored event is {seq})"
    if document.get("prev") != prev:
        return (
            f"event {seq} does not follow the event before it (prev hash mismatch: "
            "an event was deleted, reordered or rewritten)"
        )
    if digest(document) != document.get("hash"):
        return f"event {seq} was modified (its hash does not match its content)"
    return None
