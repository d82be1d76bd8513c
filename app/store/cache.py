"""A read cache of current versions, kept coherent with the database by a change stream.

Reads by id are the most frequent request a FHIR server gets, and each one otherwise costs a
database round trip. The cache holds the current-collection document of recently read
resources. It stays correct because:

- this process invalidates a key as soon as its own transaction commits (read-your-writes);
- every other writer (other workers, other instances, ingestion) is seen through a change
  stream on the database, which invalidates the key a few milliseconds after their commit;
- a read that raced with an invalidation never stores what it fetched (epoch check below);
- while the change stream is not running (not yet open, broken, or unsupported by the
  server) the cache is bypassed entirely and emptied, so it can only ever be as stale as the
  change-stream lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

log = logging.getLogger("hestia.store.cache")

Doc = dict[str, Any]
Key = tuple[str, str]

# Collections whose documents are not current versions of resources.
NOT_CURRENT = frozenset({"history"})
RECENT_INVALIDATIONS = 4096


class CurrentCache:
    def __init__(self, db: AsyncDatabase[Doc], max_entries: int = 50_000) -> None:
        self.db = db
        self.max_entries = max_entries
        self._entries: OrderedDict[Key, Doc] = OrderedDict()
        # Epoch of the latest invalidation of recently invalidated keys: a read that began
        # before that epoch must not populate the cache with what it fetched.
        self._invalidated: OrderedDict[Key, int] = OrderedDict()
        self._epoch = 0
        # Reads that began at or before this epoch never populate the cache: their key's
        # invalidation may have been forgotten, or the stream was down while they ran.
        self._floor = 0
        self._live = False
        self._task: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()
        self.hits = 0
        self.misses = 0

    @property
    def live(self) -> bool:
        return self._live and self.max_entries > 0

    async def start(self, wait_seconds: float = 5.0) -> bool:
        """Open the change stream; returns whether the cache is in use."""
        if self.max_entries <= 0:
            return False
        self._task = asyncio.create_task(self._follow(), name="hestia-cache-invalidation")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._opened.wait(), wait_seconds)
        return self._live

    async def stop(self) -> None:
        self._live = False
        self._entries.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, PyMongoError):
                await self._task

    async def _follow(self) -> None:
        delay = 0.1
        while True:
            try:
                async with await self.db.watch() as stream:
                    self._set_live(True)
                    delay = 0.1
                    async for change in stream:
                        self._on_change(change)
            except asyncio.CancelledError:
                raise
            except PyMongoError as exc:
                log.warning("read cache off: change stream failed (%s)", type(exc).__name__)
            self._set_live(False)
            self._opened.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _set_live(self, live: bool) -> None:
        if not live:
            self._entries.clear()
        self._epoch += 1
        self._floor = self._epoch
        self._live = live
        if live:
            self._opened.set()

    def _on_change(self, change: Doc) -> None:
        namespace = change.get("ns") or {}
        collection = namespace.get("coll")
        if change.get("operationType") in ("drop", "dropDatabase", "rename", "invalidate"):
            self._entries.clear()
            self._epoch += 1
            return
        if not collection or collection in NOT_CURRENT:
            return
        key_doc = change.get("documentKey") or {}
        if "_id" in key_doc:
            self.invalidate(collection, str(key_doc["_id"]))

    # The cache proper

    def epoch(self) -> int:
        return self._epoch

    def get(self, resource_type: str, resource_id: str) -> Doc | None:
        if not self.live:
            return None
        key = (resource_type, resource_id)
        doc = self._entries.get(key)
        if doc is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return doc

    def put(self, resource_type: str, resource_id: str, doc: Doc, read_epoch: int) -> None:
        """Store what a read that started at `read_epoch` fetched, unless it may be stale."""
        if not self.live:
            return
        key = (resource_type, resource_id)
        if read_epoch < self._invalidated.get(key, -1) or read_epoch < self._floor:
            return
        self._entries[key] = doc
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, resource_type: str, resource_id: str) -> None:
        key = (resource_type, resource_id)
        self._epoch += 1
        self._entries.pop(key, None)
        self._invalidated[key] = self._epoch
        self._invalidated.move_to_end(key)
        while len(self._invalidated) > RECENT_INVALIDATIONS:
            _, forgotten = self._invalidated.popitem(last=False)
            self._floor = max(self._floor, forgotten)
