"""Read-by-id latency and throughput with concurrent httpx clients.

    python -m benchmarks.read_latency                  # start Hestia, load, measure
    python -m benchmarks.read_latency --workers 2      # two uvicorn worker processes
    python -m benchmarks.read_latency --base URL       # against a running server (loads first)
    python -m benchmarks.read_latency --auth on        # every request with a bearer token

Each client is its own `httpx.Client` (its own connection) in its own thread; the clients are
spread over `--processes` load-generator processes, because one Python process cannot issue
more than about a thousand HTTP requests a second and would measure itself, not the server.
Target on a 2-core machine: p50 <= 2 ms and >= 1,500 reads/s with 16 clients.

    python -m benchmarks.read_latency --loader wrk     # the same load from wrk (apt: wrk)

The Python load generator needs about as much CPU per request as the server, on the same two
cores. wrk (C, event loop) needs a fraction of that, so its numbers are closer to a server
whose clients are on other machines; the same clients, the same random ids.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from benchmarks.harness import describe, operator_token, running_hestia
from benchmarks.load_resources import load

Headers = dict[str, str]
# What the load needs: create the resources, then read them.
LOAD_SCOPE = "system/*.cruds"


def _client_thread(
    base: str, headers: Headers, ids: list[str], deadline: float, seed: int, out: list[float]
) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=30, headers=headers) as http:
        while time.time() < deadline:
            target = rng.choice(ids)
            started = time.perf_counter()
            response = http.get(f"/{target}")
            out.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"read {target}: {response.status_code}")


def _load_process(args: tuple[str, Headers, list[str], int, float, float, int]) -> list[float]:
    base, headers, ids, clients, warm_until, deadline, seed = args
    for phase_end, keep in ((warm_until, False), (deadline, True)):
        results: list[list[float]] = [[] for _ in range(clients)]
        threads = [
            threading.Thread(
                target=_client_thread,
                args=(base, headers, ids, phase_end, seed + n, results[n]),
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


def read_load(
    base: str, headers: Headers, ids: list[str], clients: int, seconds: float, processes: int
) -> None:
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
            [
                (base, headers, ids, n, warm_until, deadline, 100 * i)
                for i, n in enumerate(per_process)
            ],
        )
    latencies = [x for part in parts for x in part]
    print(
        describe(
            f"read-by-id ({clients} clients, {processes} processes)", latencies, seconds, "reads"
        )
    )


def read_every_id_once(base: str, headers: Headers, ids: list[str]) -> None:
    """Steady state before timing: every resource read once, so that the read cache holds
    them all, whichever mode or loader is measured, rather than the first seconds of each
    run paying for cold reads in proportion to how few reads the run makes."""
    with httpx.Client(base_url=base, timeout=30, headers=headers) as http:
        for target in ids:
            if http.get(f"/{target}").status_code != 200:
                raise RuntimeError(f"read {target} failed")


WRK_SCRIPT = """
local ids = {%s}
local prefix = "%s/"
request = function()
  return wrk.format("GET", prefix .. ids[math.random(#ids)])
end
"""
# Seconds of wrk before each timed run, at about the same rate (not counted).
WRK_WARM_UP_S = 1.0
WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def read_load_wrk(
    base: str, headers: Headers, ids: list[str], clients: int, seconds: float
) -> None:
    """The same read load from wrk: `clients` connections over 2 threads, random ids."""
    rate, p50, p99 = wrk_phase(base, ids, clients, seconds, headers)
    print(
        f"read-by-id (wrk, {clients} connections): {rate:,.0f} reads/s; "
        f"latency p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )


def wrk_phase(
    base: str, ids: list[str], clients: int, seconds: float, headers: Headers | None = None
) -> tuple[float, float, float]:
    """One wrk run of random reads: (reads/s, p50 ms, p99 ms)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("--loader wrk needs wrk on the PATH (Debian: apt-get install wrk)")
    url = urlsplit(base)
    lua_ids = ",".join(f'"{i}"' for i in ids)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "reads.lua"
        script.write_text(WRK_SCRIPT % (lua_ids, url.path.rstrip("/")))
        origin = f"{url.scheme}://{url.netloc}"
        connections = [wrk, f"-t{min(2, clients)}", f"-c{clients}", "-s", str(script)]
        for name, value in (headers or {}).items():
            connections += ["-H", f"{name}: {value}"]
        # A second to open the connections and warm the server, as the Python loader does.
        subprocess.run(
            [*connections, f"-d{WRK_WARM_UP_S:g}s", origin], capture_output=True, check=True
        )
        done = subprocess.run(
            [*connections, f"-d{seconds:g}s", "--latency", origin],
            capture_output=True,
            text=True,
            check=True,
        )
    out = done.stdout
    if "Non-2xx or 3xx responses" in out:
        raise RuntimeError(f"wrk saw failed reads:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    points = {
        p: float(v) * WRK_UNITS[u]
        for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    }
    return rate, points.get("50", float("nan")), points.get("99", float("nan"))


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
        "--loader", choices=("python", "wrk"), default="python", help="load generator"
    )
    parser.add_argument(
        "--audit",
        choices=("on", "off", "both"),
        default="on",
        help="AuditEvent per request; 'both' runs off then on, side by side",
    )
    parser.add_argument(
        "--auth",
        choices=("on", "off"),
        default="off",
        help=f"'on': authentication on, every request with a {LOAD_SCOPE} bearer token",
    )
    args = parser.parse_args()

    def run(base: str, headers: Headers) -> None:
        ids = asyncio.run(load(base, args.count, 8, headers))
        read_every_id_once(base, headers, ids)
        for clients in sorted({1, args.clients}):
            if args.loader == "wrk":
                read_load_wrk(base, headers, ids, clients, args.seconds)
            else:
                read_load(base, headers, ids, clients, args.seconds, args.processes)

    if args.base:
        run(args.base, {})
        return
    auth = args.auth == "on"
    for audit in (False, True) if args.audit == "both" else (args.audit == "on",):
        print(f"-- audit {'on' if audit else 'off'}, auth {args.auth}, {args.workers} worker(s)")
        with (
            tempfile.TemporaryDirectory(prefix="hestia-bench-") as data_dir,
            running_hestia(
                workers=args.workers, audit=audit, auth=auth, data_dir=Path(data_dir)
            ) as base,
        ):
            headers: Headers = {}
            if auth:
                token = operator_token(Path(data_dir), LOAD_SCOPE)
                headers = {"Authorization": f"Bearer {token}"}
            run(base, headers)


if __name__ == "__main__":
    main()
