"""Orphaned embedded databases are stopped, even when they ignore SIGTERM; others never are."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from app.store.orphans import database_processes, stop_orphaned_databases

# Stands in for a database whose graceful shutdown hangs: it ignores SIGTERM.
STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)\n"


def _stubborn_database(tmp_path: Path, storage: Path, *, orphaned: bool) -> int:
    program = tmp_path / "secantusd-py"
    program.write_text(STUBBORN)
    argv = [sys.executable, str(program), "--storage-path", str(storage)]
    if not orphaned:
        return subprocess.Popen(argv).pid
    # The orphan must not hold the launcher's output pipe open, or run() would wait for it.
    launcher = (
        "import subprocess; print(subprocess.Popen("
        f"{argv!r}, start_new_session=True, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL).pid)"
    )
    done = subprocess.run(
        [sys.executable, "-c", launcher], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def _gone(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_an_orphan_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    storage = tmp_path / "db"
    pid = _stubborn_database(tmp_path, storage, orphaned=True)
    time.sleep(0.5)
    assert database_processes(str(storage)) == [pid]
    assert stop_orphaned_databases(str(storage), grace_seconds=0.5) == [pid]
    assert _gone(pid)


def test_a_database_whose_parent_lives_is_left_alone(tmp_path: Path) -> None:
    storage = tmp_path / "db"
    pid = _stubborn_database(tmp_path, storage, orphaned=False)
    try:
        time.sleep(0.5)
        assert stop_orphaned_databases(str(storage), grace_seconds=0.5) == []
        assert not _gone(pid)
        # Another storage path is never matched.
        assert database_processes(str(tmp_path / "other")) == []
    finally:
        subprocess.run(["kill", "-9", str(pid)], check=False)
