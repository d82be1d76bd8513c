"""Search latency over a store of 100,000+ resources (issue 3 targets: p50 <= 15 ms, p99 <= 60 ms).

    python -m benchmarks.search_latency                        # temp store, load, measure
    python -m benchmarks.search_latency --storage /tmp/sb      # keep (and reuse) the store
    python -m benchmarks.search_latency --storage /tmp/sb --http   # also over HTTP
    python -m benchmarks.search_latency --storage /tmp/sb --http --audit both

It starts an embedded SecantusDB on disk, loads the seeded data set of search_dataset.py
(stored documents built by the server's own write code, see there), then times:

  (a) Observation?patient=X&code=LOINC&date=geYYYY-01-01
  (b) Patient?name=<3 letters>  (smi, joh, ...)
  (c) Observation?code=LOINC&_count=50 and the next two pages (each page is one sample)
  (d) Observation?patient=X&_include=Observation:subject&_include=Observation:encounter
  with --sorts, also Observation and Patient ?_sort=±_lastUpdated (no filter, no target)

calling SearchEngine.search directly (and with --http through `python -m app serve`, auth off,
pointed at the same database). Before timing, every database query each search sends is
recorded and explained: the plan of the filter as sent, and, where the embedded server reports
COLLSCAN for a multi-field filter it really serves from one clause's index, the plan of that
driving clause alone (its planner uses the index of the first indexed field in the filter).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from app.audit.chain import audit_database_name
from app.audit.projection import AuditIndex
from app.fhir.search.execute import SearchEngine
from app.store.client import EmbeddedServer
from app.store.pair_keys import PairKeys
from app.store.versions import Store
from benchmarks import search_dataset as dataset
from benchmarks.harness import percentile, running_hestia

JsonDict = dict[str, Any]
Items = list[tuple[str, str]]
BASE = "http://bench.example/fhir"
PAGE_SIZE = 20
NAME_PREFIXES = ["smi", "joh", "wil", "bro", "tay", "gar", "mül", "ngu", "rob", "tho"]
TARGET_P50_MS, TARGET_P99_MS = 15.0, 60.0


# --- the queries -------------------------------------------------------------------------------


class Workload:
    """Random but seeded query parameters drawn from the loaded data."""

    def __init__(self, patient_ids: list[str], seed: int) -> None:
        self.patients = patient_ids
        self.rng = random.Random(seed)
        self.codes = [entry[0] for entry in dataset.LOINC]

    def patient_code_date(self) -> tuple[str, Items]:
        year = self.rng.randint(2016, 2023)
        return "Observation", [
            ("patient", self.rng.choice(self.patients)),
            ("code", f"http://loinc.org|{self.rng.choice(self.codes)}"),
            ("date", f"ge{year}-01-01"),
        ]

    def patient_name(self) -> tuple[str, Items]:
        return "Patient", [("name", self.rng.choice(NAME_PREFIXES))]

    def code_page(self) -> tuple[str, Items]:
        return "Observation", [("code", self.rng.choice(self.codes)), ("_count", "50")]

    def two_includes(self) -> tuple[str, Items]:
        return "Observation", [
            ("patient", self.rng.choice(self.patients)),
            ("_include", "Observation:subject"),
            ("_include", "Observation:encounter"),
        ]


def next_items(bundle: JsonDict, items: Items) -> Items | None:
    """The query of the bundle's next link (its cursor added to the original items)."""
    for link in bundle.get("link", []):
        if link["relation"] == "next":
            pairs = parse_qsl(urlsplit(link["url"]).query, keep_blank_values=True)
            cursor = [(k, v) for k, v in pairs if k == "_cursor"]
            return [*[(k, v) for k, v in items if k != "_cursor"], *cursor]
    return None


# --- explain -------------------------------------------------------------------------------------


class RecordingStore(Store):
    """A Store whose collections log every find/count the executor sends (for explain)."""

    def __init__(self, db: AsyncDatabase[JsonDict]) -> None:
        super().__init__(db)
        self.sent: list[tuple[str, str, JsonDict, Any]] = []

    def current(self, resource_type: str) -> Any:
        return _Recorder(self.db[resource_type], resource_type, self.sent)


