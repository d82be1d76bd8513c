"""The audit log: an insert-only, hash-chained collection fed by a group-commit writer.

Durability. `await log.append(event)` returns only once the batch holding the event is inserted
with write concern {w: "majority", j: true}. The writer takes whatever has queued while the
previous insert was in flight, so under load one insert_many carries many events and an audited
read costs a fraction of a write. An extra wait (`window` seconds) before each insert is
possible but measured slower (benchmarks/audit_overhead.py): the in-flight insert is already
the batching window, so the default is 0.

Each batch is one block document in the journal (app/audit/journal.py); auditors' searches
read per-event documents that app/audit/projection.py derives from the journal afterwards.

Ordering across processes. There is one chain, and its order is total: a block's `_id` is the
seq of its first event, so MongoDB's unique `_id` index is the compare-and-swap. A writer
chains its batch after the newest event it knows of and inserts the block; if another process
took that `seq` first, the insert fails on the duplicate key with nothing stored, and the
writer re-reads the head and re-chains the batch. No counter document, no transaction, nothing
MongoDB-specific beyond the `_id` index: it runs the same on SecantusDB and on a replica set.
(A counter with find_one_and_update would hand out seqs, but a writer dying between reserving
and inserting would leave a gap that verify must report as tampering. Per-writer chains would
avoid contention but give no total order and let a whole writer's chain vanish unnoticed.)
A cached head is trusted for at most `head_ttl` seconds, far below the shortest retention, so a
writer can never chain onto a purged range.

Insert-only. Nothing here updates or deletes events; only `retention.purge` deletes, whole
prefixes, behind a checkpoint. In production the app's user needs just `find` and `insert` on
`<db>_audit` (see `MONGODB_ROLES`); purge runs as an operator with `remove` as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import pymongo
from pymongo import ASCENDING, DESCENDING, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from app.audit.chain import BLOCK_INDEX, CHECKPOINTS, JOURNAL, PATIENT_INDEX, PATIENT_KEY, link
from app.audit.events import JsonDict
from app.audit.journal import (
    MAX_BLOCK_EVENTS,
    block_of,
    ensure_journal_indexes,
    read_head,
    recorded_through,
)
from app.tasks import cancel_and_wait

log = logging.getLogger("hestia.audit")

# After a lost race for the next seq, a writer waits up to 0.5 ms × 2^attempts, at most 8 ms.
CONFLICT_BACKOFF_S = 0.0005
MAX_CONFLICT_BACKOFF_S = 0.008

MONGODB_ROLES = """\
// Run once as an administrator on the audit database (e.g. hestia_audit).
db.createRole({role: "hestiaAuditWriter",
  privileges: [{resource: {db: "hestia_audit", collection: "audit_journal"},
                actions: ["find", "insert", "createIndex"]},
               {resource: {db: "hestia_audit", collection: "audit_block_index"},
                actions: ["find", "insert", "createIndex"]},
               {resource: {db: "hestia_audit", collection: "audit_checkpoints"},
                actions: ["find", "createIndex"]}],
  roles: []});
db.createRole({role: "hestiaAuditOperator",
  privileges: [{resource: {db: "hestia_audit", collection: "audit_journal"},
                actions: ["find", "insert", "remove"]},
               {resource: {db: "hestia_audit", collection: "audit_block_index"},
                actions: ["find", "insert", "remove"]},
               {resource: {db: "hestia_audit", collection: "audit_checkpoints"},
                actions: ["find", "insert"]}],
  roles: []});
"""


class AuditAppender(Protocol):
    """What records accesses: an AuditLog, or a worker's RelayClient (relay.py)."""

    async def append_all(self, events: list[JsonDict]) -> list[int]: ...


class AuditUnavailable(Exception):
    """The audit store could not make an event durable: the access must not be served."""


@dataclass
class _Pending:
    events: list[JsonDict]
    done: asyncio.Future[list[int]]


@dataclass
class WriterStats:
    batches: int = 0
    events: int = 0
    conflicts: int = 0
    largest_batch: int = 0


