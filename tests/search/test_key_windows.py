"""`_lastUpdated` orders read through windows of the key (key_windows.py): a page is exactly the
next documents in (key, id) order beyond the cursor, whatever the gaps, ties, densities and
clock guesses, every window is bounded on both sides; and the executor's pages sorted by
`_lastUpdated` walk a store forward and back without loss."""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from pymongo import AsyncMongoClient, monitoring

from app.fhir.search.compile import DATE_CEILING
from app.fhir.search.execute import SearchEngine
from app.fhir.search.key_windows import walk_key_windows
from app.store.client import EmbeddedServer
from app.store.versions import Store
from tests.search.conftest import (
    LOINC,
    SearchWorld,
    match_ids,
    new_world,
    parse_items,
    plan_stages,
)

JsonDict = dict[str, Any]
LOWEST, HIGHEST = -(10**14), 10**14
NOW = 1_790_000_000_000  # 2026-09


def _keys(shape: str) -> list[int]:
    """Keys (epoch ms) of a store, with repeats: several documents written in one millisecond."""
    rng = random.Random(shape)
    if shape == "steady":
        return [NOW - 400_000 + 1000 * n for n in range(400)]
    if shape == "burst behind a quiet year":
        return [NOW - 400 * 86_400_000 + rng.randrange(20) for _ in range(300)] + [NOW - 5]
    if shape == "ties":
        return [NOW - 3_000 + rng.randrange(3) for _ in range(200)]
    if shape == "spread over decades":
        return [NOW - rng.randrange(40 * 365 * 86_400_000) for _ in range(300)]
    if shape == "one":
        return [NOW]
    return []


SHAPES = ["steady", "burst behind a quiet year", "ties", "spread over decades", "one", "none"]


class KeyStore:
    """Documents with a key and an id, answering a window the way the executor's fetch does:
    the documents whose key lies in it, beyond the cursor (key, id), nearest first."""

    def __init__(self, keys: list[int]) -> None:
        self.docs = sorted((key, f"id{n:04d}") for n, key in enumerate(keys))
        self.windows: list[JsonDict] = []

    def fetcher(self, upward: bool, beyond: tuple[int, str] | None) -> Any:
        checks = {"$gt": int.__gt__, "$gte": int.__ge__, "$lt": int.__lt__, "$lte": int.__le__}

        async def fetch(window: JsonDict) -> list[JsonDict]:
            self.windows.append(window)
            found = [
                {"key": key, "_id": did}
                for key, did in self.docs
                if all(checks[op](key, bound) for op, bound in window.items())
                and (beyond is None or ((key, did) > beyond if upward else (key, did) < beyond))
            ]
            return found if upward else found[::-1]

        return fetch

    def expected(
        self,
        upward: bool,
        beyond: tuple[int, str] | None,
        want: int,
        bounds: tuple[int, int] = (LOWEST, HIGHEST),
    ) -> list[str]:
        ordered = [d for d in self.docs if bounds[0] <= d[0] <= bounds[1]]
        ordered = ordered if upward else ordered[::-1]
        if beyond is not None:
            ordered = [d for d in ordered if (d > beyond if upward else d < beyond)]
        return [did for _, did in ordered[:want]]

    async def walk(
        self,
        beyond: tuple[int, str] | None,
        *,
        upward: bool,
        want: int,
        newest: int = NOW,
        oldest: int | None = None,
        density: float | None = None,
        bounds: tuple[int, int] = (LOWEST, HIGHEST),
    ) -> tuple[list[str], float | None]:
        """One page beyond the cursor (None: from the end the order starts at)."""
        self.windows.clear()
        docs, learned = await walk_key_windows(
            self.fetcher(upward, beyond),
            upward=upward,
            start=None if beyond is None else beyond[0],
            want=want,
            lowest=bounds[0],
            highest=bounds[1],
            newest=newest,
            key_of=lambda doc: int(doc["key"]),
            density=density,
            oldest=oldest,
        )
        return [str(d["_id"]) for d in docs], learned


