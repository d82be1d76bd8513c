"""Kill the server under read load: every read a client received an answer for has its
AuditEvent stored (the response is only sent once its event is durable), with one worker and
with two."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from datetime import UTC
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from app.audit.chain import JOURNAL
from app.audit.events import event_patients
from app.audit.journal import events_of
from app.store.client import EmbeddedServer
from tests.conftest import start_hestia

JSON = {"Content-Type": "application/fhir+json"}
READERS = 8


@pytest.mark.parametrize("workers", [1, 2])
def test_every_answered_read_is_audited_after_a_kill(tmp_path: Path, workers: int) -> None:
    # With two workers their events go through the host's audit relay (app/audit/relay.py),
    # which outlives a killed `hestia serve` only to commit what it accepted.
    server = start_hestia(tmp_path, {}, name="crash", workers=workers)
    ids = []
    with httpx.Client(base_url=server.fhir, timeout=30) as fhir:
        for _ in range(30):
            ids.append(
                fhir.post("/Patient", json={"resourceType": "Patient"}, headers=JSON).json()["id"]
            )

    answered: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.fhir, timeout=5) as fhir:
            while not stop.is_set():
                pid = rng.choice(ids)
                try:
                    response = fhir.get(f"/Patient/{pid}")
                except httpx.HTTPError:
                    continue  # the server died mid-request: no answer, nothing to check
                if response.status_code == 200:
                    with lock:
                        answered[pid] += 1

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(READERS)]
    for thread in threads:
        thread.start()
    # Kill it under load: once reads are being answered (2 s were not always enough for two
    # workers under the full suite's load: no read had been answered yet), and a moment on.
    loaded_by = time.monotonic() + 20
    while time.monotonic() < loaded_by:
        with lock:
            if sum(answered.values()) >= 100:
                break
        time.sleep(0.1)
    time.sleep(0.5)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert sum(answered.values()) > 50, answered

    # The embedded database follows its parent down (SIGTERM); let it finish, then reopen the
    # same files and count the read events per patient. Under load its graceful shutdown can
    # hang; then it is killed too, the harshest crash there is for what it had acknowledged.
    db_path = str(tmp_path / "crash" / "db")
    deadline = time.monotonic() + 20
    while _processes_of(db_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _processes_of(db_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _processes_of(db_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    database = _reopen(db_path, tmp_path / "reopen.log")
    try:
        with MongoClient(database.uri, tz_aware=True, tzinfo=UTC) as client:
            recorded: Counter[str] = Counter()
            # The journal is the durable record; the search index may lag behind it.
            for block in client["hestia_audit"][JOURNAL].find({}):
                for event in events_of(block):
                    resource = event["resource"]
                    if resource["outcome"] != "0" or resource["subtype"][0]["code"] != "read":
                        continue
                    for patient in event_patients(resource):
                        recorded[patient.split("/", 1)[1]] += 1
    finally:
        database.stop()
    missing = {pid: n - recorded[pid] for pid, n in answered.items() if recorded[pid] < n}
    assert not missing, f"answered reads without an AuditEvent: {missing}"


def _reopen(db_path: str, log_path: Path) -> EmbeddedServer:
    """Open the killed server's files again. The old database process may still be releasing
    its storage lock when its command line is gone, so a failed start is retried once; a
    second failure is reported with the database's own log."""
    try:
        return EmbeddedServer.start(db_path, log_path=log_path)
    except RuntimeError:
        time.sleep(3)
    try:
        return EmbeddedServer.start(db_path, log_path=log_path)
    except RuntimeError as error:
        raise AssertionError(log_path.read_text(errors="replace")[-2000:]) from error


def _processes_of(db_path: str) -> list[int]:
    """Live processes whose command line names `db_path`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if db_path in cmdline:
                pids.append(int(proc.name))
    return pids
