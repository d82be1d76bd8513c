"""A read cache of current versions, kept coherent with the database by a change stream.

Reads by id are the most frequent request a FHIR server gets, and each one otherwise costs a
database round trip. The cache holds the current-collection document of recently read
resources. It stays correct because:

- this process invalidates a key as soon as its own transaction commits (read-your-writes);
- every other writer (other workers, other instances, ingestion) is seen through the change
  feed (app.store.changes), which invalidates the key a few milliseconds after their commit;
- a read that raced with an invalidation never stores what it fetched (epoch check below);
- while the change feed is not running (not yet open, broken, or unsupported by the
  server) the cache is bypassed entirely and emptied, so it can only ever be as stale as the
  change-stream lag.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

Doc = dict[str, Any]
Key = tuple[str, str]

# Collections whose documents are not current versions of resources.
NOT_CURRENT = frozenset({"history"})
RECENT_INVALIDATIONS = 4096


class CurrentCache:
    """Subscribe it to a ChangeFeed; until the feed is live the cache is bypassed."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Key, Doc] = OrderedDict()
        # Epoch of the latest invalidation of recently invalidated keys: a read that began
        # before that epoch must not populate the cache with what it fetched.
        self._invalidated: OrderedDict[Key, int] = OrderedDict()
        self._epoch = 0
        # Reads that began before this epoch never populate the cache: their key's
        # invalidation may have been forgotten, or the feed was down while they ran.
        self._floor = 0
        self._feed_live = False
        self.hits = 0
        self.misses = 0

    @property
    def live(self) -> bool:
        return self._feed_live and self.max_entries > 0

    # ChangeFeed subscriber

    def on_live(self, live: bool) -> None:
        self._entries.clear()
        self._epoch += 1
        self._floor = self._epoch
        self._feed_live = live

    def on_change(self, collection: str, operation: str, key: Any, document: Doc | None) -> None:
        if collection in NOT_CURRENT:
            return
        if key is None:
            # A whole collection changed (drop, rename): forget everything.
            self.on_live(self._feed_live)
            return
        self.invalidate(collection, str(key))

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
