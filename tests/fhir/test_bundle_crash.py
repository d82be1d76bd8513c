"""Crash test: the process running a large transaction Bundle is killed with SIGKILL, then the
database too; after a restart the store holds the whole Bundle or none of it, history included.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from app.store.client import EmbeddedServer

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = 1500
DB = "crash"

# The "server": loads one large transaction and says when it starts and when it committed.
WRITER = """
import asyncio, random, sys
from datetime import UTC
from pymongo import AsyncMongoClient
from app.fhir.bundle import BundleProcessor
from app.fhir.interactions import Interactions
from app.fhir.search.execute import SearchEngine
from app.store.versions import Store, WriteBatch
from benchmarks.transaction_ingest import synthea_like_bundle

flush = WriteBatch.flush

async def announced_flush(self, session):
    print("flushing", flush=True)
    return await flush(self, session)

WriteBatch.flush = announced_flush

async def main(uri, size):
    client = AsyncMongoClient(uri, tz_aware=True, tzinfo=UTC)
    store = Store(client["crash"])
    processor = BundleProcessor(Interactions(store, SearchEngine(store).match_ids))
    bundle = synthea_like_bundle(random.Random(3), size)
    print("start", flush=True)
    await processor.process(bundle, base_url="http://x/fhir", max_entries=100000)
    print("committed", flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def counts(uri: str) -> tuple[int, int]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True, tzinfo=UTC)
    try:
        db = client[DB]
        names = [n for n in await db.list_collection_names() if n[:1].isupper()]
        current = sum([await db[n].count_documents({}) for n in names])
        history = await db["history"].count_documents({})
        return current, history
    finally:
        await client.close()


def run_and_kill(uri: str, marker: str, delay: float) -> bool:
    """Start the writer, SIGKILL it `delay` s after it printed `marker`; True if it had
    committed by then."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, uri, str(ENTRIES)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert writer.stdout is not None
    while (line := writer.stdout.readline().strip()) != marker:
        assert line, "the writer ended early"
    time.sleep(delay)
    writer.kill()
    rest = writer.communicate()[0]
    return "committed" in rest


@pytest.mark.slow
@pytest.mark.parametrize(
    ("marker", "delay"),
    [("start", 0.5), ("flushing", 0.0), ("flushing", 0.05), ("flushing", 0.2), ("", None)],
)
def test_sigkill_mid_transaction_leaves_all_or_nothing(
    tmp_path: Path, marker: str, delay: float | None
) -> None:
    """Killed while preparing, while the writes are being sent, or (delay None, the control)
    after the commit; each time the database is then killed too and restarted."""
    storage = str(tmp_path / "db")
    server = EmbeddedServer.start(storage)
    try:
        committed = (
            run_and_kill(server.uri, marker, delay) if delay is not None else finish(server.uri)
        )
    finally:
        server.process.kill()  # the database dies too, without a clean shutdown
        server.process.wait()
    server = EmbeddedServer.start(storage)
    try:
        current, history = asyncio.run(counts(server.uri))
    finally:
        server.stop()
    assert (current, history) in ((0, 0), (ENTRIES, ENTRIES))
    print(f"killed after {marker!r}+{delay}: committed={committed} stored={current}")
    if committed:
        assert current == ENTRIES


def finish(uri: str) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", WRITER, uri, str(ENTRIES)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return "committed" in done.stdout
