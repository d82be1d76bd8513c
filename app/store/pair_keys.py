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

An instance of an older version still running during a rolling upgrade writes documents
without the key, after the backfill. A server follows the change feed for them (`follow`): a
document of a pair type written without its key, while it has both a patient and a code, makes
that type not complete again, here at once and in the record for later start-ups, and starts
another backfill. Searches meanwhile read the patient or code index. The feed is also what
tells this instance about such writes at all, so while it is down, nothing is trusted, and when
it comes back, each type is checked again by a backfill pass (one read of the documents lacking
the key) before its key is used. What remains is the feed's delay: a search sent to this
instance within tens of milliseconds of an older instance's write can miss that write, as its
read cache can; and a write made between this instance's start-up reading the record and its
feed starting (well under a second) is caught only by another instance's feed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from app.fhir.search.pairs import CODE, PAIR_FIELD, PAIR_KEY, PATIENT, pair_types, pair_values
from app.store.changes import ChangeFeed
from app.store.versions import Store
from app.tasks import cancel_and_wait

log = logging.getLogger("hestia.store.pair_keys")

STATE = "search_key_state"
# Documents that lack the key and should have it. Missing is `None` to the query, an equality
# the pair index serves (it holds missing keys as null): so a pass with nothing to fill reads
# next to nothing (0.02 s on 90,000 Observations), where `$exists: false` read them all (26 s).
LACKING_THE_KEY = {
    PAIR_FIELD: None,
    f"s.{PATIENT}": {"$exists": True},
    f"s.{CODE}": {"$exists": True},
}
BATCH = 500
RETRY_AFTER_S = 5.0