def _bounded(window: JsonDict) -> bool:
    return bool({"$gt", "$gte"} & window.keys()) and bool({"$lt", "$lte"} & window.keys())


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_page_is_the_exact_slice_beyond_the_cursor(shape: str) -> None:
    store = KeyStore(_keys(shape))
    rng = random.Random(shape + "cursors")
    cursors: list[tuple[int, str] | None] = [None, (NOW - 10**12, ""), (NOW + 10**9, "")]
    cursors += rng.sample(store.docs, min(6, len(store.docs)))
    # The clock's guesses at either end: right, or wrong either way.
    ends = [(NOW, None), (NOW - 86_400_000, NOW), (NOW + 86_400_000, NOW - 500 * 86_400_000)]
    # The search's own range on the key (`_lastUpdated=gt…&_lastUpdated=lt…`), if any.
    ranges = [(LOWEST, HIGHEST), (NOW - 200_000, NOW - 100_000), (NOW - 2_000, NOW + 5)]
    for beyond, bounds in [(c, r) for c in cursors for r in ranges]:
        if beyond is not None and not bounds[0] <= beyond[0] <= bounds[1]:
            continue  # a cursor is always a matching document's key
        for upward in (True, False):
            for want in (1, 7, 51, 1000):
                for density in (None, 1e-9, 1.0, 50.0):
                    for newest, oldest in ends:
                        ids, learned = await store.walk(
                            beyond,
                            upward=upward,
                            want=want,
                            newest=newest,
                            oldest=oldest,
                            density=density,
                            bounds=bounds,
                        )
                        case = (beyond, bounds, upward, want, density, newest, oldest)
                        assert ids == store.expected(upward, beyond, want, bounds), case
                        assert all(_bounded(w) for w in store.windows), case
                        assert learned is None or learned > 0


async def test_a_learned_density_reads_the_next_page_in_one_or_two_windows() -> None:
    store = KeyStore(_keys("steady"))
    ids, density = await store.walk(None, upward=False, want=20)
    assert ids[0] == store.docs[-1][1] and density is not None
    last = next(doc for doc in store.docs if doc[1] == ids[-1])
    ids, _ = await store.walk(last, upward=False, want=20, density=density)
    assert ids == store.expected(False, last, 20)
    assert len(store.windows) <= 2


async def test_a_quiet_stretch_costs_a_few_empty_windows_not_one_per_second() -> None:
    store = KeyStore(_keys("burst behind a quiet year"))
    ids, _ = await store.walk(store.docs[-1], upward=False, want=10)
    assert len(ids) == 10
    # A year is 3e10 ms: from 1 s windows growing fourfold, about 13 windows reach across it.
    assert len(store.windows) <= 16


# --- through the executor ------------------------------------------------------------------


@pytest.fixture(scope="module")
async def written(mongo: AsyncMongoClient[JsonDict]) -> SearchWorld:
    world = await new_world(mongo, ["Observation"])
    rng = random.Random(12)
    ids = [f"o{n:03d}" for n in range(90)]
    for oid in ids:
        await world.put(_observation(oid, "final"))
    # Updates move a resource to the newest end; deletes take it out of every page.
    for oid in rng.sample(ids, 15):
        await world.put(_observation(oid, "amended"))
    for oid in rng.sample(ids, 10):
        await world.interactions.delete("Observation", oid)
    return world


def _observation(oid: str, status: str) -> JsonDict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
    }


def _follow(bundle: JsonDict, relation: str) -> list[tuple[str, str]] | None:
    url = next((x["url"] for x in bundle["link"] if x["relation"] == relation), None)
    return None if url is None else parse_qsl(urlsplit(url).query, keep_blank_values=True)


async def _pages(world: SearchWorld, query: str) -> tuple[list[list[str]], JsonDict]:
    items: list[tuple[str, str]] | None = parse_items(query)
    pages: list[list[str]] = []
    bundle: JsonDict = {}
    while items is not None:
        bundle = await world.search("Observation", items)
        pages.append(match_ids(bundle))
        items = _follow(bundle, "next")
    return pages, bundle


async def _by_last_updated(world: SearchWorld) -> list[str]:
    docs = await world.store.find("Observation", {"deleted": False})
    docs.sort(key=lambda d: (d["resource"]["meta"]["lastUpdated"], d["_id"]))
    return [d["_id"] for d in docs]


