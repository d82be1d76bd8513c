"""`hestia audit purge`: drop events past retention, as one whole prefix of the chain.

The purge never cuts the chain in the middle. It removes events 1..K, where K ends the last
journal block before the oldest block holding an event still inside retention, so what remains
is one unbroken segment of whole blocks. Before
deleting it
  1. verifies the whole chain (a purge must not wipe the evidence of tampering),
  2. appends a purge AuditEvent naming K and the hash of event K (the anchor), durably,
  3. stores a checkpoint {through_seq: K, anchor},
and only then deletes. `verify` starts from the checkpoint, and accepts the checkpoint only if
the chained purge event vouches for it, so a forged checkpoint cannot hide a deleted prefix.
A crash between the steps leaves a verifiable log; running purge again finishes the job.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from app.audit.chain import BLOCK_INDEX, CHECKPOINTS, JOURNAL, LEGACY_EVENT_INDEX, millis, seq_key
from app.audit.events import AuditFacts, AuditSource, build_events
from app.audit.log import AuditLog
from app.audit.verify import ANCHOR_HASH, THROUGH_SEQ, verify_chain

MIN_RETENTION_DAYS = 1


class PurgeRefused(Exception):
    """The purge would be unsafe (broken chain, too short a retention)."""


@dataclass
class PurgeReport:
    through_seq: int | None
    purged: int
    purge_event_seq: int | None

    def summary(self) -> str:
        if self.through_seq is None:
            return "nothing to purge"
        return (
            f"purged {self.purged} events through seq {self.through_seq}; "
            f"the purge is audit event {self.purge_event_seq}"
        )


async def purge(
    database: AsyncDatabase[Any],
    log: AuditLog,
    source: AuditSource,
    *,
    retention_days: int,
    actor: AuditFacts | None = None,
    now: datetime | None = None,
) -> PurgeReport:
    """Purge events recorded more than `retention_days` ago; `log` must be running."""
    if retention_days < MIN_RETENTION_DAYS:
        raise PurgeRefused(f"retention must be at least {MIN_RETENTION_DAYS} day")
    report = await verify_chain(database)
    if not report.ok:
        raise PurgeRefused(f"the chain is broken, not purging: {report.summary()}")
    cutoff = millis((now or datetime.now(UTC)) - timedelta(days=retention_days))
    through = await _last_expired_seq(database, cutoff)
    floor = report.checkpoint_seq or 0
    if through is None or through <= floor:
        # A run that stopped after its checkpoint left events behind it: finish that deletion.
        leftover = await _delete_through(database, log, floor) if floor else 0
        return PurgeReport(None, leftover, None)
    anchor_block = await database[JOURNAL].find_one(
        {"_id": {"$lte": seq_key(through)}}, {"last": 1, "hash": 1}, sort=[("_id", DESCENDING)]
    )
    if anchor_block is None or int(anchor_block["last"]) != through:
        raise PurgeRefused(f"event {through} vanished during the purge")
    anchor = str(anchor_block["hash"])

    facts = replace(actor) if actor is not None else AuditFacts("audit-purge")
    facts.interaction = "audit-purge"
    facts.details = [
        *facts.details,
        (THROUGH_SEQ, str(through)),
        (ANCHOR_HASH, anchor),
        ("cutoff", cutoff.isoformat()),
    ]
    facts.status = facts.status or 200
    event_seq = (await log.append_all(build_events(facts, source)))[0]

    checkpoints = database.get_collection(CHECKPOINTS, write_concern=log.write_concern)
    await checkpoints.insert_one(
        {
            "_id": through,
            "through_seq": through,
            "anchor": anchor,
            "cutoff": cutoff,
            "purge_event_seq": event_seq,
            "at": millis(datetime.now(UTC)),
        }
    )
    purged = await _delete_through(database, log, through)
    return PurgeReport(through, purged, event_seq)


async def _delete_through(database: AsyncDatabase[Any], log: AuditLog, through: int) -> int:
    """Delete the journal blocks and index documents of events 1..through; how many events."""
    journal = database.get_collection(JOURNAL, write_concern=log.write_concern)
    purged = 0
    async for block in journal.find({"_id": {"$lte": seq_key(through)}}, {"first": 1, "last": 1}):
        purged += int(block["last"]) - int(block["first"]) + 1
    # The index first: an index document never outlives the journal block it came from.
    # (`through` is a block's last event, so no block index document straddles it.)
    for name in (BLOCK_INDEX, LEGACY_EVENT_INDEX):
        index = database.get_collection(name, write_concern=log.write_concern)
        await index.delete_many({"_id": {"$lte": seq_key(through)}})
    await journal.delete_many({"_id": {"$lte": seq_key(through)}})
    return purged


async def _last_expired_seq(database: AsyncDatabase[Any], cutoff: datetime) -> int | None:
    """The largest block end K such that every event up to K was recorded before `cutoff`."""
    journal = database[JOURNAL]
    first_kept = await journal.find_one(
        {"recorded_max": {"$gte": cutoff}}, {"first": 1}, sort=[("_id", ASCENDING)]
    )
    if first_kept is not None:
        return int(first_kept["first"]) - 1
    newest = await journal.find_one({}, {"last": 1}, sort=[("_id", DESCENDING)])
    return int(newest["last"]) if newest is not None else None
