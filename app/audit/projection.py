"""The auditors' index of the audit log, derived from the journal: one document per block.

Auditors search AuditEvents by patient, date, agent …; app/audit/search.py answers those
searches from index documents built by app/audit/block_index.py, one per journal block.
Building them on the request path would add to what auditing costs every read, so they are
derived from the journal afterwards:

- all of the backlog when the writer of this process has been quiet for a moment, or under
  light load (`follow`, `Pacing.due`);
- under heavy load, once the backlog passes `max_backlog` events, back down to half of it:
  bursts are indexed after they pass. Should load outrun the indexing, appends wait once the
  backlog passes twice the bound (AuditLog.hold): sustained load pays for its indexing as it
  goes, and the backlog cannot grow without bound (`benchmarks/audit_overhead.py` reports
  the request-path cost and the sustained one);
- always before an auditor's read or search is answered (`catch_up`), so auditors never miss
  an event that was durable when they asked. The backlog bound is what bounds their wait.

The index is a contiguous prefix of the journal: blocks are indexed in chain order, ordered,
and an insert that meets a block another process indexed first stops there, so what is
indexed never has holes; the next block to index is the one after the newest indexed one.
Everything here is re-derivable from the journal, and `hestia audit verify` checks each index
document against it (a changed, forged or deleted one is reported like a broken link).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pymongo import WriteConcern
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from app.audit.block_index import Previous, index_block, previous_of
from app.audit.chain import BLOCK_INDEX
from app.audit.journal import MAX_BLOCK_EVENTS, blocks_after, checkpoint_seq, head_seq, newest_seq
from app.tasks import cancel_and_wait

if TYPE_CHECKING:
    from app.audit.log import AuditLog

log = logging.getLogger("hestia.audit")

DUPLICATE_KEY = 11000


class AuditIndex:
    """Brings the block index of one audit database up to date with its journal."""

    def __init__(self, database: AsyncDatabase[Any], *, chunk: int = 1_500) -> None:
        self.database = database
        # Events per pass. A pass reads up to a block's length past them (the block that
        # straddles their end), so up to 1,500 it reads one window of the journal: one find.
        self.chunk = chunk
        # Rebuildable from the journal, so one acknowledgement is enough.
        self.blocks = database.get_collection(BLOCK_INDEX, write_concern=WriteConcern(w=1))
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.indexed_through = 0
        # Whether `indexed_through` is known to be the watermark: it is after this process's
        # own insert, until one meets a block another process indexed first.
        self._trusted = False
        self._previous: Previous | None = None

    async def watermark(self) -> int:
        """The newest indexed seq (or the purge checkpoint, or 0).

        The index holds a contiguous run of blocks after the checkpoint, so "is seq indexed"
        is true up to the watermark and false after it. From a watermark known here, the
        blocks indexed since (by another process) are one narrow range of the `last` index;
        from none, it is found by probes of that index (journal.newest_seq). Each find costs
        the embedded server about a millisecond before it reads anything, and a probe per
        step of a galloping search, every pass, cost it a third of a core under load."""
        floor = max(self.indexed_through, await checkpoint_seq(self.database))
        if self.indexed_through and floor == self.indexed_through:
            newer = self.blocks.find({"last": {"$gt": floor}}, {"last": 1})
            newest = max([int(block["last"]) async for block in newer], default=None)
        else:
            newest = await newest_seq(self.blocks, floor)
        self.indexed_through = floor if newest is None else newest
        self._trusted = True
        return self.indexed_through

    async def previous(self, seq: int) -> Previous | None:
        """The index of the block ending at `seq` (None if there is none: a checkpoint)."""
        if self._previous is not None and self._previous.last == seq:
            return self._previous
        found = await self.blocks.find_one({"last": seq}, {"last": 1, "recorded_max": 1, "run": 1})
        return None if found is None else previous_of(found)

    async def catch_up(self, limit: int | None = None, *, indexer: bool = False) -> int:
        """Index journaled events not indexed yet (about `limit`); returns how many.

        The host's `indexer` goes on from the watermark its own inserts set (a block another
        process indexed first ends its pass on the duplicate). Anyone else, an auditor's
        search in a worker, reads the watermark first: its own may be far behind the
        indexer's, and a pass from there would build a chunk of blocks only to meet them."""
        async with self._lock:
            if not indexer:
                self._trusted = False
            done = 0
            while limit is None or done < limit:
                added, finished = await self._index_some(
                    self.chunk if limit is None else min(self.chunk, limit - done)
                )
                done += added
                if finished:
                    break
            return done

    async def _index_some(self, count: int) -> tuple[int, bool]:
        """Index the blocks that start within the next `count` events; (events indexed, True
        if nothing is left to index)."""
        after = self.indexed_through if self._trusted else await self.watermark()
        previous = await self.previous(after)
        documents = []
        # Read far enough for the block that starts within `count` events but ends after them.
        reach = after + count + MAX_BLOCK_EVENTS
        async for block in blocks_after(self.database, after, until=reach):
            if int(block["first"]) > after + count:
                break
            if int(block["first"]) <= after:
                continue  # only when a block was inserted over the watermark: verify reports it
            document = index_block(block, previous)
            documents.append(document)
            previous = previous_of(document)
        if not documents:
            return 0, True
        try:
            await self.blocks.insert_many(documents, ordered=True)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            # Another process indexed some of these first: carry on after the one it did.
            inserted = int(exc.details.get("nInserted", 0))
            self.indexed_through = int(documents[inserted]["last"])
            self._previous = None
            self._trusted = False
            return _events(documents[:inserted]), False
        self.indexed_through = int(documents[-1]["last"])
        self._previous = previous
        # Every block starting within `count` events was read, so fewer events than that
        # means the end of the journal as it was read. (Chasing the blocks appended meanwhile
        # at once, a pass at a time, doubled the database's work per audited read under load.)
        return _events(documents), self.indexed_through - after < count

    # -- in the background, behind this process's writer ---------------------------------

    def follow(
        self,
        writer: AuditLog,
        *,
        quiet_s: float = 0.5,
        interval_s: float = 0.5,
        light: int = 50,
        max_backlog: int = 2_000,
    ) -> None:
        """Index in the background, as `Pacing.due` says, checked every `interval_s`."""
        self._task = asyncio.create_task(
            self._follow(writer, Pacing(quiet_s, light, max_backlog), interval_s),
            name="audit-index",
        )

    async def guard(
        self, writer: AuditLog, *, interval_s: float = 0.5, max_backlog: int = 2_000
    ) -> None:
        """Index nothing here (an indexer process does, app/audit/indexer.py), but keep its
        backlog bounded as `follow` does: appends wait while it is past twice `max_backlog`."""
        history = await head_seq(self.database)
        self._task = asyncio.create_task(
            self._guard(writer, Pacing(max_backlog=max_backlog), interval_s, history),
            name="audit-guard",
        )

    async def _guard(
        self, writer: AuditLog, pacing: Pacing, interval_s: float, history: int
    ) -> None:
        """Hold appends past twice the bound, and let them go once the index is back under the
        bound itself (not just under twice it, or load at the bound would flap), looking
        often while they wait.

        Events journaled before this server started are not this load's to pay for: a store
        whose index is new (an upgrade from the per-event index, or a rebuild) is indexed
        from the start while requests run, and the bound applies once that is done."""
        try:
            while True:
                await asyncio.sleep(interval_s / 10 if writer.holding else interval_s)
                try:
                    indexed = await self.watermark()
                    backlog = writer.head_seq - indexed if indexed >= history else 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # let appends go; the next look may succeed
                    writer.release()
                    log.warning("audit search index backlog unknown (%s)", type(exc).__name__)
                    continue
                if backlog > pacing.hold_above:
                    writer.hold()
                elif backlog <= pacing.max_backlog:
                    writer.release()
        finally:
            writer.release()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _follow(self, writer: AuditLog, pacing: Pacing, interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        seen = writer.head_seq
        try:
            while True:
                await asyncio.sleep(interval_s)
                appended = writer.head_seq - seen
                try:
                    await self._index_due(writer, pacing, appended, loop.time() + interval_s)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # keep following; auditors' queries catch up
                    writer.release()
                    log.warning("audit search index not updated (%s)", type(exc).__name__)
                seen = writer.head_seq
        finally:
            writer.release()

    async def _index_due(
        self, writer: AuditLog, pacing: Pacing, appended: int, until: float
    ) -> None:
        """Index what `pacing` says is due. Quiet or light load may turn busy meanwhile: look
        again after a tick's work. Far behind, go on until back under the bound; past twice
        the bound, appends wait until the index is back under it."""
        loop = asyncio.get_running_loop()
        while True:
            backlog = writer.head_seq - self.indexed_through
            if backlog > pacing.hold_above:
                writer.hold()
            else:
                writer.release()
            due = pacing.due(backlog, writer.idle_for(), appended)
            if due <= 0 or (loop.time() > until and backlog <= pacing.max_backlog):
                return
            # Nothing indexed means nothing indexable (e.g. a hole cut into the journal, which
            # verify reports): let appends go, wait for the next tick, do not spin.
            if not await self.catch_up(limit=min(due, self.chunk), indexer=True):
                writer.release()
                return


@dataclass(frozen=True)
class Pacing:
    """When the background indexer works: `quiet_s` without an append is quiet, at most `light`
    appends between two checks is light load, and `max_backlog` is the most it lets heavy load
    leave unindexed; past twice that, appends wait for it (`hold_above`)."""

    quiet_s: float = 0.5
    light: int = 50
    max_backlog: int = 2_000

    @property
    def hold_above(self) -> int:
        return 2 * self.max_backlog

    def due(self, backlog: int, idle_s: float, appended: int) -> int:
        """How many events to index now (0: none, leave them for a quieter moment)."""
        if backlog <= 0:
            return 0
        if idle_s >= self.quiet_s or appended <= self.light:
            return backlog
        if backlog > self.max_backlog:
            return backlog - self.max_backlog // 2
        return 0


def _events(documents: list[dict[str, Any]]) -> int:
    return sum(int(d["last"]) - int(d["first"]) + 1 for d in documents)