@pytest.mark.parametrize("count", [1, 7, 50, 200])
async def test_last_updated_pages_walk_every_resource_once_in_order(
    written: SearchWorld, count: int
) -> None:
    expected = await _by_last_updated(written)
    assert len(expected) == 80
    up, _ = await _pages(written, f"_sort=_lastUpdated&_count={count}")
    down, _ = await _pages(written, f"_sort=-_lastUpdated&_count={count}")
    assert [i for page in up for i in page] == expected
    assert [i for page in down for i in page] == expected[::-1]


async def test_last_updated_pages_walk_back_with_previous_links(written: SearchWorld) -> None:
    pages, bundle = await _pages(written, "_sort=-_lastUpdated&_count=9")
    back: list[list[str]] = []
    while (items := _follow(bundle, "previous")) is not None:
        bundle = await written.search("Observation", items)
        back.append(match_ids(bundle))
    assert back == pages[:-1][::-1]


async def test_a_new_write_leads_the_next_first_page(written: SearchWorld) -> None:
    oldest = (await _by_last_updated(written))[0]
    first = await written.search("Observation", "_sort=-_lastUpdated&_count=3")
    await written.put(_observation(oldest, "corrected"))
    again = await written.search("Observation", "_sort=-_lastUpdated&_count=3")
    assert match_ids(again) == [oldest, *match_ids(first)[:2]]


async def _by_last_updated_docs(world: SearchWorld) -> list[tuple[str, str]]:
    docs = await world.store.find("Observation", {"deleted": False})
    return sorted((d["resource"]["meta"]["lastUpdated"], d["_id"]) for d in docs)


@pytest.mark.parametrize("count", [1, 7, 200])
async def test_what_changed_since_pages_oldest_change_first(
    written: SearchWorld, count: int
) -> None:
    """No `_sort`: a search on `_lastUpdated` alone is ordered by it (R4 leaves the order of an
    unsorted search to the server), read through windows of its key from the bound up."""
    changes = await _by_last_updated_docs(written)
    since = changes[30][0]
    pages, _ = await _pages(written, f"_lastUpdated=gt{since}&_count={count}")
    assert [i for page in pages for i in page] == [i for at, i in changes if at > since]
    until = changes[60][0]
    pages, _ = await _pages(
        written, f"_lastUpdated=ge{since}&_lastUpdated=lt{until}&_count={count}"
    )
    assert [i for page in pages for i in page] == [i for at, i in changes if since <= at < until]


async def test_what_changed_since_with_another_condition_keeps_id_order(
    written: SearchWorld,
) -> None:
    changes = await _by_last_updated_docs(written)
    since = changes[30][0]
    query = f"_lastUpdated=gt{since}&status=amended,final,corrected&_count=9"
    pages, _ = await _pages(written, query)
    assert [i for page in pages for i in page] == sorted(i for at, i in changes if at > since)


class FindFilters(monitoring.CommandListener):
    """The filter of every find sent to the Observation collection."""

    def __init__(self) -> None:
        self.filters: list[JsonDict] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command["find"] == "Observation":
            self.filters.append(dict(event.command["filter"]))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def _watched_pages(
    world: SearchWorld, database: EmbeddedServer, query: str
) -> tuple[list[list[str]], list[JsonDict]]:
    """The pages of `query`, and the filter of every find they sent to the database."""
    listener = FindFilters()
    client: AsyncMongoClient[JsonDict] = AsyncMongoClient(database.uri, event_listeners=[listener])
    try:
        engine = SearchEngine(Store(client[world.store.db.name]), cursor_secret=b"k")
        watched = SearchWorld(world.store, engine, world.interactions)
        pages, _ = await _pages(watched, query)
    finally:
        await client.close()
    return pages, listener.filters


@pytest.mark.parametrize("query", ["_sort=-_lastUpdated&_count=7", "_lastUpdated=gt2020-01-01"])
async def test_last_updated_pages_query_only_bounded_windows_of_the_key(
    written: SearchWorld, database: EmbeddedServer, query: str
) -> None:
    """What makes these pages fast on the embedded server, which loads every match of a find:
    no query leaves the key open on either side."""
    pages, filters = await _watched_pages(written, database, query)
    assert len(pages) > 1 and filters
    windows = [flt["s._lastUpdated:lo"] for flt in filters]
    for window in windows:
        assert {"$gt", "$gte"} & window.keys() and {"$lt", "$lte"} & window.keys(), window
    # Windows, not the search's whole range: some end below every key there could be.
    assert any(window.get("$lt", DATE_CEILING) < DATE_CEILING for window in windows), windows