class PairKeys:
    """Open with `open()`; `ready(type)` says whether searches on that type may use the key.

    A server also passes itself to the change feed with `follow()` (see the module doc);
    without that, completion once recorded is trusted (one process, as in tests).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._types: frozenset[str] = frozenset()
        self._complete: set[str] = set()
        # Types written without the key since the last check: recorded as not complete.
        self._stale: set[str] = set()
        # Types to backfill (again), and the one task that does.
        self._due: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._follows = False
        self._live = False
        # The feed ran, then stopped: what was written meanwhile is unknown.
        self._lost_feed = False
        self.backfilled = 0
        self.stale_writes = 0

    def ready(self, resource_type: str) -> bool:
        return resource_type in self._complete and (self._live or not self._follows)

    async def open(self, resource_types: Iterable[str], *, backfill: bool = True) -> None:
        """Learn which types are complete; with `backfill`, complete the others in the
        background (`wait()` awaits it)."""
        self._types = frozenset(set(resource_types) & pair_types())
        recorded = await self._recorded_complete()
        for resource_type in sorted(self._types):
            if resource_type in recorded:
                self._complete.add(resource_type)
                continue
            # Not `find_one({})`: the embedded server loads every document of a find before
            # it limits, seconds on a large collection; the count comes from metadata.
            collection = self.store.current(resource_type)
            if await collection.estimated_document_count() == 0:
                await self._record(resource_type)
            else:
                self._due.add(resource_type)
        if backfill:
            self._start_backfill()

    def follow(self, feed: ChangeFeed) -> None:
        """Trust completion only while `feed` runs, and hear from it of older instances'
        writes."""
        self._follows = True
        feed.subscribe(self)

    async def wait(self) -> None:
        """Until nothing is left to backfill."""
        while self._task is not None and not self._task.done():
            await self._task

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            await cancel_and_wait(self._task)

    # -- change feed subscriber ---------------------------------------------------------------

    def on_live(self, live: bool) -> None:
        was_live, self._live = self._live, live
        if not live:
            self._lost_feed = self._lost_feed or was_live
            return
        if self._lost_feed and self._follows:
            # Writes made while the feed was down went unseen: each complete type is checked
            # again by a backfill pass (which also fills in what an older instance wrote)
            # before its key is used.
            self._lost_feed = False
            self._due |= self._complete
            self._complete.clear()
            self._start_backfill()

    def on_change(
        self, collection: str, operation: str, key: Any, document: dict[str, Any] | None
    ) -> None:
        if collection not in self._types or document is None:
            return
        keys = document.get("s")
        if not isinstance(keys, dict) or PAIR_KEY in keys or not pair_values(keys):
            return
        # Written by code that does not store the key: an older instance is running.
        self.stale_writes += 1
        if collection in self._complete or collection not in self._due:
            log.warning(
                "%s written without its pair key (an older Hestia is writing): searches on it"
                " read the patient or code index until the backfill completes",
                collection,
            )
        self._complete.discard(collection)
        self._due.add(collection)
        self._start_backfill(stale=collection)

    # -- the backfill ---------------------------------------------------------------------------

    def _start_backfill(self, stale: str | None = None) -> None:
        if stale is not None:
            self._stale.add(stale)
        if self._due and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(
                self._backfill(), name="hestia-pair-keys"
            )

    @staticmethod
    async def not_used_yet(
        db: AsyncDatabase[Any], resource_types: Iterable[str]
    ) -> list[tuple[str, str]]:
        """For an operator (`hestia status`): each of `resource_types` whose pair key is not
        recorded complete, with why."""
        states = {str(doc["_id"]): doc async for doc in db[STATE].find({})}
        found = []
        for name in sorted(set(resource_types) & pair_types()):
            state = states.get(name, {})
            if state.get("complete") is True:
                continue
            stale = int(state.get("stale_writes", 0))
            why = f"{stale} write(s) by an older version seen" if stale else "backfill not complete"
            found.append((name, why))
        return found

    async def _recorded_complete(self) -> set[str]:
        state = self.store.db[STATE]
        return {
            str(doc["_id"])
            async for doc in state.find({"key": PAIR_KEY, "complete": True}, {"_id": 1})
        }

    async def _record(self, resource_type: str) -> None:
        await self.store.db[STATE].update_one(
            {"_id": resource_type},
            {"$set": {"key": PAIR_KEY, "complete": True}},
            upsert=True,
        )
        # Written without the key again while the record was being written: the next pass
        # records it stale again, and until then searches must not rely on the key.
        if resource_type not in self._due and resource_type not in self._stale:
            self._complete.add(resource_type)

    async def _record_stale(self, resource_type: str) -> None:
        """So that no instance starting from now trusts the record until it is complete again."""
        await self.store.db[STATE].update_one(
            {"_id": resource_type},
            {"$set": {"key": PAIR_KEY, "complete": False}, "$inc": {"stale_writes": 1}},
            upsert=True,
        )

    async def _backfill(self) -> None:
        while self._due:
            resource_type = min(self._due)
            self._complete.discard(resource_type)  # not trusted while it is checked again
            try:
                started = time.monotonic()
                if resource_type in self._stale:
                    self._stale.discard(resource_type)
                    await self._record_stale(resource_type)
                self._due.discard(resource_type)
                count = await self._backfill_type(resource_type)
                if resource_type in self._due or resource_type in self._stale:
                    continue  # written without the key again meanwhile: once more
                await self._record(resource_type)
                log.info(
                    "pair keys of %s complete: %d documents in %.1f s",
                    resource_type,
                    count,
                    time.monotonic() - started,
                )
            except PyMongoError as error:
                # The database is busy or briefly away: the work done is kept (each batch
                # is its own write), so resume later from the first document still lacking.
                self._due.add(resource_type)
                log.warning("pair key backfill of %s paused: %s", resource_type, error)
                await asyncio.sleep(RETRY_AFTER_S)

    async def _backfill_type(self, resource_type: str) -> int:
        """One pass over the type's documents that lack the key, found through the pair index,
        in one cursor the server hands out a batch at a time."""
        collection = self.store.current(resource_type)
        projection = {f"s.{PATIENT}": 1, f"s.{CODE}": 1, "vid": 1}
        done = 0
        updates: list[UpdateOne] = []
        cursor = collection.find(LACKING_THE_KEY, projection, batch_size=BATCH).sort("_id", 1)
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
