"""`_id` windows (windows.py): the id image keeps order, and a page read through windows is
exactly the slice of the sorted matches beyond the cursor, whatever the ids and the hints; and
the executor's keyset pages walk a many-match search forward and back without loss."""

from __future__ import annotations

import random
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from pymongo import AsyncMongoClient

from app.fhir.search.windows import ALPHABET, SPACE, Hint, bound, position, read_windows
from tests.search.conftest import LOINC, SearchWorld, match_ids, new_world, parse_items

JsonDict = dict[str, Any]


def _random_id(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12)))


def test_position_never_decreases_with_the_id() -> None:
    rng = random.Random(5)
    ids = sorted({_random_id(rng) for _ in range(3000)} | {"a", "a-", "a.", "b", "zz", "-"})
    positions = [position(i) for i in ids]
    assert positions == sorted(positions)


def test_bound_is_an_id_at_or_below_the_position() -> None:
    rng = random.Random(6)
    for _ in range(2000):
        pos = rng.randrange(SPACE)
        text = bound(pos)
        assert position(text) <= pos
        assert all(c in ALPHABET for c in text)


def _store(ids: list[str]) -> tuple[list[str], list[tuple[JsonDict, int]], Any]:
    """Sorted ids and a fetch answering an `_id` window the way MongoDB would."""
    ordered = sorted(ids)
    calls: list[tuple[JsonDict, int]] = []

    def inside(value: str, window: JsonDict) -> bool:
        checks = {
            "$gt": value.__gt__,
            "$gte": value.__ge__,
            "$lt": value.__lt__,
            "$lte": value.__le__,
        }
        return all(checks[op](bound_) for op, bound_ in window.items())

    def fetcher(forward: bool) -> Any:
        async def fetch(window: JsonDict, limit: int) -> list[JsonDict]:
            calls.append((window, limit))
            found = [{"_id": i} for i in ordered if inside(i, window)]
            return (found if forward else found[::-1])[:limit]

        return fetch

    return ordered, calls, fetcher


ID_SETS = {
    "uuids": [str(uuid.UUID(int=random.Random(1).getrandbits(128) + n)) for n in range(300)],
    "random uuids": [str(uuid.UUID(int=random.Random(n).getrandbits(128))) for n in range(300)],
    "numbers": [str(n) for n in range(1, 400)],
    "mixed": [_random_id(random.Random(n)) for n in range(300)] + ["-", ".", "zzzzzzzzzzzz"],
    "one": ["only"],
    "none": [],
}
HINTS = [
    Hint(1e-30),
    Hint(1.0),
    Hint(1e-12),
    Hint(1e-9, first=0),
    Hint(1e-12, first=SPACE - 10),
    Hint(1e-12, first=position("5")),
]


@pytest.mark.parametrize("name", sorted(ID_SETS))
async def test_windowed_read_is_the_exact_slice_beyond_the_cursor(name: str) -> None:
    rng = random.Random(name)
    ordered, _, fetcher = _store(ID_SETS[name])
    starts: list[str | None] = [
        None,
        "",
        "0",
        "zzzzzzzzzzzzzz",
        *rng.sample(ordered, min(5, len(ordered))),
    ]
    for start in starts:
        for forward in (True, False):
            for inclusive in (False, True):
                for want in (1, 7, 51, 1000):
                    for hint in HINTS:
                        if start is None:
                            beyond = ordered if forward else ordered[::-1]
                        elif forward:
                            beyond = [i for i in ordered if i > start or (inclusive and i == start)]
                        else:
                            below = [i for i in ordered if i < start or (inclusive and i == start)]
                            beyond = below[::-1]
                        docs, learned = await read_windows(
                            fetcher(forward),
                            start=start,
                            inclusive=inclusive,
                            forward=forward,
                            want=want,
                            hint=hint,
                        )
                        assert [d["_id"] for d in docs] == beyond[:want], (start, forward, hint)
                        assert learned.density > 0


async def test_a_good_hint_reads_one_window() -> None:
    ids = [str(uuid.UUID(int=random.Random(n).getrandbits(128))) for n in range(2000)]
    ordered, calls, fetcher = _store(ids)
    _, learned = await read_windows(
        fetcher(True), start=None, inclusive=False, forward=True, want=51, hint=Hint(1e-30)
    )
    calls.clear()
    docs, _ = await read_windows(
        fetcher(True), start=ordered[400], inclusive=False, forward=True, want=51, hint=learned
    )
    assert [d["_id"] for d in docs] == ordered[401:452]
    # One window, or a few more where it ends in a stretch uuids never use (upper case).
    assert len(calls) <= 3


# --- through the executor ------------------------------------------------------------------


@pytest.fixture(scope="module")
async def many(mongo: AsyncMongoClient[JsonDict]) -> SearchWorld:
    world = await new_world(mongo, ["Observation", "Patient"])
    rng = random.Random(11)
    for n in range(120):
        # Ids of three shapes, so windows meet empty stretches and dense ones.
        oid = (str(uuid.UUID(int=rng.getrandbits(128))), f"obs{n:03d}", f"Z-{n}")[n % 3]
        code = "8867-4" if n % 4 else "9279-1"
        await world.put(
            {
                "resourceType": "Observation",
                "id": oid,
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": code}]},
                "subject": {"reference": f"Patient/p{n % 2}"},
            }
        )
    return world


def _follow(bundle: JsonDict, relation: str) -> list[tuple[str, str]] | None:
    url = next((x["url"] for x in bundle["link"] if x["relation"] == relation), None)
    return None if url is None else parse_qsl(urlsplit(url).query, keep_blank_values=True)


async def _walk(world: SearchWorld, query: str) -> list[str]:
    items: list[tuple[str, str]] | None = parse_items(query)
    seen: list[str] = []
    while items is not None:
        bundle = await world.search("Observation", items)
        seen += match_ids(bundle)
        items = _follow(bundle, "next")
    return seen


async def _expected(world: SearchWorld, code: str) -> list[str]:
    docs = await world.store.find("Observation", {}, projection={"resource": 1})
    return sorted(d["_id"] for d in docs if d["resource"]["code"]["coding"][0]["code"] == code)


@pytest.mark.parametrize("count", [1, 7, 50, 200])
async def test_keyset_pages_walk_every_match_once_in_id_order(
    many: SearchWorld, count: int
) -> None:
    expected = await _expected(many, "8867-4")
    assert len(expected) == 90
    assert await _walk(many, f"code=8867-4&_count={count}") == expected
    assert await _walk(many, f"code=8867-4&_count={count}&_sort=-_id") == expected[::-1]


async def test_keyset_pages_walk_back_with_previous_links(many: SearchWorld) -> None:
    expected = await _expected(many, "9279-1")
    bundle = await many.search("Observation", "code=9279-1&_count=4")
    pages = [match_ids(bundle)]
    while (items := _follow(bundle, "next")) is not None:
        bundle = await many.search("Observation", items)
        pages.append(match_ids(bundle))
    assert [i for page in pages for i in page] == expected
    back: list[list[str]] = []
    while (items := _follow(bundle, "previous")) is not None:
        bundle = await many.search("Observation", items)
        back.append(match_ids(bundle))
    assert back == pages[:-1][::-1]
