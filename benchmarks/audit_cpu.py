"""What auditing costs the server's CPU per read by id, split into its parts, without HTTP.

    python -m benchmarks.audit_cpu [--reads 8000] [--concurrency 16] [--rounds 3]

`audit_overhead` measures the issue's target, throughput with audit on against off under wrk,
but on a 2-core machine that number moves by ten points between runs: the load generator, the
database and the server share the cores, and the machine is noisy. This benchmark measures the
part that the server's own core pays, which is what limits audited reads at saturation, and it
splits it:

- `off`: the real app (`create_app`, embedded database, authentication off), audit off;
- `gate`: audit on, every event built, gated and handed to the group-commit writer, but the
  writer stores nothing (its insert is replaced, here only, by one that returns the seqs at
  once): what auditing costs before anything is made durable, its floor;
- `wait`: the same, but each commit takes 1.5 ms without using CPU, as a durable insert takes
  on the embedded database: what waiting for commits costs the server by itself (its event
  loop goes idle and wakes up for every commit, instead of running requests back to back);
- `on`: audit on, as served.

Each mode runs in a process of its own with its own database, and the modes alternate over
the rounds. Reads go straight to the ASGI app, `concurrency` at a time, with the read cache
warm; CPU is this process's (the server's threads included, not the database's), per read.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

MODES = ("off", "gate", "wait", "on")
# How long `wait`'s commits take, spending no CPU: about what a durable insert takes the
# embedded database, so that requests wait, and events are grouped, as when they are stored.
COMMIT_S = 0.0015
Message = dict[str, Any]


def _http_scope(method: str, path: str) -> Message:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"application/fhir+json"),
            (b"accept", b"application/fhir+json"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }


async def _call(app: Any, method: str, path: str, body: bytes = b"") -> list[Message]:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    out: list[Message] = []

    async def send(message: Message) -> None:
        out.append(message)

    await app(_http_scope(method, path), receive, send)
    return out


def _store_nothing(app: Any, commit_s: float) -> None:
    """`gate` and `wait`: the writer hands out seqs without storing, after `commit_s` (a
    measuring device only)."""
    from app.api.audit import AuditMiddleware

    [log] = [m.kwargs["log"] for m in app.user_middleware if m.cls is AuditMiddleware]
    next_seq = [0]

    async def insert_chained(events: list[Any]) -> list[int]:
        if commit_s:
            await asyncio.sleep(commit_s)
        first = next_seq[0] + 1
        next_seq[0] += len(events)
        return list(range(first, first + len(events)))

    log._insert_chained = insert_chained


async def _measure(mode: str, reads: int, concurrency: int) -> float:
    from app.main import create_app
    from app.settings import Settings

    with tempfile.TemporaryDirectory(prefix="hestia-audit-cpu-") as data_dir:
        settings = Settings.from_env(data_dir=data_dir, auth=False, audit=mode != "off")
        app = create_app(settings)
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        outbox: asyncio.Queue[Message] = asyncio.Queue()
        await inbox.put({"type": "lifespan.startup"})
        lifespan = asyncio.create_task(
            app(
                {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put
            )
        )
        started = await outbox.get()
        if started["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the app did not start: {started}")
        if mode in ("gate", "wait"):
            _store_nothing(app, COMMIT_S if mode == "wait" else 0.0)
        patient = orjson.dumps({"resourceType": "Patient", "name": [{"family": "Bench"}]})
        created = await _call(app, "POST", "/fhir/Patient", patient)
        location = dict(created[0]["headers"])[b"location"].decode()
        path = "/fhir/Patient/" + location.split("/Patient/")[1].split("/")[0]
        read: Callable[[], Awaitable[list[Message]]] = lambda: _call(app, "GET", path)  # noqa: E731
        for _ in range(500):  # warm: the read cache, the writer, the interpreter's caches
            await read()

        async def client() -> None:
            for _ in range(reads // concurrency):
                response = await read()
                if response[0]["status"] != 200:
                    raise RuntimeError(f"read answered {response[0]['status']}")

        cpu = time.process_time()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        per_read = (time.process_time() - cpu) / (reads // concurrency * concurrency)
        await inbox.put({"type": "lifespan.shutdown"})
        await lifespan
        return per_read * 1e6


def _run_mode(mode: str, args: argparse.Namespace) -> float:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.audit_cpu",
            "--mode",
            mode,
            "--reads",
            str(args.reads),
            "--concurrency",
            str(args.concurrency),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--reads", type=int, default=8000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(f"{asyncio.run(_measure(args.mode, args.reads, args.concurrency)):.2f}")
        return
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            results[mode].append(_run_mode(mode, args))
    off = statistics.median(results["off"])
    print(f"server CPU per read by id, {args.concurrency} at a time, median of {args.rounds}:")
    for mode in MODES:
        value = statistics.median(results[mode])
        rounds = ", ".join(f"{v:.1f}" for v in results[mode])
        extra = "" if mode == "off" else f"  (+{value - off:.1f} µs, +{(value / off - 1):.0%})"
        print(f"  {mode:4} {value:6.1f} µs{extra}  [rounds: {rounds}]")
    # At saturation throughput is inversely proportional to this CPU: the cost in throughput.
    on = statistics.median(results["on"])
    print(f"audit cost at saturation, if the server's core is the limit: {1 - off / on:.1%}")


if __name__ == "__main__":
    main()
