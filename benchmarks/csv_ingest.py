"""CSV ingest benchmark: a generated lab feed (map `lab-results`) streamed through CsvIngestor
into an embedded SecantusDB, chunk by chunk (one transaction per chunk), as POST /ingest/csv
and `hestia ingest` do. Reports rows/s and the process's peak and sampled resident memory.

    python benchmarks/csv_ingest.py --rows 200000 [--chunk 500] [--patients 2000]

The target (issue 6): at least 1,000 rows/s with flat memory.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.fhir.interactions import Interactions, UnitOfWork
from app.fhir.search.execute import SearchEngine
from app.ingest.csv_ingest import CsvIngestor, CsvReport, CsvSettings
from app.ingest.writes import put_all
from app.store.client import Database, EmbeddedServer
from app.store.indexes import ensure_search_indexes
from app.store.raw import RawSource, RawStore
from app.store.versions import Store, WriteBatch
from benchmarks.harness import process_cpu

HEADER = "patient_id,loinc,value,unit,effective,status,display,specimen_id\n"
# LOINC code, units it may arrive in, and a plausible value in the first unit.
ANALYTES: list[tuple[str, tuple[str, ...], float, float]] = [
    ("2345-7", ("mg/dL", "mmol/L"), 70.0, 180.0),
    ("2160-0", ("mg/dL", "umol/L"), 0.5, 1.6),
    ("2093-3", ("mg/dL", "mmol/L"), 120.0, 280.0),
    ("2823-3", ("mmol/L",), 3.2, 5.4),
    ("2951-2", ("mmol/L",), 132.0, 148.0),
    ("718-7", ("g/dL",), 10.0, 17.0),
    ("4548-4", ("%",), 4.5, 9.0),
]
# Multiplying a mg/dL value by this gives the same amount in the second unit listed.
TO_SECOND_UNIT = {"2345-7": 1 / 18.016, "2160-0": 88.42, "2093-3": 1 / 38.67}


def patient_ids(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"bench-{rng.getrandbits(48):012x}" for _ in range(count)]


def generate_lab_csv(
    out: IO[str], rows: int, patients: list[str], *, seed: int = 7, bad_every: int = 0
) -> int:
    """Write `rows` lab rows; every `bad_every`-th row carries an error (0: none).

    Returns the number of deliberately bad rows.
    """
    rng = random.Random(seed)
    out.write(HEADER)
    bad = 0
    for n in range(rows):
        code, units, low, high = ANALYTES[n % len(ANALYTES)]
        value = rng.uniform(low, high)
        unit = units[0]
        if len(units) > 1 and rng.random() < 0.3:
            unit = units[1]
            value *= TO_SECOND_UNIT[code]
        day = 1 + n % 28
        effective = f"2024-{1 + n % 12:02d}-{day:02d}T{n % 24:02d}:{n % 60:02d}:00Z"
        text = f"{value:.2f}"
        if bad_every and n % bad_every == bad_every - 1:
            bad += 1
            if (n // bad_every) % 2:
                unit = "furlong"  # not a UCUM unit
            else:
                effective = "2024-13-45"  # not a date
        patient = patients[n % len(patients)]
        out.write(f"{patient},{code},{text},{unit},{effective},final,,S{n}\n")
    return bad


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Result:
    rows: int
    seconds: float
    report: CsvReport
    rss_samples: list[int] = field(default_factory=list)
    peak_kib: int = 0
    app_cpu: float = 0.0
    db_cpu: float = 0.0


async def file_blocks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with path.open("rb") as fh:
        while block := fh.read(size):
            yield block


async def create_patients(interactions: Interactions, ids: list[str]) -> None:
    store = interactions.store
    for start in range(0, len(ids), 500):
        batch = [{"resourceType": "Patient", "id": i} for i in ids[start : start + 500]]

        async def work(session: Any, batch: list[dict[str, Any]] = batch) -> None:
            uow = UnitOfWork(session, WriteBatch(store))
            await put_all(interactions, uow, batch)
            await uow.flush()

        await store.run_transaction(work)


async def run(server: EmbeddedServer, rows: int, chunk: int, patients: int, path: Path) -> Result:
    uri = server.uri
    database = Database(uri, f"bench_csv_{uuid.uuid4().hex[:8]}")
    store = Store(database.db)
    types = ["Patient", "Observation", "Provenance"]
    await store.ensure_indexes(types)
    await ensure_search_indexes(store, types)
    interactions = Interactions(store, SearchEngine(store).match_ids)
    raw = RawStore(database.db)
    await raw.ensure_indexes()
    ids = patient_ids(patients, 11)
    await create_patients(interactions, ids)
    with path.open("w", encoding="utf-8") as fh:
        generate_lab_csv(fh, rows, ids, bad_every=1000)
    ingestor = CsvIngestor(interactions, raw, CsvSettings(chunk_rows=chunk))
    samples: list[int] = []
    last = [0]

    def progress(done: int, read: int, total: int) -> None:
        if done - last[0] >= rows // 20:
            last[0] = done
            samples.append(rss_kib())
            print(f"  {done:>8} rows  rss {samples[-1] / 1024:7.1f} MiB", flush=True)

    started = time.perf_counter()
    app_cpu, db_cpu = time.process_time(), process_cpu(server.process.pid)
    report = await ingestor.ingest_stream(
        file_blocks(path),
        map_name="lab-results",
        source=RawSource("benchmark"),
        progress=progress,
    )
    seconds = time.perf_counter() - started
    app_cpu, db_cpu = time.process_time() - app_cpu, process_cpu(server.process.pid) - db_cpu
    await database.client.drop_database(database.db.name)
    await database.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return Result(report.rows_read, seconds, report, samples, peak, app_cpu, db_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--memory", action="store_true", help="in-memory database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer.start(":memory:" if args.memory else f"{tmp}/db")
        try:
            result = asyncio.run(
                run(server, args.rows, args.chunk, args.patients, Path(tmp) / "labs.csv")
            )
        finally:
            server.stop()
    report = result.report
    print(
        f"rows read {report.rows_read}, created {report.created}, rejected "
        f"{report.rows_rejected}, unchanged {report.unchanged}"
    )
    print(f"time {result.seconds:.1f} s: {result.rows / result.seconds:,.0f} rows/s")
    print(
        f"CPU per row: app {result.app_cpu / result.rows * 1000:.2f} ms, database "
        f"{result.db_cpu / result.rows * 1000:.2f} ms"
    )
    if result.rss_samples:
        print(
            f"rss during ingest: min {min(result.rss_samples) / 1024:.1f} MiB, max "
            f"{max(result.rss_samples) / 1024:.1f} MiB; peak (ru_maxrss) "
            f"{result.peak_kib / 1024:.1f} MiB"
        )


if __name__ == "__main__":
    main()
