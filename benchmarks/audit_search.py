"""Auditors' searches on a large audit log: how fast the block index is built, and what a page
of `GET AuditEvent?…` costs (app/audit/search.py), on the embedded database.

    python -m benchmarks.audit_search                 # 100,000 events, 2,000 patients
    python -m benchmarks.audit_search --events 20000  # quicker
    python -m benchmarks.audit_search --search-indexes  # with the patient index

The log is written through the real group-commit writer, 16 appends at a time (blocks of about
16 events, as under load), one or three patients per event, and indexed with the auditors'
indexer (AuditIndex.catch_up). Each query is then run on several patients or dates; the
matches are read from the journal and checked against their hashes, as over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from datetime import UTC
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from pymongo import AsyncMongoClient

from app.audit.events import AuditFacts, AuditSource, build_events
from app.audit.journal import journaled_event
from app.audit.log import AuditLog
from app.audit.projection import AuditIndex
from app.audit.search import AuditSearchEngine
from app.store.client import EmbeddedServer
from app.store.versions import Store
from benchmarks.harness import percentile

SOURCE = AuditSource("hestia-bench")
BASE = "http://bench.test/fhir"


def one_access(n: int, patients: int, rng: random.Random) -> list[dict[str, Any]]:
    if n % 10 == 0:
        # A search over several patients: one event per patient (BALP).
        chosen = [f"Patient/p{rng.randrange(patients)}" for _ in range(3)]
        facts = AuditFacts("search-type", resource_type="Observation", patients=chosen)
        facts.query = "code=1234"
    else:
        facts = AuditFacts(
            "read",
            resource_type="Observation",
            resource_id=f"o{n}",
            version_id="1",
            patients=[f"Patient/p{rng.randrange(patients)}"],
        )
    facts.client_id = rng.choice(["app-a", "app-b", "app-c"])
    facts.peer = f"10.0.0.{rng.randrange(1, 20)}"
    facts.status = 404 if n % 50 == 0 else 200
    return build_events(facts, SOURCE)


async def write_log(log: AuditLog, accesses: int, patients: int) -> int:
    rng = random.Random(5)
    written = 0
    for start in range(0, accesses, 16):
        batch = [one_access(n, patients, rng) for n in range(start, min(accesses, start + 16))]
        results = await asyncio.gather(*(log.append_all(events) for events in batch))
        written += sum(len(r) for r in results)
    return written


async def timed_pages(
    engine: AuditSearchEngine, queries: list[list[tuple[str, str]]]
) -> tuple[list[float], int]:
    latencies: list[float] = []
    found = 0
    for items in queries:
        started = time.perf_counter()
        bundle = await engine.search(
            "AuditEvent", items, base_url=BASE, page_size=50, max_page_size=500, strict=True
        )
        latencies.append(time.perf_counter() - started)
        found += len(bundle.get("entry", []))
    return latencies, found


async def bench(uri: str, accesses: int, patients: int, samples: int, search_indexes: bool) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True, tzinfo=UTC)
    database = client["bench_audit"]
    log = AuditLog(window=0, search_indexes=search_indexes)
    await log.start(database)
    started = time.perf_counter()
    events = await write_log(log, accesses, patients)
    await log.stop()
    elapsed = time.perf_counter() - started
    print(f"log: {events:,} events written durably in {elapsed:.1f} s ({events / elapsed:,.0f}/s)")
    index = AuditIndex(database)
    started = time.perf_counter()
    indexed = await index.catch_up()
    elapsed = time.perf_counter() - started
    print(f"index: {indexed:,} events in {elapsed:.1f} s = {indexed / elapsed:,.0f} events/s")
    engine = AuditSearchEngine(
        Store(database),
        index,
    )
    middle = await middle_date(index)
    rng = random.Random(9)
    someone = [f"Patient/p{rng.randrange(patients)}" for _ in range(samples)]
    queries: dict[str, list[list[tuple[str, str]]]] = {
        "a patient's accesses (page 1 of 50)": [[("patient", p)] for p in someone],
        "a patient's accesses since a date, newest first": [
            [("patient", p), ("date", f"ge{middle}"), ("_sort", "-date")] for p in someone
        ],
        "the newest 50 accesses (_sort=-date)": [[("_sort", "-date")]] * samples,
        "failed accesses, newest first (outcome:not=0)": [
            [("outcome:not", "0"), ("_sort", "-date")]
        ]
        * samples,
        "a patient's accesses, counted (_summary=count)": [
            [("patient", p), ("_summary", "count")] for p in someone
        ],
    }
    for label, items in queries.items():
        latencies, found = await timed_pages(engine, items)
        ms = [x * 1000 for x in latencies]
        print(
            f"{label}: p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms "
            f"({len(ms)} queries, {found / len(ms):.0f} entries per page)"
        )
    await client.close()


async def middle_date(index: AuditIndex) -> str:
    """The `recorded` of the log's middle event: queries since then match half the log."""
    event = await journaled_event(index.database, await index.watermark() // 2)
    assert event is not None
    return str(event["resource"]["recorded"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="accesses to write")
    parser.add_argument("--patients", type=int, default=2_000)
    parser.add_argument("--samples", type=int, default=20, help="queries of each kind")
    parser.add_argument(
        "--search-indexes",
        action="store_true",
        help="with the patient index (HESTIA_AUDIT_SEARCH_INDEXES=on)",
    )
    args = parser.parse_args()
    with TemporaryDirectory(prefix="hestia-audit-search-") as tmp:
        embedded = EmbeddedServer.start(str(Path(tmp) / "db"))
        try:
            asyncio.run(
                bench(embedded.uri, args.events, args.patients, args.samples, args.search_indexes)
            )
        finally:
            embedded.stop()


if __name__ == "__main__":
    main()
