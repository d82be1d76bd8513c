"""Shared by the benchmarks: start a real Hestia (and its database) and summarise latencies."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

from app.store.client import free_port

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def running_hestia(
    *,
    workers: int = 1,
    mongodb_uri: str = "",
    auth: bool = False,
    audit: bool = True,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
    data_dir: Path | None = None,
) -> Iterator[str]:
    """A `hestia serve` child on a free port; yields the FHIR base URL. `on_start` receives the
    child process once it answers (to measure its CPU, for example).

    Without `mongodb_uri` it starts its own embedded database in `data_dir` (default: a
    temporary directory), which is how a laptop runs it. Give `data_dir` to run other `hestia`
    commands against the same server, e.g. `operator_token`.
    """
    with TemporaryDirectory(prefix="hestia-bench-") as scratch:
        tmp = str(data_dir or scratch)
        port = free_port()
        env = {
            **os.environ,
            "HESTIA_AUTH": "on" if auth else "off",
            "HESTIA_AUDIT": "on" if audit else "off",
            "HESTIA_LOG_LEVEL": "warning",
        }
        if mongodb_uri:
            env["HESTIA_MONGODB_URI"] = mongodb_uri
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                tmp,
                "--workers",
                str(workers),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}/fhir"
        try:
            wait_until_up(base, process)
            if on_start is not None:
                on_start(process)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def operator_token(data_dir: Path, scope: str) -> str:
    """An access token from `hestia token` for the server running on `data_dir`."""
    done = subprocess.run(
        [sys.executable, "-m", "app", "token", "--data-dir", str(data_dir), "--scope", scope],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.strip().splitlines()[-1]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux); 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root_pid: int, only: str | None = None) -> float:
    """User + system CPU of a process and all its descendants, from /proc (Linux; 0 elsewhere);
    with `only`, of those whose command line contains it.

    For a `hestia serve` child that is the server, its workers and the embedded database."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    commands: dict[int, str] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
        if only is not None:
            try:
                command = (entry / "cmdline").read_bytes()
                commands[int(entry.name)] = command.decode(errors="replace")
            except OSError:
                commands[int(entry.name)] = ""
    total, frontier = 0.0, [root_pid]
    while frontier:
        pid = frontier.pop()
        if only is None or only in commands.get(pid, ""):
            total += cpu.get(pid, 0.0)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return total


def wait_until_up(base: str, process: subprocess.Popen[bytes], timeout: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError("Hestia exited during start-up")
        try:
            if httpx.get(f"{base}/metadata", timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise RuntimeError("Hestia did not start")


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def describe(label: str, latencies_s: Sequence[float], elapsed_s: float, unit: str) -> str:
    ms = [x * 1000 for x in latencies_s]
    return (
        f"{label}: {len(ms)} {unit} in {elapsed_s:.2f} s = {len(ms) / elapsed_s:,.0f} {unit}/s; "
        f"latency p50 {percentile(ms, 0.50):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms, "
        f"mean {statistics.fmean(ms):.2f} ms"
    )
