"""Which types' stored documents all carry their pair key, and the backfill that makes it so.

Every write stores the pair key of fhir/search/pairs.py, but documents written before it
existed do not have it, and a search that used it would miss them. So a search uses the key of
a type only once this module reports the type complete:

- a type whose collection held no document at start-up is complete at once (every document it
  will ever get is written by code that stores the key);
- any other type is completed by a backfill in the background: it reads the documents that
  lack the key in `_id` order, a bounded batch at a time, and sets the key computed from their
  own `s.patient` and `s.code`, guarded by their version, so that a document a client changed
  meanwhile (and whose new version has the key) is left alone. Until it finishes, searches on
  that type read the patient or code index as before;
- completion is recorded in `search_key_state`, so the next start-up, and every other instance
  started after it, skips the backfill.

During a rolling upgrade from a version without pair keys, an old instance still running
after the backfill writes documents without the key. Stop the old instances before the first
new one starts, or afterwards delete the `search_key_state` documents: the next start-up then
backfills whatever still lacks the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from app.fhir.search.pairs import CODE, PAIR_FIELD, PAIR_KEY, PATIENT, pair_types, pair_values
from app.store.versions import Store

log = logging.getLogger("hestia.store.pair_keys")

STATE = "search_key_state"
BATCH = 500
RETRY_AFTER_S = 5.0


class PairKeys:
    """Open with `open()`; `ready(type)` says whether searches on that type may use the key."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._complete: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.backfilled = 0

    def ready(self, resource_type: str) -> bool:
        return resource_type in self._complete

    async def open(self, resource_types: Iterable[str], *, backfill: bool = True) -> None:
        """Learn which types are complete; with `backfill`, complete the others in the
        background (`wait()` awaits it)."""
        state = self.store.db[STATE]
        recorded = {
            str(doc["_id"])
            async for doc in state.find({"key": PAIR_KEY, "complete": True}, {"_id": 1})
        }
        pending: list[str] = []
        for resource_type in sorted(set(resource_types) & pair_types()):
            if resource_type in recorded:
                self._complete.add(resource_type)
                continue
            # Not `find_one({})`: the embedded server loads every document of a find before
            # it limits, seconds on a large collection; the count comes from metadata.
            collection = self.store.current(resource_type)
            if await collection.estimated_document_count() == 0:
                await self._record(resource_type)
            else:
                pending.append(resource_type)
        if pending and backfill:
            self._task = asyncio.create_task(self._backfill(pending), name="hestia-pair-keys")

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _record(self, resource_type: str) -> None:
        await self.store.db[STATE].update_one(
            {"_id": resource_type},
            {"$set": {"key": PAIR_KEY, "complete": True}},
            upsert=True,
        )
        self._complete.add(resource_type)

    async def _backfill(self, resource_types: list[str]) -> None:
        for resource_type in resource_types:
            while True:
                try:
                    started = time.monotonic()
                    count = await self._backfill_type(resource_type)
                    await self._record(resource_type)
                    log.info(
                        "pair keys of %s complete: %d documents in %.1f s",
                        resource_type,
                        count,
                        time.monotonic() - started,
                    )
                    break
                except PyMongoError as error:
                    # The database is busy or briefly away: the work done is kept (each batch
                    # is its own write), so resume later from the first document still lacking.
                    log.warning("pair key backfill of %s paused: %s", resource_type, error)
                    await asyncio.sleep(RETRY_AFTER_S)

    async def _backfill_type(self, resource_type: str) -> int:
        """One pass over the type's documents that lack the key. One cursor: MongoDB streams it
        from the `_id` index; the embedded server gathers the matches once (a scan of the
        collection) and hands them out a batch at a time."""
        collection = self.store.current(resource_type)
        wanted = {
            PAIR_FIELD: {"$exists": False},
            f"s.{PATIENT}": {"$exists": True},
            f"s.{CODE}": {"$exists": True},
        }
        projection = {f"s.{PATIENT}": 1, f"s.{CODE}": 1, "vid": 1}
        done = 0
        updates: list[UpdateOne] = []
        cursor = collection.find(wanted, projection, batch_size=BATCH).sort("_id", 1)
        async for doc in cursor:
            pairs = pair_values(doc.get("s") or {})
            if pairs:
                # Guarded by the version read: a newer version was written with its key.
                updates.append(
                    UpdateOne({"_id": doc["_id"], "vid": doc["vid"]}, {"$set": {PAIR_FIELD: pairs}})
                )
            if len(updates) >= BATCH:
                done += await self._apply(collection, updates)
                updates = []
        if updates:
            done += await self._apply(collection, updates)
        return done

    async def _apply(self, collection: Any, updates: list[UpdateOne]) -> int:
        result = await collection.bulk_write(updates, ordered=False)
        self.backfilled += result.modified_count
        return int(result.modified_count)
