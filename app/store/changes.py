"""One change stream on the database, shared by the in-memory mirrors that must follow it.

Every instance of Hestia keeps small in-memory views of data that other instances may change:
the read cache of current versions, the token revocation list. Each view subscribes here. While
the stream runs, a subscriber sees every committed change within tens of milliseconds; when
the stream is not running (not yet open, broken, or unsupported by the server), subscribers are
told so and must fall back to the database.

An awaiting getMore on the embedded server returns as soon as anything is written anywhere on
the server, usually with nothing for this database: above all when the audit log (its own
database) commits a block. Asking again at once would cost a round trip per audit commit, as
much CPU as the commit itself, in both processes. So after an empty batch the feed waits
`idle_pause` seconds before asking again: a change another instance makes reaches the mirrors
at most that much later, and changes that arrive meanwhile come in one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from app.tasks import cancel_and_wait

log = logging.getLogger("hestia.store.changes")

Doc = dict[str, Any]


class Subscriber(Protocol):
    def on_change(self, collection: str, operation: str, key: Any, document: Doc | None) -> None:
        """A committed change to `collection`'s document `key` (None for whole-collection
        events such as drop); `document` is the document as written, for inserts and
        replacements (the stream carries it for those at no extra cost), else None."""

    def on_live(self, live: bool) -> None:
        """The stream started (True) or stopped (False): a stopped stream means changes may
        have been missed, so anything mirrored must be dropped or reloaded."""


class ChangeFeed:
    def __init__(self, db: AsyncDatabase[Doc], *, idle_pause: float = 0.02) -> None:
        self.db = db
        self.idle_pause = idle_pause
        self.live = False
        self._subscribers: list[Subscriber] = []
        self._task: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)
        subscriber.on_live(self.live)

    async def start(self, wait_seconds: float = 5.0) -> bool:
        """Open the stream; True once it runs (False: subscribers use the database)."""
        self._opened.clear()  # a feed stopped earlier may be started again
        self._task = asyncio.create_task(self._follow(), name="hestia-change-feed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._opened.wait(), wait_seconds)
        return self.live

    async def stop(self) -> None:
        await cancel_and_wait(self._task, PyMongoError)
        self._task = None
        self._set_live(False)

    async def _follow(self) -> None:
        delay = 0.1
        while True:
            try:
                async with await self.db.watch() as stream:
                    self._set_live(True)
                    delay = 0.1
                    while stream.alive:
                        change = await stream.try_next()
                        if change is None:
                            await asyncio.sleep(self.idle_pause)
                        else:
                            self._dispatch(change)
            except asyncio.CancelledError:
                raise
            except PyMongoError as exc:
                log.warning("change stream stopped (%s); retrying", type(exc).__name__)
            self._set_live(False)
            self._opened.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _set_live(self, live: bool) -> None:
        if live:
            self._opened.set()
        if live == self.live and live:
            return
        self.live = live
        for subscriber in self._subscribers:
            subscriber.on_live(live)

    def _dispatch(self, change: Doc) -> None:
        operation = str(change.get("operationType", ""))
        if operation in ("dropDatabase", "invalidate"):
            # Everything may be gone: the same as losing the stream, then regaining it.
            self._set_live(False)
            self._set_live(True)
            return
        collection = (change.get("ns") or {}).get("coll")
        if not collection:
            return
        key = (change.get("documentKey") or {}).get("_id")
        document = change.get("fullDocument") if operation in ("insert", "replace") else None
        for subscriber in self._subscribers:
            subscriber.on_change(str(collection), operation, key, document)