# -- one code, by `_lastUpdated`: windows of the `(s.code, deleted, updated)` index -----------


@pytest.fixture(scope="module")
async def two_codes(mongo: AsyncMongoClient[JsonDict]) -> SearchWorld:
    world = await new_world(mongo, ["Observation"])
    rng = random.Random(21)
    ids = [f"o{n:03d}" for n in range(60)]
    for n, oid in enumerate(ids):
        await world.put(_coded(oid, "final", "8867-4" if n % 3 else "2339-0"))
    for oid in rng.sample(ids, 12):  # to the newest end, some changing code
        await world.put(_coded(oid, "amended", rng.choice(["8867-4", "2339-0"])))
    for oid in rng.sample(ids, 8):
        await world.interactions.delete("Observation", oid)
    return world


def _coded(oid: str, status: str, code: str) -> JsonDict:
    return {**_observation(oid, status), "code": {"coding": [{"system": LOINC, "code": code}]}}


async def _coded_by_last_updated(world: SearchWorld, code: str) -> list[str]:
    docs = await world.store.find("Observation", {"deleted": False})
    kept = [d for d in docs if d["resource"]["code"]["coding"][0]["code"] == code]
    kept.sort(key=lambda d: (d["resource"]["meta"]["lastUpdated"], d["_id"]))
    return [d["_id"] for d in kept]


@pytest.mark.parametrize("count", [1, 7, 200])
@pytest.mark.parametrize("code", ["8867-4", f"{LOINC}|2339-0"])
async def test_a_codes_pages_by_last_updated_walk_its_resources_once_in_order(
    two_codes: SearchWorld, count: int, code: str
) -> None:
    expected = await _coded_by_last_updated(two_codes, code.rpartition("|")[2])
    assert 15 < len(expected) < 52
    up, _ = await _pages(two_codes, f"code={code}&_sort=_lastUpdated&_count={count}")
    down, bundle = await _pages(two_codes, f"code={code}&_sort=-_lastUpdated&_count={count}")
    assert [i for page in up for i in page] == expected
    assert [i for page in down for i in page] == expected[::-1]
    back: list[list[str]] = []
    while (items := _follow(bundle, "previous")) is not None:
        bundle = await two_codes.search("Observation", items)
        back.append(match_ids(bundle))
    assert back == down[:-1][::-1]


@pytest.mark.parametrize("count", [1, 7, 200])
async def test_what_changed_for_a_code_pages_oldest_change_first(
    two_codes: SearchWorld, count: int
) -> None:
    docs = await two_codes.store.find("Observation", {"deleted": False})
    changes = sorted(
        (d["resource"]["meta"]["lastUpdated"], d["_id"])
        for d in docs
        if d["resource"]["code"]["coding"][0]["code"] == "8867-4"
    )
    since = changes[10][0]
    pages, _ = await _pages(two_codes, f"code=8867-4&_lastUpdated=gt{since}&_count={count}")
    assert [i for page in pages for i in page] == [i for at, i in changes if at > since]


@pytest.mark.parametrize(
    "query",
    ["code=8867-4&_sort=-_lastUpdated&_count=5", "code=8867-4&_lastUpdated=gt2020&_count=5"],
)
async def test_a_codes_pages_by_last_updated_read_bounded_ranges_of_its_index(
    two_codes: SearchWorld, database: EmbeddedServer, query: str
) -> None:
    """What makes them fast where a code has many matches: each query is one range of the
    `(s.code, deleted, updated)` index, bounded on both sides, not every match of the code."""
    pages, filters = await _watched_pages(two_codes, database, query)
    assert len(pages) > 2 and filters
    for flt in filters:
        assert flt["s.code"] == "8867-4" and flt["deleted"] is False, flt
        assert {"$gt", "$gte"} & flt["updated"].keys() and {"$lt", "$lte"} & flt["updated"].keys()
    plan = await two_codes.store.current("Observation").find(filters[0]).explain()
    assert ("IXSCAN", "s.code+deleted+updated") in plan_stages(plan)
