"""Read-by-id latency and throughput with concurrent httpx clients.

    python -m benchmarks.read_latency                  # start Hestia, load, measure
    python -m benchmarks.read_latency --workers 2      # two uvicorn worker processes
    python -m benchmarks.read_latency --base URL       # against a running server (loads first)

Target on a 2-core machine: p50 <= 2 ms and >= 1,500 reads/s with 16 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import httpx

from benchmarks.harness import describe, running_hestia
from benchmarks.load_resources import load


async def read_load(base: str, ids: list[str], clients: int, seconds: float) -> None:
    rng = random.Random(11)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    deadline = 0.0

    async def client_loop(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            target = rng.choice(ids)
            started = time.perf_counter()
            response = await http.get(f"/{target}")
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"read {target}: {response.status_code}")

    # Separate clients (connection pools), as 16 independent apps would be.
    https = [httpx.AsyncClient(base_url=base, limits=limits, timeout=30) for _ in range(clients)]
    try:
        deadline = time.perf_counter() + 1.0  # warm-up: connections, caches
        await asyncio.gather(*(client_loop(h) for h in https))
        latencies.clear()
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(client_loop(h) for h in https))
        elapsed = time.perf_counter() - started
    finally:
        for http in https:
            await http.aclose()
    print(describe(f"read-by-id ({clients} clients)", latencies, elapsed, "reads"))


async def run(base: str, count: int, clients: int, seconds: float) -> None:
    ids = await load(base, count, 8)
    await read_load(base, ids, clients, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="resources to load first")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--base", help="FHIR base URL of a running server (default: start one)")
    args = parser.parse_args()
    if args.base:
        asyncio.run(run(args.base, args.count, args.clients, args.seconds))
        return
    with running_hestia(workers=args.workers) as base:
        asyncio.run(run(base, args.count, args.clients, args.seconds))


if __name__ == "__main__":
    main()