class _Recorder:
    def __init__(self, collection: Any, name: str, sent: list[Any]) -> None:
        self._collection, self._name, self._sent = collection, name, sent

    def find(self, flt: JsonDict, *args: Any, **kwargs: Any) -> Any:
        return _RecordedCursor(self._collection.find(flt, *args, **kwargs), self, flt)

    async def count_documents(self, flt: JsonDict, **kwargs: Any) -> int:
        self._sent.append(("count", self._name, flt, None))
        return int(await self._collection.count_documents(flt, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


class _RecordedCursor:
    def __init__(self, cursor: Any, owner: _Recorder, flt: JsonDict) -> None:
        self._cursor, self._owner, self._filter = cursor, owner, flt
        self._sort: Any = None
        self._logged = False

    def sort(self, spec: Any) -> _RecordedCursor:
        self._sort = spec
        self._cursor = self._cursor.sort(spec)
        return self

    def limit(self, n: int) -> _RecordedCursor:
        self._cursor = self._cursor.limit(n)
        return self

    def _log(self) -> None:
        if not self._logged:
            self._owner._sent.append(("find", self._owner._name, self._filter, self._sort))
            self._logged = True

    async def to_list(self, length: int | None) -> list[JsonDict]:
        self._log()
        return list(await self._cursor.to_list(length))

    def __aiter__(self) -> Any:
        self._log()
        return self._cursor.__aiter__()


def _winning(plan: JsonDict) -> str:
    stage = plan.get("queryPlanner", {}).get("winningPlan", {})
    while stage:
        if stage.get("stage") in ("IXSCAN", "COLLSCAN", "IDHACK", "EXPRESS_IXSCAN"):
            name = stage.get("indexName", "")
            return f"{stage['stage']} {name}".strip()
        stage = stage.get("inputStage", {})
    return "?"


async def explain(db: AsyncDatabase[JsonDict], collection: str, flt: JsonDict, sort: Any) -> str:
    command: JsonDict = {"find": collection, "filter": flt}
    if sort:
        command["sort"] = dict(sort)
    plan = await db.command({"explain": command, "verbosity": "queryPlanner"})
    stage = _winning(plan)
    if stage.startswith("COLLSCAN") and len(flt) > 1:
        driver, condition = next(iter(flt.items()))
        alone = _winning(
            await db.command(
                {
                    "explain": {"find": collection, "filter": {driver: condition}},
                    "verbosity": "queryPlanner",
                }
            )
        ).split(" ")
        return f"{stage} as reported; driving clause {driver}: {' '.join(alone)}"
    return stage


def _short(value: Any, limit: int = 150) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def explain_searches(
    db: AsyncDatabase[JsonDict],
    searches: list[tuple[str, str, Items, int]],
    pair_keys_ready: Callable[[str], bool],
) -> bool:
    """Print the plan of every query each search sends; True when each is index-served."""
    store = RecordingStore(db)
    engine = SearchEngine(store, pair_keys_ready=pair_keys_ready)
    all_indexed = True
    for label, rtype, items, pages in searches:
        store.sent.clear()
        query: Items | None = items
        for _ in range(pages):
            if query is None:
                break
            bundle = await engine.search(
                rtype, query, base_url=BASE, page_size=PAGE_SIZE, max_page_size=1000
            )
            query = next_items(bundle, query)
        print(f"  {label}")
        for kind, collection, flt, sort in store.sent:
            plan = await explain(db, collection, flt, sort)
            indexed = "IXSCAN" in plan
            all_indexed &= indexed
            print(f"    {kind} {collection} {_short(flt)} sort={sort}\n      -> {plan}")
    return all_indexed


# --- timing --------------------------------------------------------------------------------------


def summary(label: str, samples_ms: list[float]) -> str:
    p50, p99 = percentile(samples_ms, 0.5), percentile(samples_ms, 0.99)
    verdict = "ok" if p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS else "MISSES TARGET"
    return (
        f"  {label:<58} n={len(samples_ms):<4} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
        f"max {max(samples_ms):7.2f} ms  {verdict}"
    )


Runner = Callable[[str, Items], Any]


async def time_queries(run: Runner, workload: Workload, samples: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}

    async def timed(label: str, rtype: str, items: Items) -> JsonDict:
        started = time.perf_counter()
        bundle: JsonDict = await run(rtype, items)
        out.setdefault(label, []).append((time.perf_counter() - started) * 1000)
        return bundle

    for n in range(samples + 10):
        record = n >= 10  # the first rounds warm caches and connections
        for label, make in (
            ("(a) Observation?patient&code&date=ge", workload.patient_code_date),
            ("(b) Patient?name=<prefix>", workload.patient_name),
            ("(d) Observation?patient&_include x2", workload.two_includes),
        ):
            rtype, items = make()
            await timed(label if record else "warm-up", rtype, items)
        rtype, items = workload.code_page()
        query: Items | None = items
        for page in range(3):
            if query is None:
                break
            bundle = await timed(f"(c) Observation?code&_count=50 page {page + 1}", rtype, query)
            query = next_items(bundle, query)
    out.pop("warm-up", None)
    return out


def print_timings(title: str, timings: dict[str, list[float]]) -> None:
    print(title)
    every_page: list[float] = []
    for label in sorted(timings):
        print(summary(label, timings[label]))
        if label.startswith("(c)"):
            every_page += timings[label]
    if every_page:
        print(summary("(c) all three pages together", every_page))


# --- main ----------------------------------------------------------------------------------------


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


async def measure(args: argparse.Namespace, server: EmbeddedServer, storage: Path) -> None:
    client: AsyncMongoClient[JsonDict] = AsyncMongoClient(server.uri, tz_aware=True)
    db = client[args.database]
    report = await dataset.load(db, args.patients, args.seed, processes=args.processes)
    how = "reused from an earlier run" if report.reused else "loaded now"
    print(
        f"store: {report.resources:,} resources ({how}) in {report.seconds:.1f} s = "
        f"{report.resources / report.seconds:,.0f} resources/s incl. index build "
        f"({report.index_seconds:.1f} s); on disk {_size_mb(storage):,.0f} MB at {storage}"
    )
    print(
        "  documents written by the server's own write code (with_meta, index_resource,"
        " WriteBatch.flush in transactions), bypassing only HTTP"
    )
    if args.load_only:
        await client.close()
        return
    # What `hestia serve` does at start-up: a store loaded before pair keys gets them now.
    pair_keys = PairKeys(Store(db))
    started = time.perf_counter()
    await pair_keys.open(dataset.TYPES)
    await pair_keys.wait()
    if pair_keys.backfilled:
        seconds = time.perf_counter() - started
        print(
            f"pair keys backfilled on {pair_keys.backfilled:,} documents in {seconds:.1f} s"
            f" = {pair_keys.backfilled / seconds:,.0f}/s"
        )
    patients = [str(d["_id"]) async for d in db["Patient"].find({}, {"_id": 1})]
    probe = Workload(patients, args.seed + 1)
    print("explain (every database query each search sends):")
    indexed = await explain_searches(
        db,
        [
            ("(a)", *probe.patient_code_date(), 1),
            ("(b)", *probe.patient_name(), 1),
            ("(c) 3 pages", *probe.code_page(), 3),
            ("(d)", *probe.two_includes(), 1),
        ],
        pair_keys.ready,
    )
    print(f"  every query index-served: {'yes' if indexed else 'NO'}")
    engine = SearchEngine(Store(db), pair_keys_ready=pair_keys.ready)

    async def direct(rtype: str, items: Items) -> JsonDict:
        return await engine.search(
            rtype, items, base_url=BASE, page_size=PAGE_SIZE, max_page_size=1000
        )

    timings = await time_queries(direct, Workload(patients, args.seed + 2), args.samples)
    print_timings(
        f"SearchEngine.search, direct (targets p50 <= {TARGET_P50_MS:.0f} ms, "
        f"p99 <= {TARGET_P99_MS:.0f} ms):",
        timings,
    )
    if args.sorts:
        await time_last_updated_sorts(db, 20)
    await client.close()
    if args.http:
        for audit in ("on", "off") if args.audit == "both" else (args.audit,):
            await time_over_http(server.uri, audit, patients, args)


async def time_last_updated_sorts(db: AsyncDatabase[JsonDict], rounds: int) -> None:
    """`_sort=±_lastUpdated` with no filter (no target; fhir/search/key_windows.py): a fresh
    engine's first page, then `rounds` searches of three pages each."""
    print(f"sorted by _lastUpdated, no filter, _count={PAGE_SIZE} (no target):")
    for rtype in ("Observation", "Patient"):
        for sort in ("-_lastUpdated", "_lastUpdated"):
            store = Store(db)
            await store.clock.load(db)  # as a server does at start-up
            engine = SearchEngine(store)
            pages: dict[int, list[float]] = {}
            for n in range(rounds + 1):
                query: Items | None = [("_sort", sort)]
                for page in range(3):
                    if query is None:
                        break
                    started = time.perf_counter()
                    bundle = await engine.search(
                        rtype, query, base_url=BASE, page_size=PAGE_SIZE, max_page_size=1000
                    )
                    pages.setdefault(page if n else -1, []).append(
                        (time.perf_counter() - started) * 1000
                    )
                    query = next_items(bundle, query)
            first, later = pages.get(0, []), pages.get(1, []) + pages.get(2, [])
            print(
                f"  {rtype}?_sort={sort:<14} first page of a fresh engine "
                f"{pages[-1][0]:8.1f} ms; then page 1 p50 {percentile(first, 0.5):6.1f} ms, "
                f"pages 2-3 p50 {percentile(later, 0.5):6.1f} ms, "
                f"p99 {percentile(first + later, 0.99):6.1f} ms"
            )


async def index_audit_backlog(uri: str, database: str) -> int:
    """Index the audit events earlier runs on a kept store left unindexed. A server indexes its
    backlog while idle, or in chunks once it passes 50,000 events; a run that inherited one
    would time that catch-up along with its searches."""
    client: AsyncMongoClient[JsonDict] = AsyncMongoClient(uri)
    try:
        return await AuditIndex(client[audit_database_name(database)]).catch_up()
    finally:
        await client.close()


async def time_over_http(
    uri: str, audit: str, patients: list[str], args: argparse.Namespace
) -> None:
    backlog = await index_audit_backlog(uri, args.database)
    print(f"  audit events left unindexed by earlier runs, indexed before timing: {backlog}")
    with running_hestia(mongodb_uri=uri, audit=audit == "on") as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            failures: Counter[str] = Counter()

            async def over_http(rtype: str, items: Items) -> JsonDict:
                response = await http.get(f"/{rtype}", params=tuple(items))
                if response.status_code != 200:
                    # Counted and shown, not fatal: one refused request (e.g. a 503 from
                    # the audit gate) should not discard the run.
                    failures[f"{response.status_code} {response.text[:120]}"] += 1
                    return {}
                return dict(response.json())

            timings = await time_queries(over_http, Workload(patients, args.seed + 2), args.samples)
    print_timings(f"over HTTP (python -m app serve, 1 worker, auth off, audit {audit}):", timings)
    for failure, times in failures.items():
        print(f"  NOT 200 ({times}x, their latency included above): {failure}")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.search_latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--patients", type=int, default=1000, help="101 resources each")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--storage", help="store directory, kept and reused (default: temp)")
    parser.add_argument("--database", default="hestia", help="database name (HESTIA_DATABASE)")
    parser.add_argument("--samples", type=int, default=200, help="timed searches per query")
    parser.add_argument("--processes", type=int, default=2, help="index-extraction processes")
    parser.add_argument("--http", action="store_true", help="also time over HTTP")
    parser.add_argument(
        "--audit", choices=("on", "off", "both"), default="on", help="server audit, with --http"
    )
    parser.add_argument("--load-only", action="store_true")
    parser.add_argument("--sorts", action="store_true", help="also time _sort=±_lastUpdated")
    args = parser.parse_args()
    temporary = args.storage is None
    storage = Path(args.storage or tempfile.mkdtemp(prefix="hestia-search-bench-"))
    server = EmbeddedServer.start(str(storage))
    try:
        asyncio.run(measure(args, server, storage))
    finally:
        server.stop()
        if temporary:
            shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
