"""The host's audit relay process (relay.py), and how `hestia serve --workers N` keeps it running.

The relay owns what a single worker owns when it runs alone: the group-commit writer
(AuditLog), the auditors' indexer (one per host, where each worker used to start its own and
all but one lost every insert) and the bound on its backlog (AuditIndex.guard).

`hestia serve` starts it before the workers and refuses to start without it, starts it again
whenever it ends, and stops it after the workers; the relay also stops by itself once the
serve process is gone (one killed outright), after committing what it has accepted.

    HESTIA_AUDIT_RELAY=/path/to/socket python -m app.audit.relay_process
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from app.audit.chain import audit_database_name
from app.audit.indexer import IndexerProcess, index_behind
from app.audit.log import AuditLog
from app.audit.projection import AuditIndex
from app.audit.relay import RELAY_ENV, RelayServer
from app.settings import Settings
from app.store.client import Database

log = logging.getLogger("hestia.audit")

PARENT_ENV = "HESTIA_AUDIT_RELAY_PARENT"
PARENT_POLL_S = 0.5
START_TIMEOUT_S = 30.0
RESTART_AFTER_S = 1.0


async def run_relay(settings: Settings, path: str, *, parent: int) -> None:
    """Serve the relay socket until the process that started this one is gone."""
    database = Database.open(
        uri=settings.mongodb_uri, data_dir=settings.data_dir, name=settings.database
    )
    audit_log = AuditLog(
        window=settings.audit_window_ms / 1000,
        timeout=settings.audit_timeout_s,
        search_indexes=settings.audit_search_indexes,
    )
    audit_database = database.client[audit_database_name(settings.database)]
    index = AuditIndex(audit_database)
    indexer: IndexerProcess | None = None
    server = RelayServer(audit_log)
    try:
        await audit_log.start(audit_database)
        indexer = await index_behind(
            audit_log, index, where=settings.audit_indexer, uri=database.uri
        )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        await server.start(path)
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        while os.getppid() == parent and not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), PARENT_POLL_S)
    finally:
        server.close()
        await index.stop()
        if indexer is not None:
            await indexer.stop()
        # Commits what was accepted before answering nobody: the events are durable either way.
        await audit_log.stop()
        await database.close()


class RelayProcess:
    """Keeps the host's relay running beside `hestia serve` (a thread restarts it)."""

    def __init__(self, settings: Settings) -> None:
        self._directory = tempfile.mkdtemp(prefix="hestia-audit-")  # mode 0700
        self.path = str(Path(self._directory) / "relay.sock")
        self._env = {
            **os.environ,
            "HESTIA_MONGODB_URI": settings.mongodb_uri,
            "HESTIA_DATA_DIR": str(settings.data_dir),
            RELAY_ENV: self.path,
            PARENT_ENV: str(os.getpid()),
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the relay and wait until it answers; SystemExit if it does not."""
        self._spawn()
        if not self.wait_ready(START_TIMEOUT_S):
            self.stop()
            raise SystemExit("the audit relay did not start: no access may go unaudited")
        self._thread = threading.Thread(target=self._supervise, name="audit-relay", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                return False
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(self.path)
                    return True
                except OSError:
                    time.sleep(0.05)
        return False

    def _spawn(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "app.audit.relay_process"], env=self._env
        )
        self.starts += 1

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            process = self._process
            code = process.wait() if process is not None else None
            if self._stopping.is_set():
                return
            log.warning("the audit relay exited (%s); starting it again", code)
            if self._stopping.wait(RESTART_AFTER_S):
                return
            try:
                self._spawn()
            except OSError as exc:
                self._process = None
                log.error("the audit relay could not be started (%s)", exc)

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._thread is not None:
            self._thread.join(5)
        shutil.rmtree(self._directory, ignore_errors=True)


def main() -> None:
    path = os.environ.get(RELAY_ENV)
    if not path:
        sys.exit(f"usage: {RELAY_ENV}=/path/to/socket python -m app.audit.relay_process")
    parent = int(os.environ.get(PARENT_ENV) or os.getppid())
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # A Ctrl-C reaches the whole process group. The workers still answer the requests they
    # hold while they shut down, and those need their events: this process ends when `hestia
    # serve` stops it (SIGTERM) after the workers, or once `hestia serve` is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(run_relay(settings, path, parent=parent))


if __name__ == "__main__":
    main()
