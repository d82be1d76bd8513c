"""The auditors' indexer in a process of its own, beside the server that writes the journal.

Indexing AuditEvents for auditors (projection.py) is deferred work. In the server's process
it built and inserted 500 index documents at a time on the event loop, and requests waited
behind it: audited reads under load had a p99 of 59–83 ms, against 26–44 ms with the indexer
in its own process (docs/performance.md, "Auditing"). There, at a lower scheduling priority,
it runs on whatever CPU the requests leave, and the operating system decides when that is.
`HESTIA_AUDIT_INDEXER=in-process` keeps the old way (projection.py's pacing).

The process that writes the chain starts it (`IndexerProcess`): a single-worker server, or with
`--workers N` the host's audit relay (relay_process.py), so a host runs one indexer. It is
started again whenever it ends and stopped on shutdown; it also stops by itself when the
process that started it is gone (one killed outright).
Several indexers (several hosts) on one audit database are safe: the index is a contiguous
prefix of the chain, and an insert that meets an event another indexer wrote first stops
there: wasted work, not wrong. What the writer keeps is the bound on the backlog
(AuditIndex.guard): appends wait while the index is too far behind, as they did when the
server indexed.

    python -m app.audit.indexer   # reads HESTIA_MONGODB_URI and HESTIA_AUDIT_DATABASE
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from datetime import UTC

from pymongo import AsyncMongoClient

from app.audit.log import AuditLog
from app.audit.projection import AuditIndex
from app.store.client import close_client
from app.tasks import cancel_and_wait

log = logging.getLogger("hestia.audit")

URI_ENV = "HESTIA_MONGODB_URI"
DATABASE_ENV = "HESTIA_AUDIT_DATABASE"
# The server process: named by the server, so a server gone before the indexer looks is seen.
PARENT_ENV = "HESTIA_AUDIT_INDEXER_PARENT"
# Below the server's priority: requests first, indexing with what they leave.
NICENESS = 5
IDLE_S = 0.05
RESTART_AFTER_S = 1.0


async def follow_journal(index: AuditIndex, *, parent: int, idle_s: float = IDLE_S) -> None:
    """Index the journal as it grows, until the process that started this one is gone."""
    while os.getppid() == parent:
        try:
            done = await index.catch_up(limit=index.chunk, indexer=True)
        except Exception as exc:  # a database hiccup: the next pass picks up where this one was
            log.warning("audit search index not updated (%s)", type(exc).__name__)
            await asyncio.sleep(RESTART_AFTER_S)
            continue
        if done < index.chunk:
            await asyncio.sleep(idle_s)


async def _main(uri: str, database: str, parent: int) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, tz_aware=True, tzinfo=UTC)
    try:
        await follow_journal(AuditIndex(client[database]), parent=parent)
    finally:
        await close_client(client)


class IndexerProcess:
    """Keeps one indexer process running beside this server process."""

    def __init__(self, uri: str, database: str) -> None:
        self._env = {
            **os.environ,
            URI_ENV: uri,
            DATABASE_ENV: database,
            PARENT_ENV: str(os.getpid()),
        }
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._supervise(), name="audit-indexer")

    async def _spawn(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.audit.indexer", env=self._env
        )
        self.starts += 1

    async def _supervise(self) -> None:
        """Start the indexer again whenever it ends, however it ends, until `stop`: while none
        runs, the backlog grows until appends wait (AuditIndex.guard)."""
        while True:
            process = self._process
            if process is not None:
                code = await process.wait()
                # 0: asked to stop, as by a Ctrl-C to the whole process group (the server's
                # own shutdown then follows and ends this loop); anything else is a failure.
                log.log(
                    logging.INFO if code == 0 else logging.WARNING,
                    "the audit indexer exited (%s); starting it again",
                    code,
                )
            await asyncio.sleep(RESTART_AFTER_S)
            try:
                await self._spawn()
            except OSError as exc:  # e.g. no process slots left: try again later
                self._process = None
                log.error("the audit indexer could not be started (%s)", exc)

    async def stop(self) -> None:
        task, self._task = self._task, None
        try:
            await cancel_and_wait(task)
        finally:
            process, self._process = self._process, None
            if process is not None and process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 5)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def index_behind(
    writer: AuditLog, index: AuditIndex, *, where: str, uri: str
) -> IndexerProcess | None:
    """Keep the auditors' index following the chain `writer` appends to: in an indexer process
    beside it (`where="process"`, returned so it can be stopped), the writer holding appends
    while it is too far behind, or in this process (`"in-process"`, projection.py's pacing)."""
    if where == "in-process":
        index.follow(writer)
        return None
    indexer = IndexerProcess(uri, index.database.name)
    await indexer.start()
    await index.guard(writer)
    return indexer


def main() -> None:
    uri, database = os.environ.get(URI_ENV), os.environ.get(DATABASE_ENV)
    parent = int(os.environ.get(PARENT_ENV) or os.getppid())
    if not uri or not database:
        sys.exit(f"usage: {URI_ENV}=… {DATABASE_ENV}=… python -m app.audit.indexer")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.nice(NICENESS)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(uri, database, parent))


if __name__ == "__main__":
    main()
