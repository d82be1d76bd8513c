"""When each resource type first and last got a new version, as far as this process knows.

Type and system history pages are read in `updated` windows back from the newest version
(fhir/history_windows.py). Starting those windows at the newest version, instead of at now,
spares a page the walk back through a quiet stretch, whose last, widest window would take in a
whole burst of writes behind it. The clock learns from this process's own writes, from every
other writer through the change feed, and from the history pages it serves. It only steers
speed: the first window of a page is open-ended upwards, so a version the clock missed is still
read.

Pages sorted by `_lastUpdated` start their windows at either end the same way
(search/key_windows.py): descending at the newest write, ascending at the oldest, whose first
window is open-ended downwards.

So that a restarted server knows too, the clock is kept in the `write_clock` collection (one
small document per type), written outside the write transactions and at most once a second
per type and process: what it lags by is only more to read in one first window.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

ALL_TYPES = "*"
COLLECTION = "write_clock"
PERSIST_EVERY = timedelta(seconds=1)


class WriteClock:
    def __init__(self) -> None:
        self._newest: dict[str, datetime] = {}
        self._oldest: dict[str, datetime] = {}
        # Scopes stored before the clock kept first writes: their oldest stays unknown.
        self._oldest_unknown: set[str] = set()
        self._persisted: dict[str, datetime] = {}

    async def load(self, db: AsyncDatabase[Any]) -> None:
        async for doc in db[COLLECTION].find({}):
            scope, at, first = str(doc["_id"]), doc.get("at"), doc.get("first")
            if isinstance(first, datetime):
                self._note_scope(scope, first)
            else:
                self._oldest_unknown.add(scope)
            if isinstance(at, datetime):
                self._note_scope(scope, at)
                self._persisted[scope] = at

    async def persist(self, db: AsyncDatabase[Any]) -> None:
        """Store the types whose newest write moved on by a second or more since last time."""
        for scope, newest in list(self._newest.items()):
            known = self._persisted.get(scope)
            if known is not None and newest - known < PERSIST_EVERY:
                continue
            self._persisted[scope] = newest
            update: dict[str, Any] = {"$max": {"at": newest}}
            oldest = self.oldest(scope)
            if oldest is not None:
                update["$min"] = {"first": oldest}
            await db[COLLECTION].update_one({"_id": scope}, update, upsert=True)

    def note(self, resource_type: str, updated: datetime) -> None:
        for scope in (resource_type, ALL_TYPES):
            self._note_scope(scope, updated)

    def _note_scope(self, scope: str, updated: datetime) -> None:
        newest = self._newest.get(scope)
        if newest is None or updated > newest:
            self._newest[scope] = updated
        oldest = self._oldest.get(scope)
        if oldest is None or updated < oldest:
            self._oldest[scope] = updated

    def newest(self, scope: str) -> datetime | None:
        return self._newest.get(scope)

    def oldest(self, scope: str) -> datetime | None:
        """The first write known: a store's documents are (nearly all) no older."""
        return None if scope in self._oldest_unknown else self._oldest.get(scope)

    # Change feed subscriber: a version written elsewhere lands in `history` as `Type/id/vid`.

    def on_change(
        self, collection: str, operation: str, key: Any, document: dict[str, Any] | None
    ) -> None:
        if collection == "history" and operation == "insert" and isinstance(key, str):
            self.note(key.split("/", 1)[0], datetime.now(UTC))

    def on_live(self, live: bool) -> None:
        """Nothing to drop: a missed write only costs the next page a wider first window."""


__all__ = ["ALL_TYPES", "WriteClock"]
