"""A small LRU of what recent reads saw, per query shape: the window readers (search `_id`
windows, history `updated` windows) size their first window from it. Only speed depends on it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Recent(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        found = self._seen.get(key)
        if found is not None:
            self._seen.move_to_end(key)
        return found

    def learn(self, key: K, value: V) -> None:
        self._seen[key] = value
        self._seen.move_to_end(key)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)
