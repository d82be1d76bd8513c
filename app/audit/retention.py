"""`hestia audit purge`: drop events past retention, as one whole prefix of the chain.

The purge never cuts the chain in the middle. It removes events 1..K, where K is the last seq
before the oldest event still inside retention, so what remains is one unbroken segment. Before
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

from app.audit.chain import CHECKPOINTS, EVENTS, millis, seq_key
from app.audit.events import AuditFacts, AuditSource, build_events
from app.audit.log import AuditLog, latest_checkpoint
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
    events = database.get_collection(EVENTS, write_concern=log.write_concern)
    if through is None or through <= floor:
        # A run that stopped after its checkpoint left events behind it: finish that deletion.
        leftover = await events.delete_many({"_id": {"$lte": seq_key(floor)}}) if floor else None
        return PurgeReport(None, leftover.deleted_count if leftover else 0, None)
    anchor_doc = await database[EVENTS].find_one({"_id": seq_key(through)}, {"hash": 1})
    if anchor_doc is None:
        raise PurgeRefused(f"event {through} vanished during the purge")
    anchor = str(anchor_doc["hash"])

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
    deleted = await events.delete_many({"_id": {"$lte": seq_key(through)}})
    return PurgeReport(through, deleted.deleted_count, event_seq)


async def _last_expired_seq(database: AsyncDatabase[Any], cutoff: datetime) -> int | None:
    """The largest K such that every event up to K was recorded before `cutoff`."""
    events = database[EVENTS]
    first_kept = await events.find_one(
        {"recorded": {"$gte": cutoff}}, {"_id": 1}, sort=[("_id", ASCENDING)]
    )
    if first_kept is not None:
        return int(first_kept["_id"]) - 1
    newest = await events.find_one({}, {"_id": 1}, sort=[("_id", DESCENDING)])
    return int(newest["_id"]) if newest is not None else None


async def checkpoint_seq(database: AsyncDatabase[Any]) -> int | None:
    found = await latest_checkpoint(database[CHECKPOINTS])
    return int(found["through_seq"]) if found else None
