"""Integration fixtures: one embedded database server and one Hestia server per test session.

Both run as real processes; tests talk to Hestia over HTTP and Hestia talks to the database
over the MongoDB wire protocol. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.store.client import EmbeddedServer, free_port

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    base: str
    log: Path

    @property
    def fhir(self) -> str:
        return f"{self.base}/fhir"


def start_hestia(
    tmp: Path, env_extra: dict[str, str], *, name: str = "hestia", workers: int = 1
) -> RunningServer:
    port = free_port()
    log = tmp / f"{name}.log"
    env = {**os.environ, "HESTIA_AUTH": "off", **env_extra}
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "app", "serve", "--port", str(port)),
            *("--data-dir", str(tmp / name), "--workers", str(workers)),
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Hestia exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/fhir/metadata", timeout=1).status_code == 200:
                return RunningServer(process, base, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"Hestia did not start:\n{log.read_text()}")


def process_alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for its parent to collect it (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_hestia(server: RunningServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            server.process.kill()


@pytest.fixture(scope="session")
def database() -> Iterator[EmbeddedServer]:
    server = EmbeddedServer.start(":memory:")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hestia(
    database: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("hestia")
    server = start_hestia(tmp, {"HESTIA_MONGODB_URI": database.uri})
    yield server
    stop_hestia(server)


@pytest.fixture
def fhir(hestia: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hestia.fhir, timeout=30) as client:
        yield client


async def hestia_status(uri: str, data_dir: Path, database: str) -> str:
    """What `hestia status` prints for `database` on the server at `uri`."""
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "status",
        "--mongodb-uri",
        uri,
        "--data-dir",
        str(data_dir),
        cwd=ROOT,
        env={**os.environ, "HESTIA_DATABASE": database},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await done.communicate()
    assert done.returncode == 0
    return out.decode()