class AuditLog:
    """The group-commit writer of one process. Build it early, `start` it when the DB is open."""

    def __init__(
        self,
        *,
        window: float = 0.0,
        max_batch: int = 500,
        timeout: float = 5.0,
        head_ttl: float = 1.0,
        write_concern: WriteConcern | None = None,
        writer_id: str | None = None,
        search_indexes: bool = False,
    ) -> None:
        self.window = window
        self.max_batch = max_batch
        self.timeout = timeout
        self.head_ttl = head_ttl
        self.write_concern = write_concern or WriteConcern(w="majority", j=True)
        self.writer_id = writer_id or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.search_indexes = search_indexes
        self.stats = WriterStats()
        self._journal: AsyncCollection[JsonDict] | None = None
        self._checkpoints: AsyncCollection[JsonDict] | None = None
        # None is the stop sentinel.
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._head: tuple[int, str] | None = None
        # When the head event was recorded: no event after it is recorded earlier (chain.link).
        self._head_recorded: datetime | None = None
        self._head_at = 0.0
        self._batch_counter = 0
        # When the writer last had work: the search index is brought up to date when quiet.
        self.last_active = time.monotonic()
        # Cleared by the search indexer while its backlog is over its bound (projection.py):
        # appends then wait for it, up to `timeout`, so that sustained load pays for its
        # indexing as it goes instead of leaving auditors an ever longer wait.
        self._room = asyncio.Event()
        self._room.set()

    @property
    def head_seq(self) -> int:
        """The newest seq this writer knows of (0 before its first append)."""
        return self._head[0] if self._head is not None else 0

    def idle_for(self) -> float:
        return time.monotonic() - self.last_active if self._queue.empty() else 0.0

    def hold(self) -> None:
        """Make appends wait (see `_room`)."""
        self._room.clear()

    def release(self) -> None:
        self._room.set()

    @property
    def holding(self) -> bool:
        return not self._room.is_set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, database: AsyncDatabase[JsonDict]) -> None:
        """Bind to the audit database (e.g. `client["hestia_audit"]`), index it, start writing.

        Raises AuditUnavailable if the audit store cannot be reached: a server that cannot
        audit must not start serving.
        """
        self._journal = database.get_collection(JOURNAL, write_concern=self.write_concern)
        self._checkpoints = database.get_collection(CHECKPOINTS, write_concern=self.write_concern)
        try:
            await ensure_indexes(database, search=self.search_indexes)
        except PyMongoError as exc:
            raise AuditUnavailable(
                f"the audit store is unreachable ({type(exc).__name__})"
            ) from exc
        self._task = asyncio.create_task(self._run(), name="audit-writer")
        # Should the writer ever end on its own, nobody may be left waiting on it.
        self._task.add_done_callback(
            lambda _: self._fail_queued(AuditUnavailable("the audit writer stopped"))
        )

    async def stop(self) -> None:
        """Write what is queued, then stop the writer."""
        task, self._task = self._task, None
        if task is None:
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(task, self.timeout)
        except TimeoutError:
            await cancel_and_wait(task)
        self._fail_queued(AuditUnavailable("the audit log stopped"))

    async def append(self, event: JsonDict) -> int:
        """Store one event durably; returns its seq. Raises AuditUnavailable."""
        return (await self.append_all([event]))[0]

    def submit(self, events: list[JsonDict]) -> asyncio.Future[list[int]]:
        """`append_all` without a coroutine: the future of the events' seqs, for callers that
        answer from a callback (the relay, one per request). Raises AuditUnavailable."""
        if not self.running:
            raise AuditUnavailable("the audit log is not running")
        if not events or not self._room.is_set():
            return asyncio.ensure_future(self.append_all(events))
        done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(list(events), done))
        return done

    async def append_all(self, events: list[JsonDict]) -> list[int]:
        """Store events durably, consecutively in the chain; returns their seqs.

        No timer per caller: the writer bounds each commit by `timeout` (its database calls
        run under pymongo.timeout), so a caller waits at most for the commit in flight and its
        own, then gets its seqs or AuditUnavailable. Each caller has its own future, so a
        cancelled wait touches no other."""
        if not events:
            return []
        if not self.running:
            raise AuditUnavailable("the audit log is not running")
        if not self._room.is_set():
            # The index is rebuildable from the journal: never refuse an access over it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), self.timeout)
        done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(list(events), done))
        return await done

    # -- the writer --------------------------------------------------------------------------

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                return
            if self.window > 0:
                await asyncio.sleep(self.window)
            batch = [first]
            size = len(first.events)
            while size < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
                size += len(item.events)
            await self._commit(batch)
            self.last_active = time.monotonic()

    async def _commit(self, batch: list[_Pending]) -> None:
        live = [item for item in batch if not item.done.done()]
        events = [event for item in live for event in item.events]
        try:
            with pymongo.timeout(self.timeout):
                seqs = await self._insert_chained(events)
        except BaseException as exc:  # the waiting requests must hear of any failure
            if isinstance(exc, Exception):
                log.error("audit store write failed: %s", type(exc).__name__)
            for item in live:
                if not item.done.done():
                    item.done.set_exception(AuditUnavailable("the audit store is unavailable"))
            if not isinstance(exc, Exception):
                raise  # cancelled: stop() is waiting
            return
        position = 0
        for item in live:
            count = len(item.events)
            if not item.done.done():
                item.done.set_result(seqs[position : position + count])
            position += count

    async def _insert_chained(self, events: list[JsonDict]) -> list[int]:
        self._batch_counter += 1
        batch_id = f"{self.writer_id}:{self._batch_counter}"
        seqs: list[int] = []
        for start in range(0, len(events), MAX_BLOCK_EVENTS):
            seqs += await self._insert_block(events[start : start + MAX_BLOCK_EVENTS], batch_id)
        self.stats.batches += 1
        self.stats.events += len(events)
        self.stats.largest_batch = max(self.stats.largest_batch, len(events))
        return seqs

    async def _insert_block(self, events: list[JsonDict], batch_id: str) -> list[int]:
        assert self._journal is not None
        deadline = time.monotonic() + self.timeout
        lost = 0
        while True:
            head_seq, head_hash = await self._current_head()
            documents = link(
                events,
                head_seq,
                head_hash,
                batch=batch_id,
                writer=self.writer_id,
                floor=self._head_recorded,
            )
            try:
                await self._journal.insert_one(block_of(documents))
            except DuplicateKeyError:
                # Another writer took the next seq: learn the new head and chain after it.
                self.stats.conflicts += 1
                self._head_at = 0.0
                lost += 1
                if time.monotonic() > deadline:
                    raise AuditUnavailable("the audit chain is too contended to append") from None
                # Writers that lost the same race would all retry at once, and all but one
                # lose again: spread them out, further the more often they lost (capped, so a
                # writer that lost often is not left behind the ones that just arrived).
                spread = min(CONFLICT_BACKOFF_S * 2**lost, MAX_CONFLICT_BACKOFF_S)
                await asyncio.sleep(random.uniform(0, spread))
                continue
            except PyMongoError:
                # The block may or may not have landed: learn the head again next time.
                self._head_at = 0.0
                raise
            last = documents[-1]
            self._head = (int(last["_id"]), last["hash"])
            self._head_recorded = last["recorded"]
            self._head_at = time.monotonic()
            return [int(d["_id"]) for d in documents]

    async def _current_head(self) -> tuple[int, str]:
        """The head to chain after. A head this writer knows is re-checked (cheaply: only
        blocks after it are read) once it is `head_ttl` old or an insert failed."""
        if self._head is not None and time.monotonic() - self._head_at < self.head_ttl:
            return self._head
        assert self._journal is not None and self._checkpoints is not None
        head = await read_head(self._journal, self._checkpoints, known=self._head)
        if head != self._head:
            self._head_recorded = await recorded_through(self._journal, head[0])
        self._head = head
        self._head_at = time.monotonic()
        return self._head

    def _fail_queued(self, error: Exception) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and not item.done.done():
                item.done.set_exception(error)


async def ensure_indexes(database: AsyncDatabase[Any], *, search: bool = False) -> None:
    """The journal's and the block index's `last` indexes, which every range read and probe
    goes through, and, only when asked, one for auditors' patient queries (search.py).

    That one is maintained as blocks are indexed, off the request path but on the same
    cores: on the embedded server a block's patients cost about as much again as the rest of
    its index document, so it is off by default there. On MongoDB it costs microseconds, and
    without it a patient's accesses are found by reading the whole index."""
    await database[CHECKPOINTS].create_index([("through_seq", DESCENDING)], name="through_seq")
    await ensure_journal_indexes(database)
    blocks = database[BLOCK_INDEX]
    await blocks.create_index([("last", ASCENDING)], name="last")
    if search:
        await blocks.create_index(
            [(PATIENT_KEY, ASCENDING), ("last", ASCENDING)], name=PATIENT_INDEX
        )
