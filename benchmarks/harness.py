"""Shared by the benchmarks: start a real Hestia (and its database) and summarise latencies."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

from app.store.client import free_port

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def running_hestia(
    *, workers: int = 1, mongodb_uri: str = "", auth: bool = False, audit: bool = True
) -> Iterator[str]:
    """A `hestia serve` child on a free port; yields the FHIR base URL.

    Without `mongodb_uri` it starts its own embedded database on a temporary directory, which is
    how a laptop runs it.
    """
    with TemporaryDirectory(prefix="hestia-bench-") as tmp:
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
            yield base
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


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
