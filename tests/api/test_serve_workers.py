"""`hestia serve --workers 2` with audit on: the workers append through the host's audit relay,
so one writer chains every worker's events; a relay that dies is started again, and while it
is gone accesses are refused (503), never served unaudited."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from app.audit.chain import JOURNAL
from app.audit.journal import stored_events
from app.store.client import running_server_info
from tests.conftest import ROOT, RunningServer, process_alive, start_hestia, stop_hestia

JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    tmp = tmp_path_factory.mktemp("workers")
    # Its own embedded database, as `./scripts/serve --workers 2` would have.
    running = start_hestia(tmp, {"HESTIA_MONGODB_URI": ""}, name="two", workers=2)
    yield running, tmp / "two"
    stop_hestia(running)


def descendants(root: int) -> dict[int, str]:
    """Every process below `root`, with its command line (Linux /proc)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[1])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid:
                found[child] = commands[child]
                frontier.append(child)
    return found


def relay_pid(server: RunningServer) -> int:
    [pid] = [p for p, c in descendants(server.process.pid).items() if "relay_process" in c]
    return pid


def journal_writers(data_dir: Path) -> list[str]:
    """The writer of every journaled event, in chain order."""
    uri = running_server_info(data_dir)["mongodb_uri"]
    with MongoClient(uri) as client:
        blocks = client["hestia_audit"][JOURNAL].find({}, sort=[("_id", 1)])
        return [str(block["writer"]) for block in blocks for _ in stored_events(block)]


def read_many(base: str, target: str, count: int) -> list[int]:
    """`count` reads on fresh connections, 8 at a time, so that both workers take some."""

    def one(_: int) -> int:
        return httpx.get(f"{base}/{target}", headers={"Connection": "close"}).status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def test_both_workers_append_through_one_writer(server: tuple[RunningServer, Path]) -> None:
    running, data_dir = server
    base = running.fhir
    created = httpx.post(f"{base}/Patient", json={"resourceType": "Patient"}, headers=JSON)
    assert created.status_code == 201
    target = f"Patient/{created.json()['id']}"
    assert read_many(base, target, 60) == [200] * 60
    writers = journal_writers(data_dir)
    assert len(writers) >= 61  # the create and every read
    # One writer for the host, and it is the relay (writer ids start with their process id).
    relay = relay_pid(running)
    assert {w.split("-")[0] for w in writers} == {str(relay)}
    verify = subprocess.run(
        [sys.executable, "-m", "app", "audit", "verify", "--data-dir", str(data_dir)],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "HESTIA_MONGODB_URI"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_killed_relay_is_started_again_and_nothing_goes_unaudited(
    server: tuple[RunningServer, Path],
) -> None:
    running, data_dir = server
    base = running.fhir
    created = httpx.post(f"{base}/Patient", json={"resourceType": "Patient"}, headers=JSON)
    target = f"Patient/{created.json()['id']}"
    before = len(journal_writers(data_dir))
    killed = relay_pid(running)
    os.kill(killed, signal.SIGKILL)
    statuses: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        statuses.append(httpx.get(f"{base}/{target}").status_code)
        if statuses[-1] == 200 and 503 in statuses:
            break
        time.sleep(0.05)
    # Refused while the relay was gone, served again once the new one was up.
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses and statuses[-1] == 200, statuses
    assert relay_pid(running) != killed
    served = statuses.count(200)
    # Every read that was served has its event (the 503s are audited too, when possible).
    assert len(journal_writers(data_dir)) - before >= served


def test_workers_and_relay_stop_when_serve_is_killed_outright(tmp_path: Path) -> None:
    running = start_hestia(tmp_path, {"HESTIA_MONGODB_URI": ""}, name="killed", workers=2)
    try:
        children = descendants(running.process.pid)
        workers = [p for p, c in children.items() if "multiprocessing" in c and "spawn" in c]
        assert len(workers) == 2, children
        relay = relay_pid(running)
        running.process.kill()  # SIGKILL: no shutdown of its own
        running.process.wait(10)
        deadline = time.monotonic() + 20
        left = [*workers, relay]
        while left and time.monotonic() < deadline:
            left = [p for p in left if process_alive(p)]
            time.sleep(0.1)
        assert not left, f"still running after serve was killed: {left}"
        # Nothing holds the port: a new server could take it.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{running.fhir}/metadata", timeout=2)
    finally:
        stop_hestia(running)
