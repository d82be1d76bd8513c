"""The MongoDB connection, and the embedded SecantusDB server started when no URI is configured.

SecantusDB is GPL-2.0 and runs only as a child process (`secantusd-py`); it is never imported.
A running `hestia serve` records its database URI in DATA_DIR/hestia-db.json so other
`hestia` commands given the same --data-dir reuse it instead of opening the files twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import pymongo
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from app.store.orphans import stop_orphaned_databases

log = logging.getLogger("hestia.store")

RUNTIME_FILE = "hestia-db.json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _secantus_executable() -> str:
    beside_python = Path(sys.executable).with_name("secantusd-py")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("secantusd-py")
    if found is None:
        raise RuntimeError(
            "The embedded database needs SecantusDB: install with `pip install -e .[embedded]` "
            "or set HESTIA_MONGODB_URI to a MongoDB replica set"
        )
    return found


def _die_with_parent() -> None:
    # Linux only: the embedded server must not outlive a SIGKILLed Hestia.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class EmbeddedServer:
    """A SecantusDB child process on a loopback port."""

    storage_path: str
    port: int
    process: subprocess.Popen[bytes]
    runtime_file: Path | None = None

    @property
    def uri(self) -> str:
        # No retryable writes: they guard against a primary stepping down, which a single local
        # process never does, and SecantusDB keeps their replies in a registry that it scans
        # whole (and, past 10,000 records, sorts) on every write outside a transaction. Audit
        # commits are such writes: with retryable writes on, audited reads ran at 617-817/s;
        # without, 1,025-1,510/s (benchmarks.read_latency --loader wrk --audit on).
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true&retryWrites=false"

    @classmethod
    def start(cls, storage_path: str, *, log_path: Path | None = None) -> EmbeddedServer:
        server = cls.launch(storage_path, log_path=log_path)
        server.wait_ready()
        return server

    @classmethod
    def launch(cls, storage_path: str, *, log_path: Path | None = None) -> EmbeddedServer:
        """Start the process without waiting for it to accept connections (see wait_ready)."""
        port = free_port()
        if storage_path != ":memory:":
            Path(storage_path).mkdir(parents=True, exist_ok=True)
            stop_orphaned_databases(storage_path)
        log_file: Any = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        process = subprocess.Popen(
            [
                _secantus_executable(),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--storage-path",
                storage_path,
                "--log-level",
                "WARNING",
            ],
            stdout=log_file,
            stderr=log_file,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        if log_path:
            log_file.close()
        return cls(storage_path=storage_path, port=port, process=process)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"The embedded database exited with code {self.process.returncode} "
                    f"(storage {self.storage_path}); see its log"
                )
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.2)
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("The embedded database did not start within 30 s")

    def stop(self, timeout: float = 15.0) -> None:
        if self.runtime_file is not None:
            with contextlib.suppress(OSError):
                self.runtime_file.unlink()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_server_info(data_dir: Path) -> dict[str, Any]:
    """What a live `hestia serve` on this data dir published ({} when none runs)."""
    path = data_dir / RUNTIME_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    pid = info.get("pid") if isinstance(info, dict) else None
    if not isinstance(pid, int) or not _pid_alive(pid):
        return {}
    return dict(info)


def running_database_uri(data_dir: Path) -> str | None:
    """The database URI a live `hestia serve` on this data dir published, if any."""
    uri = running_server_info(data_dir).get("mongodb_uri")
    return uri if isinstance(uri, str) else None


def publish_runtime(data_dir: Path, uri: str, fhir_base: str = "") -> Path:
    path = data_dir / RUNTIME_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "mongodb_uri": uri, "fhir_base": fhir_base}))
    tmp.replace(path)
    return path


def start_embedded(data_dir: Path, fhir_base: str = "", *, wait: bool = True) -> EmbeddedServer:
    """Start the embedded server on DATA_DIR/db and publish its URI (and the server's FHIR
    base URL, the token audience) for other commands on the same data dir.

    With `wait=False` the caller overlaps its own start-up with the database's and calls
    `wait_ready()` before using it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    owner = running_server_info(data_dir).get("pid")
    if owner is not None and owner != os.getpid():
        raise RuntimeError(
            f"another Hestia server (pid {owner}) is using {data_dir}; stop it first, "
            "or give this one its own --data-dir"
        )
    server = EmbeddedServer.launch(str(data_dir / "db"), log_path=data_dir / "db.log")
    if wait:
        server.wait_ready()
    server.runtime_file = publish_runtime(data_dir, server.uri, fhir_base)
    return server


# Closing a client ends its server sessions, which needs a server. With the database already
# gone (a killed `hestia serve` takes its embedded database with it) an unbounded close waited
# out the whole server selection timeout, 10 s, and a worker's shutdown with it.
CLOSE_TIMEOUT_S = 1.0


async def close_client(client: AsyncMongoClient[Any]) -> None:
    with pymongo.timeout(CLOSE_TIMEOUT_S):
        await client.close()


class Database:
    """Owns the client and, when embedded, the server process."""

    def __init__(self, uri: str, name: str, embedded: EmbeddedServer | None = None) -> None:
        self.uri = uri
        self.embedded = embedded
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri,
            tz_aware=True,
            tzinfo=UTC,
            maxPoolSize=64,
            serverSelectionTimeoutMS=10_000,
        )
        self.db = self.client[name]

    @classmethod
    def open(cls, *, uri: str, data_dir: Path, name: str, publish: bool = False) -> Database:
        """Connect to `uri`, or to the embedded server of `data_dir` (starting it if needed)."""
        if uri:
            return cls(uri, name)
        existing = running_database_uri(data_dir)
        if existing and not publish:
            return cls(existing, name)
        if publish:
            server = start_embedded(data_dir)
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            server = EmbeddedServer.start(str(data_dir / "db"), log_path=data_dir / "db.log")
        return cls(server.uri, name, embedded=server)

    async def ping(self, attempts: int = 50) -> None:
        for attempt in range(attempts):
            try:
                await self.client.admin.command("ping")
                return
            except PyMongoError:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        await close_client(self.client)
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)


async def shared_secret(database: Database, name: str) -> bytes:
    """A random secret every instance on this database shares (created on first use), for
    values one instance signs and another must accept, such as paging cursors."""
    import secrets

    doc = await database.db["server_secrets"].find_one_and_update(
        {"_id": name},
        {"$setOnInsert": {"value": secrets.token_hex(32)}},
        upsert=True,
        return_document=True,
    )
    if doc is None:  # an upsert always returns the document; this guards the type only
        raise RuntimeError(f"could not create the {name} secret")
    return bytes.fromhex(str(doc["value"]))
