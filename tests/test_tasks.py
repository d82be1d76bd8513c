"""Stopping background tasks (app/tasks.py), including one that swallows its cancellation."""

from __future__ import annotations

import asyncio
import contextlib

from app.tasks import cancel_and_wait


async def test_a_task_that_swallows_its_cancellation_is_cancelled_again_until_it_ends() -> None:
    # As the change feed did when PyMongo's server selection, cancelled with the database
    # gone, ended in an error the feed retries: it caught the cancellation and went on.
    swallowed = 0
    give_up = False

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 2 or give_up:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(cancel_and_wait(task))
    done, _ = await asyncio.wait({stopping}, timeout=5)
    if not done:  # one cancellation, swallowed: the wait would never end
        give_up = True
        task.cancel()
        await stopping
    assert done, "cancel_and_wait did not end a task that swallowed its cancellation"
    assert task.cancelled() and swallowed == 3


async def test_the_callers_own_cancellation_still_propagates() -> None:
    task = asyncio.create_task(asyncio.sleep(10))
    waiter = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    assert waiter.cancelled()
