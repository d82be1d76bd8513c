"""The auditors' indexer in its own process (app/audit/indexer.py): it keeps the index up to
date beside the server, is started again when it fails, stops with its parent, and the server
still bounds its backlog."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from app.audit.chain import audit_database_name
from app.audit.indexer import DATABASE_ENV, URI_ENV, IndexerProcess
from app.audit.journal import head_seq
from app.audit.log import AuditLog
from app.audit.projection import AuditIndex
from app.settings import Settings
from app.store.client import EmbeddedServer
from tests.audit.conftest import Db
from tests.audit.test_log import append_many, one_event
from tests.conftest import ROOT, RunningServer, hestia_status, process_alive


async def _indexed_through(db: Db, seq: int, seconds: float = 10.0) -> bool:
    index = AuditIndex(db)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await index.watermark() >= seq:
            return True
        await asyncio.sleep(0.05)
    return False


async def _ends_and_comes_back(indexer: IndexerProcess, how: signal.Signals) -> None:
    before, starts = indexer.pid, indexer.starts
    assert before is not None
    os.kill(before, how)
    for _ in range(100):
        if indexer.starts > starts:
            break
        await asyncio.sleep(0.05)
    assert indexer.starts == starts + 1 and indexer.pid != before


async def test_the_indexer_is_started_again_when_it_fails(
    database: EmbeddedServer, audit_db: Db
) -> None:
    log = AuditLog(window=0)
    await log.start(audit_db)
    indexer = IndexerProcess(database.uri, audit_db.name)
    await indexer.start()
    try:
        await append_many(log, 30)
        assert await _indexed_through(audit_db, log.head_seq)
        await _ends_and_comes_back(indexer, signal.SIGKILL)
        await append_many(log, 30, start=100)
        assert await _indexed_through(audit_db, log.head_seq)
        # Asked to stop on its own (a clean exit), it is started again too: only the server's
        # shutdown ends it.
        await _ends_and_comes_back(indexer, signal.SIGTERM)
    finally:
        pid = indexer.pid
        await indexer.stop()
        await log.stop()
    assert pid is not None and not process_alive(pid)


async def test_the_indexer_stops_when_its_parent_is_gone(
    database: EmbeddedServer, audit_db: Db
) -> None:
    env = {**os.environ, URI_ENV: database.uri, DATABASE_ENV: audit_db.name}
    launcher = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-m', 'app.audit.indexer'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", launcher, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        child = int(await parent.stdout.readline())
        log = AuditLog(window=0)
        await log.start(audit_db)
        try:
            await append_many(log, 20)
            assert await _indexed_through(audit_db, log.head_seq)
        finally:
            await log.stop()
        parent.kill()  # as a server killed outright: no shutdown, no SIGTERM to the child
        await parent.wait()
        deadline = time.monotonic() + 5
        while process_alive(child):
            assert time.monotonic() < deadline, "the indexer outlived its parent"
            await asyncio.sleep(0.05)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


async def test_appends_wait_while_the_index_is_too_far_behind(audit_db: Db) -> None:
    # No indexer runs: the server's guard alone sees the backlog pass twice its bound.
    log = AuditLog(window=0)
    await log.start(audit_db)
    index = AuditIndex(audit_db)
    await index.guard(log, interval_s=0.02, max_backlog=10)
    try:
        for n in range(30):  # one block each: the index takes whole blocks
            await log.append(one_event(n))
        for _ in range(100):
            if log.holding:
                break
            await asyncio.sleep(0.02)
        assert log.holding
        # Back under twice the bound (20) but not under the bound (10): appends still wait.
        await index.catch_up(limit=15)
        await asyncio.sleep(0.1)
        assert log.holding
        await index.catch_up()  # what the indexer process does
        for _ in range(100):
            if not log.holding:
                break
            await asyncio.sleep(0.02)
        assert not log.holding
    finally:
        await index.stop()
        await log.stop()


async def test_a_server_indexes_its_audit_events_without_an_auditor_asking(
    hestia: RunningServer, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    async with httpx.AsyncClient(base_url=hestia.fhir, timeout=30) as fhir:
        for _ in range(20):
            assert (await fhir.get("/metadata")).status_code == 200
    audit = mongo[audit_database_name("hestia")]
    assert await _indexed_through(audit, await head_seq(audit))
    assert _children_running(hestia.process.pid, b"app.audit.indexer"), (
        "the server runs no indexer process"
    )


def _children_running(parent: int, module: bytes) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if ppid == parent and module in cmdline:
            found.append(int(proc.name))
    return found


async def test_hestia_status_tells_how_far_the_index_is_behind(
    database: EmbeddedServer, mongo: AsyncMongoClient[dict[str, Any]], tmp_path: Path
) -> None:
    name = f"status_{os.getpid()}_{int(time.monotonic() * 1000)}"
    audit = mongo[audit_database_name(name)]
    log = AuditLog(window=0)
    await log.start(audit)
    try:
        for n in range(30):  # one block each: the index takes whole blocks
            await log.append(one_event(n))
    finally:
        await log.stop()
    assert await AuditIndex(audit).catch_up(limit=10) == 10
    printed = await hestia_status(database.uri, tmp_path, name)
    assert "audit log: 30 events, 10 indexed for auditors (20 behind)" in printed


def test_an_unknown_indexer_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HESTIA_AUDIT_INDEXER", "inprocess")
    with pytest.raises(ValueError, match="HESTIA_AUDIT_INDEXER must be one of process, in-process"):
        Settings.from_env()
    monkeypatch.setenv("HESTIA_AUDIT_INDEXER", "In-Process")
    assert Settings.from_env().audit_indexer == "in-process"


def test_the_patient_index_is_on_with_mongodb_and_off_on_the_embedded_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HESTIA_AUDIT_SEARCH_INDEXES", raising=False)
    monkeypatch.delenv("HESTIA_MONGODB_URI", raising=False)
    assert Settings.from_env().audit_search_indexes is False
    assert Settings.from_env(mongodb_uri="mongodb://db.example:27017").audit_search_indexes
    assert Settings.from_env(audit_search_indexes=True).audit_search_indexes is True
    monkeypatch.setenv("HESTIA_MONGODB_URI", "mongodb://db.example:27017")
    assert Settings.from_env().audit_search_indexes is True
    monkeypatch.setenv("HESTIA_AUDIT_SEARCH_INDEXES", "off")
    assert Settings.from_env().audit_search_indexes is False


async def test_events_from_before_the_server_started_do_not_hold_its_appends(
    audit_db: Db,
) -> None:
    # A store upgraded from the per-event index: the whole journal is unindexed at start-up.
    before = AuditLog(window=0)
    await before.start(audit_db)
    for n in range(40):
        await before.append(one_event(n))
    await before.stop()
    log = AuditLog(window=0)
    await log.start(audit_db)
    index = AuditIndex(audit_db)
    await index.guard(log, interval_s=0.02, max_backlog=10)
    try:
        for n in range(15):  # over twice the bound counting history, under it without
            await log.append(one_event(100 + n))
        await asyncio.sleep(0.2)
        assert not log.holding
        await index.catch_up(limit=40)  # the history is indexed: the bound applies again
        for n in range(10):
            await log.append(one_event(200 + n))
        for _ in range(100):
            if log.holding:
                break
            await asyncio.sleep(0.02)
        assert log.holding  # 25 new events unindexed, past twice the bound
    finally:
        await index.stop()
        await log.stop()
