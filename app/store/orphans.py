"""Embedded database processes left behind by a Hestia that died.

The embedded server is told to stop when its parent dies (PR_SET_PDEATHSIG), but its graceful
shutdown can hang when the parent was killed in the middle of heavy traffic: it then keeps
running, orphaned, holding the storage files, and the next `hestia serve` on the same data dir
cannot open them. Before starting a database on a storage path, such orphans are stopped:
SIGTERM, then SIGKILL if they do not exit. The storage engine's journal makes that as safe as
the crash that orphaned them. A database whose parent is still alive is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger("hestia.store")

PROC = Path("/proc")
STORAGE_FLAG = "--storage-path"


def database_processes(storage_path: str) -> list[int]:
    """Live embedded database processes serving `storage_path` (Linux; [] elsewhere)."""
    if not sys.platform.startswith("linux"):
        return []
    wanted = os.path.realpath(storage_path)
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if not any("secantusd" in a for a in args[:2]) or STORAGE_FLAG not in args:
            continue
        position = args.index(STORAGE_FLAG) + 1
        if position < len(args) and os.path.realpath(args[position]) == wanted:
            found.append(int(entry.name))
    return found


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, …); None if gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces; the fields after it are fixed.
    return stat.rsplit(")", 1)[1].split()


def _is_orphan(pid: int) -> bool:
    fields = _stat(pid)
    # Reparented to init (or to nothing): whatever started it is gone.
    return fields is not None and int(fields[1]) <= 1


def _gone(pid: int) -> bool:
    # A zombie has exited and released its files; only its reaping by init is pending.
    fields = _stat(pid)
    return fields is None or fields[0] == "Z"


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return _gone(pid)


def stop_orphaned_databases(storage_path: str, *, grace_seconds: float = 5.0) -> list[int]:
    """Stop orphaned database processes of `storage_path`; returns their pids."""
    stopped = []
    for pid in database_processes(storage_path):
        if not _is_orphan(pid):
            continue
        log.warning("stopping an orphaned embedded database (pid %d) left on %s", pid, storage_path)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, grace_seconds):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, grace_seconds)
        stopped.append(pid)
    return stopped
