"""`hestia serve` with its own embedded database: data survives a restart, the embedded
server stops with it, and other `hestia` commands share its database through the data dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, start_hestia, stop_hestia

JSON = {"Content-Type": "application/fhir+json"}


def hestia_command(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HESTIA_MONGODB_URI"}
    return subprocess.run(
        [sys.executable, "-m", "app", *args, "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_data_survives_restart_and_is_shared(tmp_path: Path) -> None:
    first = start_hestia(tmp_path, {}, name="persist")
    data_dir = tmp_path / "persist"
    try:
        body = {"resourceType": "Patient", "id": "survivor", "gender": "female"}
        assert (
            httpx.put(f"{first.fhir}/Patient/survivor", json=body, headers=JSON).status_code == 201
        )
        runtime = json.loads((data_dir / "hestia-db.json").read_text())
        assert runtime["mongodb_uri"].startswith("mongodb://127.0.0.1:")

        shared = hestia_command("status", data_dir=data_dir)
        assert shared.returncode == 0, shared.stderr
        assert "shared with the running server" in shared.stdout
        assert "Patient\t1" in shared.stdout
    finally:
        stop_hestia(first)
    assert first.process.returncode == 0
    assert "Traceback" not in first.log.read_text()
    assert not (data_dir / "hestia-db.json").exists()
    db_pids = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and str(data_dir / "db") in _cmdline(p)
    ]
    assert not [pid for pid in db_pids if pid_alive(pid)], "the embedded database outlived Hestia"

    # With no server running, a command starts the embedded database itself.
    alone = hestia_command("status", data_dir=data_dir)
    assert alone.returncode == 0, alone.stderr
    assert "started for this command" in alone.stdout and "Patient\t1" in alone.stdout

    second = start_hestia(tmp_path, {}, name="persist")
    try:
        read = httpx.get(f"{second.fhir}/Patient/survivor")
        assert read.status_code == 200
        assert read.json()["gender"] == "female"
        assert read.json()["meta"]["versionId"] == "1"
    finally:
        stop_hestia(second)


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _orphaned_database(storage: Path, log: Path) -> int:
    """Start an embedded database on `storage` from a process that then exits at once, as a
    killed `hestia serve` leaves one behind; returns its pid."""
    script = (
        "import subprocess, sys\n"
        "from app.store.client import _secantus_executable, free_port\n"
        f"log = open({str(log)!r}, 'ab')\n"
        "p = subprocess.Popen([_secantus_executable(), '--host', '127.0.0.1', '--port',"
        f" str(free_port()), '--storage-path', {str(storage)!r}], stdout=log, stderr=log,"
        " start_new_session=True)\n"
        "print(p.pid)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


def test_a_database_orphaned_by_a_killed_server_is_stopped_before_serving_again(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "orphaned"
    storage = data_dir / "db"
    storage.mkdir(parents=True)
    orphan = _orphaned_database(storage, tmp_path / "orphan.log")
    # Let it take its storage lock, as the database of a running server has.
    time.sleep(2)
    assert pid_alive(orphan)
    assert _parent_of(orphan) <= 1, "the stand-in orphan was not reparented to init"

    server = start_hestia(tmp_path, {}, name="orphaned")
    try:
        assert httpx.get(f"{server.fhir}/metadata").status_code == 200
        assert not pid_alive(orphan) or _is_zombie(orphan)
        assert "orphaned embedded database" in server.log.read_text()
    finally:
        stop_hestia(server)


def test_a_second_server_on_the_same_data_dir_is_refused_clearly(tmp_path: Path) -> None:
    first = start_hestia(tmp_path, {}, name="shared")
    try:
        data_dir = str(tmp_path / "shared")
        second = subprocess.run(
            [sys.executable, "-m", "app", "serve", "--port", "1", "--data-dir", data_dir],
            cwd=ROOT,
            env={**os.environ, "HESTIA_AUTH": "off"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1
        assert f"pid {first.process.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        # The running server is untouched, database included.
        assert httpx.get(f"{first.fhir}/metadata").status_code == 200
    finally:
        stop_hestia(first)


def _parent_of(pid: int) -> int:
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _is_zombie(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_sigterm_stops_a_server_whose_embedded_database_is_gone(tmp_path: Path) -> None:
    """A server that has lost its database still stops when asked. The change feed swallowed
    the cancellation of a server selection that could not succeed and retried it, so
    `hestia serve` ignored SIGTERM for good (measured: still running 60 s later; now 3.7 s)."""
    from tests.api.test_serve_workers import descendants

    server = start_hestia(tmp_path, {"HESTIA_MONGODB_URI": ""}, name="lost-db")
    try:
        databases = [p for p, c in descendants(server.process.pid).items() if "secantusd" in c]
        assert len(databases) == 1
        os.kill(databases[0], 9)
        time.sleep(3)  # the feed and the audit writer meet the dead database
        server.process.terminate()
        assert server.process.wait(20) == 0
    finally:
        stop_hestia(server)
