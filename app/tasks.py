"""Stopping background tasks."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None, *also: type[BaseException]) -> None:
    """Cancel `task` (None: nothing to do) and wait until it has finished. Its cancellation
    and the exceptions in `also` end here; any other exception it ended with is raised."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled: that must go on
    except also:
        pass
