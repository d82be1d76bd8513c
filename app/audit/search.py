"""Auditors' AuditEvent searches, answered from the block index (block_index.py).

The ordinary search engine parses and compiles the query, pages, counts, shapes and links the
Bundle; this subclass only changes where matching events come from. The database is asked for
the index documents of the blocks that may hold a match: the filter's positive conditions
(equalities, ranges, presence), which the union of a block's keys meets whenever one of its
events does. Every event of those blocks is then matched exactly, on its own keys, with the
whole filter (compile.recheck), negations included. The AuditEvents themselves are read from
the journal afterwards and checked against their hash (journal.resources_of).

Order. Events are read block by block, in windows of the `last` index, in chain order or
against it, so a page in `_id` order reads about as many blocks as it needs. `recorded` does
not go back along the chain (chain.link), so `date` order is chain order too, and the ties
of one millisecond are broken by `_id` in the same direction; a page sorted by `date` is read
the same way wherever the stretch it reads is in order (the `run` of block_index.py). Any
other order, or a stretch written before the writer kept `recorded` in order, is answered by
matching every candidate block and sorting the matches.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from functools import partial
from typing import Any

from app.audit.block_index import event_document, indexed_events
from app.audit.chain import BLOCK_INDEX, PATIENT_INDEX, PATIENT_KEY
from app.audit.journal import (
    MAX_BLOCK_EVENTS,
    WINDOW_EVENTS,
    UnreadableBlock,
    checkpoint_seq,
    resources_of,
)
from app.audit.projection import AuditIndex
from app.fhir.search.compile import recheck
from app.fhir.search.execute import SearchEngine, TypeSearch
from app.fhir.search.paging import Cursor
from app.fhir.search.parse import SearchQuery
from app.fhir.search.plan import SortOrder
from app.store.versions import Store

JsonDict = dict[str, Any]

# Sort fields that follow chain order (AuditEvent's `date` is its `recorded`).
_CHAIN_ORDERED = frozenset({"_id", "s.date:lo", "s.date:hi"})
_POSITIVE_OPERATORS = frozenset({"$in", "$gt", "$gte", "$lt", "$lte"})


def block_filter(flat: JsonDict) -> JsonDict | None:
    """The conditions of a flat event filter that every block holding a match meets, on the
    union of its events' keys; None if no event can match."""
    out: JsonDict = {}
    for name, condition in flat.items():
        if name in ("_id", "deleted"):
            continue  # not in a block's keys; matched per event
        if not isinstance(condition, dict):
            out[name] = condition
            continue
        if condition.get("$in") == []:
            return None
        positive = {op: v for op, v in condition.items() if op in _POSITIVE_OPERATORS}
        if condition.get("$exists") is True:
            positive["$exists"] = True
        if positive:
            out[name] = positive
    return out


def _matches(search: TypeSearch, document: JsonDict) -> bool:
    """The whole filter, on one event: recheck reads every field but `_id` from `s`."""
    view = {
        "_id": document["_id"],
        "s": {**document["s"], "compartments": document["compartments"], "deleted": [False]},
    }
    return recheck(search.split.flat, view) and search.split.holds(view)


