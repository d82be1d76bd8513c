"""Read-by-id latency and throughput with concurrent httpx clients.

    python -m benchmarks.read_latency                  # start Hestia, load, measure
    python -m benchmarks.read_latency --workers 2      # two uvicorn worker processes
    python -m benchmarks.read_latency --base URL       # against a running server (loads first)

Each client is its own `httpx.Client` (its own connection) in its own thread; the clients are
spread over `--processes` load-generator processes, because one Python process cannot issue
more than about a thousand HTTP requests a second and would measure itself, not the server.
Target on a 2-core machine: p50 <= 2 ms and >= 1,500 reads/s with 16 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import threading
import time

import httpx

from benchmarks.harness import describe, running_hestia
from benchmarks.load_resources import load


def _client_thread(base: str, ids: list[str], deadline: float, seed: int, out: list[float]) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=30) as http:
        while time.time() < deadline:
            target = rng.choice(ids)
            started = time.perf_counter()
            response = http.get(f"/{target}")
            out.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"read {target}: {response.status_code}")


def _load_process(args: tuple[str, list[str], int, float, float, int]) -> list[float]:
    base, ids, clients, warm_until, deadline, seed = args
    for phase_end, keep in ((warm_until, False), (deadline, True)):
        results: list[list[float]] = [[] for _ in range(clients)]
        threads = [
            threading.Thread(
                target=_client_thread, args=(base, ids, phase_end, seed + n, results[n])
            )
            for n in range(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if keep:
            return [x for r in results for x in r]
    return []


def read_load(base: str, ids: list[str], clients: int, seconds: float, processes: int) -> None:
    processes = max(1, min(processes, clients))
    per_process = [
        clients // processes + (1 if n < clients % processes else 0) for n in range(processes)
    ]
    start = time.time() + 1.0  # processes start, then warm up connections for a second
    warm_until, deadline = start + 1.0, start + 1.0 + seconds
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        parts = pool.map(
            _load_process,
            [(base, ids, n, warm_until, deadline, 100 * i) for i, n in enumerate(per_process)],
        )
    latencies = [x for part in parts for x in part]
    print(
        describe(
            f"read-by-id ({clients} clients, {processes} processes)", latencies, seconds, "reads"
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="resources to load first")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--base", help="FHIR base URL of a running server (default: start one)")
    parser.add_argument(
        "--audit",
        choices=("on", "off", "both"),
        default="on",
        help="AuditEvent per request; 'both' runs off then on, side by side",
    )
    args = parser.parse_args()

    def run(base: str) -> None:
        ids = asyncio.run(load(base, args.count, 8))
        for clients in sorted({1, args.clients}):
            read_load(base, ids, clients, args.seconds, args.processes)

    if args.base:
        run(args.base)
        return
    for audit in (False, True) if args.audit == "both" else (args.audit == "on",):
        print(f"-- audit {'on' if audit else 'off'}, {args.workers} worker(s)")
        with running_hestia(workers=args.workers, audit=audit) as base:
            run(base)


if __name__ == "__main__":
    main()
