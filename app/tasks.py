"""Stopping background tasks."""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL_AFTER_S = 0.5


async def cancel_and_wait(task: asyncio.Task[Any] | None, *also: type[BaseException]) -> None:
    """Cancel `task` (None: nothing to do) and wait until it has finished. Its cancellation
    and the exceptions in `also` end here; any other exception it ended with is raised."""
    if task is None:
        return
    task.cancel()
    # A task can swallow its cancellation: PyMongo's server selection, cancelled while the
    # database is gone, ended in ServerSelectionTimeoutError, which the change feed retries,
    # and `hestia serve` then never stopped on SIGTERM. Cancel it again until it ends.
    while not task.done():
        await asyncio.wait({task}, timeout=RECANCEL_AFTER_S)
        if not task.done():
            task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled: that must go on
    except also:
        pass