class AuditSearchEngine(SearchEngine):
    """SearchEngine over the audit log's block index (see the module docstring)."""

    def __init__(self, store: Store, index: AuditIndex, **options: Any) -> None:
        # Matches are read from the journal, checked against their hash.
        super().__init__(store, hydrate=partial(resources_of, index.database), **options)
        self.index = index
        self._patient_index: bool | None = None

    async def _has_patient_index(self) -> bool:
        """Whether the block index has its patient index (log.ensure_indexes), looked up once:
        it is made before the server starts, and never dropped by it."""
        if self._patient_index is None:
            blocks = self.index.database[BLOCK_INDEX]
            names = [index["name"] async for index in await blocks.list_indexes()]
            self._patient_index = PATIENT_INDEX in names
        return self._patient_index

    def _result_order(self, head: SearchQuery, searches: list[TypeSearch]) -> SortOrder:
        """Ties are broken by `_id` in the direction of the first sort field, which makes a
        `date` order the chain's order (module docstring); any tie order is R4's to choose."""
        order = super()._result_order(head, searches)
        if len(order.spec) >= 2 and order.spec[-1][0] == "_id":
            direction = order.spec[0][1]
            order = SortOrder((*order.spec[:-1], ("_id", direction)))
        return order

    async def _type_page(
        self, search: TypeSearch, order: SortOrder, cursor: Cursor | None, want: int
    ) -> list[JsonDict]:
        forward = cursor is None or cursor.forward
        beyond = order.comparable(cursor.key) if cursor is not None else None
        rtype = search.resource_type

        def is_beyond(document: JsonDict) -> bool:
            if beyond is None:
                return True
            key = order.key(document, rtype)
            return key > beyond if forward else key < beyond

        upward = (order.spec[0][1] == 1) == forward
        start = int(cursor.key[-1]) if cursor is not None else None
        bounds = await self._bounds()
        if await self._in_chain_order(order, upward, start, bounds):
            found: list[JsonDict] = []
            page = self._events(search, bounds, upward=upward, start=start)
            async with aclosing(page) as events:
                async for document in events:
                    if is_beyond(document):
                        found.append(document)
                        if len(found) >= want:
                            break
            return found
        matches = [d async for d in self._events(search, bounds, upward=True) if is_beyond(d)]
        matches.sort(key=lambda d: order.key(d, rtype), reverse=not forward)
        return matches[:want]

    async def _count(self, search: TypeSearch) -> int:
        bounds = await self._bounds()
        return sum([1 async for _ in self._events(search, bounds, upward=True)])

    async def _bounds(self) -> tuple[int, int]:
        """The seqs the index covers: after the retention checkpoint, through the watermark."""
        return await checkpoint_seq(self.index.database), await self.index.watermark()

    async def _in_chain_order(
        self, order: SortOrder, upward: bool, start: int | None, bounds: tuple[int, int]
    ) -> bool:
        """Whether the order is the chain's over every event a page starting at `start` may
        need: always for `_id`; for `date`, where the index's in-order stretch covers them."""
        fields = [name for name, _ in order.spec]
        directions = {direction for _, direction in order.spec}
        if fields[-1] != "_id" or not set(fields) <= _CHAIN_ORDERED or len(directions) > 1:
            return False
        if fields == ["_id"]:
            return True
        floor, head = bounds
        newest = await self.index.previous(head)
        if newest is None:
            return True  # nothing indexed after the checkpoint
        chain_start = floor + 1
        # Upward, the page reads from `start` to the head; downward, from `start` to the start.
        reach = start if upward and start is not None else chain_start
        return newest.run <= reach

    async def _events(
        self,
        search: TypeSearch,
        bounds: tuple[int, int],
        *,
        upward: bool,
        start: int | None = None,
    ) -> AsyncGenerator[JsonDict, None]:
        """The events meeting the search's filter, in chain order (or against it), strictly
        after (before) `start` when given."""
        wanted = block_filter(search.split.flat)
        if wanted is None:
            return
        async for block in self._blocks(wanted, bounds, upward=upward, start=start):
            try:
                entries = indexed_events(block)
            except ValueError as exc:
                raise UnreadableBlock(str(exc)) from None
            if not upward:
                entries.reverse()
            for entry in entries:
                if start is not None and (entry.seq <= start if upward else entry.seq >= start):
                    continue
                document = event_document(entry, str(block["_id"]))
                if _matches(search, document):
                    yield document

    async def _blocks(
        self, wanted: JsonDict, bounds: tuple[int, int], *, upward: bool, start: int | None
    ) -> AsyncGenerator[JsonDict, None]:
        """Index documents meeting `wanted`, in chain order (or against it), from `start`."""
        floor, head = bounds
        patient = PATIENT_KEY in wanted and await self._has_patient_index()
        blocks = self.index.database[BLOCK_INDEX]
        projection = {"first": 1, "last": 1, "events": 1}
        for flt in _block_queries(wanted, patient, upward, start, floor, head):
            found = blocks.find(flt, projection).sort("last", 1 if upward else -1)
            try:
                async for block in found:
                    yield block
            finally:
                await found.close()


def _block_queries(
    wanted: JsonDict, patient: bool, upward: bool, start: int | None, floor: int, head: int
) -> Iterator[JsonDict]:
    """The queries that read the candidate blocks after `floor` (the checkpoint) and through
    `head`, beyond `start`, in order. With the patient index, one query reads one patient's
    blocks; otherwise windows of WINDOW_EVENTS seqs of the `last` index each read a narrow
    range (on the embedded server a sort over a wider range loads every document in it, and
    a window's query driven by another index would read all of its matches again)."""
    low = max(floor, (start or 0) - 1) if upward else floor
    # Downward, the block holding `start` may end up to a block's length after it.
    high = head if upward or start is None else min(head, start + MAX_BLOCK_EVENTS)
    if patient:
        yield {PATIENT_KEY: wanted[PATIENT_KEY], "last": {"$gt": low, "$lte": high}, **wanted}
        return
    while low < high:
        if upward:
            window = (low, min(low + WINDOW_EVENTS, high))
            low = window[1]
        else:
            window = (max(low, high - WINDOW_EVENTS), high)
            high = window[0]
        # The window goes first: the embedded server's planner takes the index of the first
        # indexed field it meets.
        yield {"last": {"$gt": window[0], "$lte": window[1]}, **wanted}
