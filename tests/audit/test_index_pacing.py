"""When the background indexer brings auditors' AuditEvent index up to date (projection.py).

An auditor's query first indexes whatever is left, so the backlog is what an auditor waits
for: it must not grow without bound under steady load, and a light trickle of requests, which
never leaves the writer quiet, must not leave it unindexed either.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from app.audit.log import AuditLog
from app.audit.projection import AuditIndex, Pacing
from tests.audit.conftest import Db
from tests.audit.test_log import one_event

PACING = Pacing(quiet_s=0.5, light=50, max_backlog=5_000)


@pytest.mark.parametrize(
    ("backlog", "idle_s", "appended", "due"),
    [
        (0, 9.0, 0, 0),  # nothing to do
        (800, 0.6, 900, 800),  # quiet now: all of it
        (800, 0.0, 50, 800),  # light load: all of it
        (800, 0.0, 51, 0),  # busy and not far behind: leave it for later
        (5_000, 0.0, 900, 0),  # at the bound: still later
        (7_000, 0.0, 900, 4_500),  # past the bound: back down to half of it
    ],
)
def test_pacing(backlog: int, idle_s: float, appended: int, due: int) -> None:
    assert PACING.due(backlog, idle_s, appended) == due


async def _trickle(log: AuditLog, seconds: float, per_tick: int, tick_s: float) -> int:
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.gather(*(log.append(one_event(sent + n)) for n in range(per_tick)))
        sent += per_tick
        await asyncio.sleep(tick_s)
    return sent


async def test_a_trickle_that_never_lets_the_writer_rest_is_indexed_as_it_comes(
    audit_db: Db,
) -> None:
    log = AuditLog(window=0.0)
    await log.start(audit_db)
    index = AuditIndex(audit_db)
    # Never quiet for 60 s, but 2 events a tick is light load.
    index.follow(log, quiet_s=60, interval_s=0.05, light=5, max_backlog=10_000)
    try:
        sent = await _trickle(log, 1.0, per_tick=2, tick_s=0.02)
        assert sent >= 20
        for _ in range(100):  # up to 5 s on a slow machine
            if index.indexed_through >= sent:
                break
            await asyncio.sleep(0.05)
        assert index.indexed_through == log.head_seq == sent
    finally:
        await index.stop()
        await log.stop()


async def test_load_that_outruns_the_indexer_waits_for_it(audit_db: Db) -> None:
    log = AuditLog(window=0.0)
    await log.start(audit_db)
    index = AuditIndex(audit_db, chunk=50)
    # Every tick counts as busy (light=0) and the writer is never quiet for 60 s.
    index.follow(log, quiet_s=60, interval_s=0.05, light=0, max_backlog=100)
    backlogs: list[int] = []

    async def watch() -> None:
        while True:
            await asyncio.sleep(0.05)
            backlogs.append(log.head_seq - index.indexed_through)

    watcher = asyncio.create_task(watch())
    try:
        sent = await _trickle(log, 3.0, per_tick=40, tick_s=0.0)
        assert sent > 1_500  # fifteen times the bound went through
        # Past twice the bound (200) appends wait for the indexer; what comes in between two of
        # its checks comes on top, never the whole load. How much comes on top depends on the
        # machine: at most 400 of 3,200 sent in 2 s on a slow one, 5,750 once on a fast one
        # under the full suite's load. Without the hold the backlog is most of what was sent
        # (20,770 settled), so the bound is a share of it. Before its first check nothing
        # holds appends (1,160 in those 50 ms): the first half second is left out.
        settled = backlogs[10:]
        assert len(settled) >= 20, backlogs
        assert max(settled) <= max(1_000, sent // 3), (sent, backlogs)
        assert index.indexed_through >= sent - 1_000
    finally:
        watcher.cancel()
        await index.stop()
        await log.stop()
