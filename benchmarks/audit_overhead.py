"""What auditing costs: read-by-id throughput with audit on versus off, in the same run.

    python -m benchmarks.audit_overhead                     # small audited app, + append bench
    python -m benchmarks.audit_overhead --target hestia     # real `hestia serve`, HESTIA_AUDIT
    python -m benchmarks.audit_overhead --target hestia --loader wrk   # the same, load from wrk
    python -m benchmarks.audit_overhead --append-only       # AuditLog throughput/latency only

Both servers run side by side on one on-disk embedded database and are loaded in alternating
phases (off, on, off, on …) so that machine noise hits both alike. The small target is one
uvicorn process serving GET /fhir/Patient/{id} from MongoDB, exactly like a read, with the
AuditMiddleware in front of it or not. Target: audit costs at most 20% of read throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
from fastapi import FastAPI
from pymongo import AsyncMongoClient
from starlette.requests import Request
from starlette.responses import Response

from app.api.audit import AuditMiddleware
from app.api.http import FhirResponse
from app.audit.chain import audit_database_name
from app.audit.events import AuditFacts, AuditSource, build_events
from app.audit.log import AuditLog, AuditUnavailable
from app.store.client import EmbeddedServer, free_port
from benchmarks.harness import describe, percentile, process_cpu, running_hestia, wait_until_up
from benchmarks.load_resources import load
from benchmarks.read_latency import (
    WRK_WARM_UP_S,
    _load_process,
    read_every_id_once,
    wrk_phase,
)

ROOT = Path(__file__).resolve().parent.parent


# -- the small audited app (run in a child process) --------------------------------------------


def build_small_app(mongodb_uri: str, audit: bool) -> FastAPI:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb_uri, tz_aware=True, tzinfo=UTC
    )
    log = AuditLog()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if audit:
            await log.start(client[audit_database_name("bench")])
        yield
        await log.stop()
        await client.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/fhir/metadata")
    async def metadata() -> Response:
        return FhirResponse({"resourceType": "CapabilityStatement"})

    @app.get("/fhir/Patient/{resource_id}")
    async def read(request: Request, resource_id: str) -> Response:
        facts = AuditFacts("read", resource_type="Patient", resource_id=resource_id)
        request.state.audit_facts = facts
        found = await client["bench"]["Patient"].find_one({"_id": resource_id})
        if found is None:
            return FhirResponse({"resourceType": "OperationOutcome"}, 404)
        facts.version_id = str(found["vid"])
        return FhirResponse(found["resource"])

    if audit:
        app.add_middleware(AuditMiddleware, log=log, source_name="bench")
    return app


def serve_small(port: int, mongodb_uri: str, audit: bool) -> None:
    import uvicorn

    uvicorn.run(
        build_small_app(mongodb_uri, audit),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )


@contextmanager
def small_server(mongodb_uri: str, audit: bool) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.audit_overhead",
            "--serve-port",
            str(port),
            "--mongodb-uri",
            mongodb_uri,
            "--audit",
            "on" if audit else "off",
        ],
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        wait_until_up(base, process)
        yield base
    finally:
        process.terminate()
        process.wait(30)


async def seed_patients(mongodb_uri: str, count: int) -> list[str]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    collection = client["bench"]["Patient"]
    await collection.drop()
    docs = [
        {
            "_id": f"p{n}",
            "vid": 1,
            "resource": {
                "resourceType": "Patient",
                "id": f"p{n}",
                "meta": {"versionId": "1"},
                "name": [{"family": f"Family{n}", "given": ["Bench"]}],
            },
        }
        for n in range(count)
    ]
    await collection.insert_many(docs)
    await client.close()
    return [f"Patient/p{n}" for n in range(count)]


# -- load generation: the read benchmark's processes of threads --------------------------------


def read_phase(
    pool: Any, base: str, ids: list[str], clients: int, seconds: float, processes: int
) -> list[float]:
    per_process = [
        clients // processes + (1 if n < clients % processes else 0) for n in range(processes)
    ]
    start = time.time() + 0.5
    warm_until, deadline = start + 0.5, start + 0.5 + seconds
    parts = pool.map(
        _load_process,
        [(base, {}, ids, n, warm_until, deadline, 100 * i) for i, n in enumerate(per_process)],
    )
    return [x for part in parts for x in part]


def drain_audit_index(base: str) -> float:
    """Seconds the audited server takes to index its backlog of AuditEvents.

    The server indexes events for auditors' searches after the response, when its writer is
    quiet (app/audit/projection.py), so the backlog of an "on" phase would otherwise be indexed
    during the next "off" phase and slow the other server down: the deferred cost of auditing
    would be charged to the unaudited reads. An auditor's search indexes everything first, so
    one such search ends the backlog, outside both phases, and its time is the deferred cost.
    """
    started = time.perf_counter()
    response = httpx.get(f"{base}/AuditEvent", params={"_count": "1"}, timeout=600)
    response.raise_for_status()
    return time.perf_counter() - started


def compare_wrk(
    bases: dict[str, str],
    ids: list[str],
    args: argparse.Namespace,
    pids: dict[str, int],
    database_pid: int | None,
) -> None:
    """Alternating wrk phases; wrk needs far less CPU than the Python loader, so the servers,
    not the load generator, set the pace (see benchmarks/read_latency.py)."""
    runs: dict[str, list[tuple[float, float, float]]] = {"off": [], "on": []}
    cpu: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    drains: list[float] = []
    drain_audit_index(bases["on"])
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            server_before = process_cpu(pids[mode])
            database_before = process_cpu(database_pid) if database_pid else 0.0
            runs[mode].append(wrk_phase(bases[mode], ids, args.clients, args.seconds))
            # wrk_phase warms up for a second first, at about the same rate.
            reads = runs[mode][-1][0] * (args.seconds + WRK_WARM_UP_S)
            database_after = process_cpu(database_pid) if database_pid else 0.0
            cpu[mode].append(
                (
                    (process_cpu(pids[mode]) - server_before) / reads * 1000,
                    (database_after - database_before) / reads * 1000,
                )
            )
            if mode == "on":
                drains.append(drain_audit_index(bases["on"]))
    for mode in ("off", "on"):
        rates = [rate for rate, _, _ in runs[mode]]
        print(
            f"audit {mode:3} read-by-id (wrk, {args.clients} connections): "
            f"{statistics.fmean(rates):,.0f} reads/s; p50 per round "
            f"{', '.join(f'{p50:.2f}' for _, p50, _ in runs[mode])} ms; p99 per round "
            f"{', '.join(f'{p99:.2f}' for _, _, p99 in runs[mode])} ms"
            f"  [per round: {', '.join(f'{r:,.0f}' for r in rates)}]"
        )
    off_rates = [rate for rate, _, _ in runs["off"]]
    on_rates = [rate for rate, _, _ in runs["on"]]
    report_cost(off_rates, on_rates)
    report_deferred(off_rates, on_rates, drains, args.seconds)
    if database_pid:
        report_cpu(cpu)


def report_cpu(cpu: dict[str, list[tuple[float, float]]]) -> None:
    """Where each read's CPU went (ms of CPU per read, median of the rounds): the server is one
    process on one core, so its share is what bounds its throughput; the database, wrk and the
    audit indexing of other phases share the second core."""
    parts = []
    for mode in ("off", "on"):
        server = statistics.median(s for s, _ in cpu[mode])
        database = statistics.median(d for _, d in cpu[mode])
        parts.append(f"audit {mode}: server {server:.3f} ms, database {database:.3f} ms")
    print("  CPU per read (median of rounds): " + "; ".join(parts))


def report_deferred(
    off_rates: list[float], on_rates: list[float], drains: list[float], seconds: float
) -> None:
    """The indexing each "on" phase left behind, and the audited rate it allows when sustained
    (the server then indexes as much as it answers)."""
    events = [rate * seconds for rate in on_rates]
    print(
        "  deferred AuditEvent indexing after each audited phase: "
        + ", ".join(f"{n:,.0f} events in {d:.1f} s" for n, d in zip(events, drains, strict=True))
        + f" = {sum(events) / sum(drains):,.0f} events/s"
    )
    sustained = sum(events) / (seconds * len(on_rates) + sum(drains))
    cost = (1 - sustained / statistics.fmean(off_rates)) * 100
    print(
        f"  audited reads/s sustained, indexing included: {sustained:,.0f}, a cost of "
        f"{cost:.0f}% (reads and their indexing in turn, as when the backlog stays bounded)"
    )


def report_cost(off_rates: list[float], on_rates: list[float]) -> None:
    off, on = statistics.fmean(off_rates), statistics.fmean(on_rates)
    cost = (1 - on / off) * 100 if off else float("nan")
    verdict = "OK" if cost <= 20 else "OVER TARGET"
    print(f"audit cost: {cost:.1f}% of read throughput (target <= 20%): {verdict}")
    pairs = [(1 - n / f) * 100 for f, n in zip(off_rates, on_rates, strict=True) if f]
    print(f"  per round (off then on): {', '.join(f'{c:.0f}%' for c in pairs)}")


def compare(
    bases: dict[str, str], ids: list[str], args: argparse.Namespace, *, indexed: bool = False
) -> None:
    """Alternating phases from Python load processes; `indexed`: the audited server keeps an
    AuditEvent index (the real server does, the small app does not), drained after each
    audited phase as in compare_wrk."""
    samples: dict[str, list[float]] = {"off": [], "on": []}
    rates: dict[str, list[float]] = {"off": [], "on": []}
    drains: list[float] = []
    if indexed:
        drain_audit_index(bases["on"])
    processes = max(1, min(args.processes, args.clients))
    # One pool for all phases: spawning load processes under load would eat into a phase.
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(time.sleep, [0.0] * processes)
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                latencies = read_phase(
                    pool, bases[mode], ids, args.clients, args.seconds, processes
                )
                samples[mode].extend(latencies)
                rates[mode].append(len(latencies) / args.seconds)
                if indexed and mode == "on":
                    drains.append(drain_audit_index(bases["on"]))
    for mode in ("off", "on"):
        total = len(samples[mode])
        print(
            describe(
                f"audit {mode:3} read-by-id ({args.clients} clients)",
                samples[mode],
                args.seconds * args.rounds,
                "reads",
            )
            + f"  [per round: {', '.join(f'{r:,.0f}' for r in rates[mode])}]"
            + ("" if total else " (no samples)")
        )
    report_cost(rates["off"], rates["on"])
    if indexed:
        report_deferred(rates["off"], rates["on"], drains, args.seconds)


# -- the append benchmark ----------------------------------------------------------------------


async def append_bench(
    mongodb_uri: str, writers: int, seconds: float, window: float, logs: int = 1
) -> None:
    """`writers` concurrent appenders spread over `logs` AuditLogs, each with its own client:
    several logs are several worker processes (or servers) appending to the one chain."""
    clients: list[AsyncMongoClient[dict[str, Any]]] = [
        AsyncMongoClient(mongodb_uri, tz_aware=True, tzinfo=UTC) for _ in range(logs)
    ]
    name = f"append_bench_{writers}_{int(window * 1e6)}_{logs}"
    await clients[0].drop_database(name)
    audit_logs = [AuditLog(window=window) for _ in range(logs)]
    for log, client in zip(audit_logs, clients, strict=True):
        await log.start(client[name])
    source = AuditSource("bench")
    latencies: list[float] = []
    refused: list[float] = []
    deadline = time.perf_counter() + seconds

    async def writer(n: int) -> None:
        log = audit_logs[n % logs]
        while time.perf_counter() < deadline:
            facts = AuditFacts("read", resource_type="Patient", resource_id=f"p{n}", status=200)
            [event] = build_events(facts, source)
            started = time.perf_counter()
            try:
                await log.append(event)
            except AuditUnavailable:
                # A writer that keeps losing the race for the chain gives up after the audit
                # timeout: what a request would answer with a 503.
                refused.append(time.perf_counter() - started)
                continue
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(writer(n) for n in range(writers)))
    for log in audit_logs:
        await log.stop()
    await clients[0].drop_database(name)
    for client in clients:
        await client.close()
    ms = [x * 1000 for x in latencies]
    batches = max(1, sum(log.stats.batches for log in audit_logs))
    events = sum(log.stats.events for log in audit_logs)
    conflicts = sum(log.stats.conflicts for log in audit_logs)
    print(
        f"append: {writers:3} writers, {logs} log(s), window {window * 1000:.1f} ms: "
        f"{len(ms) / seconds:,.0f} events/s, p50 {percentile(ms, 0.5):.2f} ms, "
        f"p99 {percentile(ms, 0.99):.2f} ms, {events / batches:.1f} events/insert, "
        f"{conflicts / batches:.2f} chain conflicts/insert"
        + (f", {len(refused)} appends refused after the timeout" if refused else "")
    )


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--target", choices=["small", "hestia"], default="small")
    parser.add_argument("--append-only", action="store_true")
    parser.add_argument("--count", type=int, default=1000, help="patients to read from")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating off/on rounds")
    parser.add_argument(
        "--loader",
        choices=("python", "wrk"),
        default="python",
        help="load generator for --target hestia (wrk: apt-get install wrk)",
    )
    parser.add_argument("--mongodb-uri", default="", help="default: a fresh embedded database")
    parser.add_argument("--serve-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--audit", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_port:
        serve_small(args.serve_port, args.mongodb_uri, args.audit == "on")
        return
    with TemporaryDirectory(prefix="hestia-audit-bench-") as tmp:
        embedded = None
        uri = args.mongodb_uri
        if not uri:
            # On disk, not in memory: j:true must cost what it costs in production.
            embedded = EmbeddedServer.start(str(Path(tmp) / "db"))
            uri = embedded.uri
        try:
            run(args, uri, embedded.process.pid if embedded is not None else None)
        finally:
            if embedded is not None:
                embedded.stop()


def run(args: argparse.Namespace, uri: str, database_pid: int | None = None) -> None:
    for writers, window, logs in (
        (1, 0.0, 1),
        (16, 0.0, 1),
        (16, 0.001, 1),
        (64, 0.001, 1),
        (64, 0.002, 1),
        # Several processes on one chain (`hestia serve --workers N`): they contend for it.
        (16, 0.0, 2),
        (16, 0.0, 4),
    ):
        asyncio.run(append_bench(uri, writers, 3.0, window, logs))
    if args.append_only:
        return
    if args.target == "small":
        ids = asyncio.run(seed_patients(uri, args.count))
        with small_server(uri, audit=False) as off, small_server(uri, audit=True) as on:
            compare({"off": off, "on": on}, ids, args)
        return
    # The real server, twice on one database: audit off and audit on.
    pids: dict[str, int] = {}
    with (
        running_hestia(
            mongodb_uri=uri, audit=False, on_start=lambda p: pids.__setitem__("off", p.pid)
        ) as off,
        running_hestia(
            mongodb_uri=uri, audit=True, on_start=lambda p: pids.__setitem__("on", p.pid)
        ) as on,
    ):
        bases = {"off": off, "on": on}
        ids = asyncio.run(load(off, args.count, 8))
        for base in bases.values():  # both start from a warm read cache
            read_every_id_once(base, {}, ids)
        if args.loader == "wrk":
            compare_wrk(bases, ids, args, pids, database_pid)
        else:
            compare(bases, ids, args, indexed=True)


if __name__ == "__main__":
    main()
