"""Pages sorted by `_lastUpdated`, read through bounded windows of the sort key.

The embedded server loads every match of a find before it sorts and limits, whatever the index:
`Observation?_sort=-_lastUpdated&_count=10` over 85,000 Observations loaded all of them (33 s).
Bounding the key from both sides limits a find to one index range of `s._lastUpdated:lo`. A page
walks windows from its cursor (or from the end its order starts at) in the order's direction,
each starting where the last ended, until it holds the page or passes the last possible value;
the windows are contiguous and ordered, so the page is exactly the next documents in key order.

Only for keys every document has, with one value each (compile.POINT_DATES): a window then
holds exactly the documents whose key lies in it. Widths come from the density the last page of
the same shape saw (a second without one), follow the density seen, and grow fourfold past
empty stretches, so a quiet year costs a dozen empty index probes. A burst of writes behind a
quiet stretch is still read in one crowded window, once: pages after it start at their cursor,
and first pages at the end of the order the write clock knows, the newest write (or a newer key
an earlier page saw) or the oldest; the first window takes in everything beyond that end, so a
clock that is wrong costs time, never a document. Only speed depends on the widths and these
guesses. On MongoDB each window is one bounded index scan.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

JsonDict = dict[str, Any]

GROWTH = 4
# Small: an empty window costs one index probe, a crowded one loads every document in it.
FIRST_WIDTH_MS = 1_000
_SLACK = 1.3
# Past the newest key thought to exist by this much, an upward walk takes everything left in one
# window: another instance's clock may run a little ahead of ours.
CLOCK_MARGIN_MS = 60_000

# (condition on the key for one window) → the window's documents that belong on the page
# (residual filter and cursor applied), nearest to the walk's start first.
FetchWindow = Callable[[JsonDict], Awaitable[list[JsonDict]]]
# A document's key (epoch ms), to measure the density of a window.
KeyOf = Callable[[JsonDict], int]


async def walk_key_windows(
    fetch: FetchWindow,
    *,
    upward: bool,
    start: int | None,
    want: int,
    lowest: int,
    highest: int,
    newest: int,
    key_of: KeyOf,
    density: float | None = None,
    oldest: int | None = None,
) -> tuple[list[JsonDict], float | None]:
    """Up to `want` documents from `start` (inclusive: the cursor's own key may be shared by
    documents on both sides of it; None: upward from below `oldest`, the oldest key thought to
    exist, or downward from above `newest`, the newest), nearest to it first, and the density
    they had (documents per ms) to size the next page's first window. Only keys in [lowest,
    highest] are read (the search's own range on the key, or every key there is): each window
    is bounded on both sides, which the embedded server needs to use the index."""
    kept: list[JsonDict] = []
    if lowest > highest:
        return kept, density
    width = FIRST_WIDTH_MS if not density else max(1, int(want * _SLACK / density))
    # The bound already walked past: (key, inclusive), or None for the very end of the order.
    edge: tuple[int, bool] | None = None if start is None else (start, True)
    while True:
        condition: JsonDict = {}
        if edge is not None:
            value, inclusive = edge
            condition[("$gt" if upward else "$lt") + ("e" if inclusive else "")] = value
        if upward:
            # With no cursor the first window is open below: nothing older can be missed.
            near = edge[0] if edge is not None else max(lowest, oldest or lowest)
            far = near + width
            last = far > highest or near > newest + CLOCK_MARGIN_MS
            condition["$lte" if last else "$lt"] = highest if last else far
            condition.setdefault("$gte", lowest)
        else:
            # With no cursor the first window is open above: nothing newer can be missed.
            near = edge[0] if edge is not None else min(newest, highest)
            far = near - width
            last = far < lowest
            condition["$gte"] = lowest if last else far
            if edge is None:
                condition["$lte"] = highest
        found = await fetch(condition)
        kept += found
        if len(kept) >= want or last:
            page = kept[:want]
            return page, _density(page, key_of) or density
        # The next window starts where this one ended: `$lt far` then `$gte far` upward,
        # `$gte far` then `$lt far` downward; nothing is skipped or read twice.
        edge = (far, upward)
        seen = _density(found, key_of)
        if seen:
            # Never narrower than the last window: the number of windows stays logarithmic.
            width = max(width, int((want - len(kept)) * _SLACK / seen))
        elif not found:
            width *= GROWTH


def _density(docs: list[JsonDict], key_of: KeyOf) -> float | None:
    if len(docs) < 2:
        return None
    return (len(docs) - 1) / max(abs(key_of(docs[-1]) - key_of(docs[0])), 1)


__all__ = ["walk_key_windows"]
