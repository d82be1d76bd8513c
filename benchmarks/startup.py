"""Start-up time of `hestia serve` with its embedded database, from launch to the first
answered /metadata, on a fresh data dir and again on the same (now populated) one.

    python -m benchmarks.startup --runs 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from tempfile import TemporaryDirectory

from app.store.client import free_port
from benchmarks.harness import ROOT, wait_until_up


def one_start(data_dir: str, auth: bool) -> float:
    port = free_port()
    env = {**os.environ, "HESTIA_AUTH": "on" if auth else "off", "HESTIA_LOG_LEVEL": "warning"}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port), "--data-dir", data_dir],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/fhir", process)
        return time.monotonic() - started
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for auth in (True, False):
        with TemporaryDirectory(prefix="hestia-start-") as data_dir:
            times = [one_start(data_dir, auth) for _ in range(args.runs)]
        label = "auth on " if auth else "auth off"
        print(
            f"{label}: first (fresh data dir) {times[0]:.2f} s; then "
            + ", ".join(f"{t:.2f} s" for t in times[1:])
        )


if __name__ == "__main__":
    main()
