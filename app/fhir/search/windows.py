"""Reading a page in `_id` order through bounded `_id` windows.

The embedded server answers a find by loading every index match before it sorts and limits
(about 40 µs per document), so `Observation?code=X` with 10,000 matches cost ~400 ms for a page
of 50 whatever the limit. Bounding `_id` from both sides limits what it loads to one window: with
an index `(s.code, deleted, _id)` the filter `{s.code, deleted, _id: {$gt, $lt}}` is one index
range. A page walks windows outward from the cursor, growing each one, until it holds `want`
documents or reaches the end of the id space; the windows are contiguous and ordered, so the
page is exactly the first `want` matches beyond the cursor whatever the ids look like.

Window widths are computed on a numeric image of the id (`position`): FHIR ids use 64
characters, read as base-65 digits (0 = end of string). Only speed depends on how well the
widths fit the data; the first width comes from `WidthHints`, what earlier searches of the same
shape saw (the density of matches near their page, and where the matches began). On MongoDB
the same query is one bounded index scan per window.
"""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from app.fhir.recent import Recent

JsonDict = dict[str, Any]

# FHIR id characters ([A-Za-z0-9\-\.]) in byte order, which is MongoDB's string order for them.
ALPHABET = "-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE = len(ALPHABET) + 1
_DIGITS = 8
SPACE = _BASE**_DIGITS
GROWTH = 4
# Without a hint: the width holding `want` ids if a million uuid-like ids all matched.
_UUID_SHARE = 16 / _BASE  # uuid ids start with one of 16 of the 65 digit values
_DEFAULT_DENSITY = 1_000_000 / (SPACE * _UUID_SHARE)


def position(value: str) -> int:
    """A number that does not decrease as the (FHIR id) string increases."""
    pos = 0
    for index in range(_DIGITS):
        digit = bisect.bisect_right(ALPHABET, value[index]) if index < len(value) else 0
        pos = pos * _BASE + digit
    return pos


def bound(pos: int) -> str:
    """The id string at `pos` (rounded down to a string that exists)."""
    digits: list[int] = []
    for _ in range(_DIGITS):
        pos, digit = divmod(pos, _BASE)
        digits.append(digit)
    out: list[str] = []
    for digit in reversed(digits):
        if digit == 0:
            break
        out.append(ALPHABET[digit - 1])
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Hint:
    """What a search of one shape saw: matches per id-space unit near its page, and where the
    first match lay when it started from the beginning (None: not seen yet)."""

    density: float
    first: int | None = None


class WidthHints:
    """Recent searches' `Hint`s per query shape; they only tune window widths."""

    def __init__(self, size: int = 512) -> None:
        self._recent: Recent[tuple[Any, ...], Hint] = Recent(size)

    def get(self, shape: tuple[Any, ...]) -> Hint:
        return self._recent.get(shape) or Hint(_DEFAULT_DENSITY)

    def learn(self, shape: tuple[Any, ...], hint: Hint) -> None:
        self._recent.learn(shape, hint)


# (condition on _id for one window, how many documents are still wanted) → the window's matches,
# nearest to the start first.
FetchWindow = Callable[[JsonDict, int], Awaitable[list[JsonDict]]]
# Widths are sized for a little more than the page, so one window usually suffices.
_SLACK = 1.3


def _local_density(docs: list[JsonDict]) -> float | None:
    """Matches per unit near the documents found.

    Ids leave whole stretches of the image unused (uuids never hold upper case), at every digit.
    The overall span is the right average unless the documents straddle a wide unused stretch,
    which makes them look 20-400 times sparser and sized the next window to thousands of
    documents; one over the median gap between neighbours ignores that stretch but overstates
    the average about fourfold. The larger of span and median / GROWTH bounds both errors."""
    if len(docs) < 2:
        return None
    positions = [position(str(d["_id"])) for d in docs]
    gaps = sorted(abs(b - a) for a, b in pairwise(positions))
    by_span = (len(docs) - 1) / max(sum(gaps), 1)
    by_median = 1 / max(gaps[len(gaps) // 2], 1)
    return max(by_span, by_median / GROWTH)


async def read_windows(
    fetch: FetchWindow,
    *,
    start: str | None,
    inclusive: bool,
    forward: bool,
    want: int,
    hint: Hint,
) -> tuple[list[JsonDict], Hint]:
    """Up to `want` matches beyond `start` (None: from the end of the id space), nearest first,
    and what was learned for the next search of this shape."""
    kept: list[JsonDict] = []
    near = start
    near_pos = position(start) if start is not None else (0 if forward else SPACE)
    width = max(1, int(want * _SLACK / max(hint.density, 1e-300)))
    # The first window from the very start reaches straight past the empty head of the id
    # space to where matches began last time; it does not widen the windows after it.
    head = hint.first if start is None and forward and hint.first is not None else 0
    while True:
        far_pos = near_pos + head + width if forward else near_pos - width
        far: str | None = None
        if 0 < far_pos < SPACE:
            far = bound(far_pos)
            if far == "" or (near is not None and (far <= near if forward else far >= near)):
                width *= GROWTH
                continue
        condition: JsonDict = {}
        if near is not None:
            condition[("$gt" if forward else "$lt") + ("e" if inclusive else "")] = near
        if far is not None:
            condition["$lt" if forward else "$gte"] = far
        found = await fetch(condition, want - len(kept))
        kept += found
        if len(kept) >= want or far is None:
            break
        # The next window starts where this one ended: `$lt far` then `$gte far` going forward,
        # `$gte far` then `$lt far` going backward; nothing is skipped or read twice.
        near, inclusive, near_pos, head = far, forward, far_pos, 0
        density = _local_density(kept)
        if not found or density is None:
            width *= GROWTH
        else:
            # Sized from the matches seen, never narrower than the last window: the number
            # of windows stays logarithmic even where ids crowd into one position.
            width = max(width, int((want - len(kept)) * _SLACK / density))
    density = _local_density(kept) or hint.density
    first = hint.first
    if start is None and forward and kept:
        first = position(str(kept[0]["_id"]))
    return kept[:want], Hint(max(density, want / SPACE), first)
