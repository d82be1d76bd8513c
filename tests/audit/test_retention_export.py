"""Export to NDJSON, retention purges of whole chain prefixes, and the operator commands."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from bson import Binary

from app.audit.chain import BLOCK_INDEX, CHECKPOINTS, JOURNAL, seq_key
from app.audit.cli import add_audit_commands, run_audit_command
from app.audit.events import AuditFacts, AuditSource, build_events
from app.audit.export import export
from app.audit.log import AuditLog
from app.audit.retention import PurgeRefused, purge
from app.audit.verify import purge_marker, verify_chain
from tests.audit.conftest import Db, index_all, stored, tamper_journal

SOURCE = AuditSource("hestia-test")
NOW = datetime.now(UTC).replace(microsecond=0)


async def append_at(log: AuditLog, when: datetime, patient: str) -> str:
    facts = AuditFacts(
        "read", resource_type="Patient", resource_id=patient, status=200, recorded=when
    )
    [event] = build_events(facts, SOURCE)
    await log.append(event)
    return f"Patient/{patient}"


def read_target(event: dict[str, Any]) -> str:
    """The resource a read event names (version suffix dropped)."""
    reference = str(event["entity"][0]["what"]["reference"])
    return "/".join(reference.split("/")[:2])


async def test_export_writes_the_events_in_the_window_as_ndjson(
    audit_log: AuditLog, audit_db: Db
) -> None:
    ids = [await append_at(audit_log, NOW - timedelta(days=d), f"p{d}") for d in (5, 3, 1)]
    out = io.BytesIO()
    count = await export(audit_db, NOW - timedelta(days=4), NOW - timedelta(days=2), out)
    lines = out.getvalue().splitlines()
    assert count == 1 and len(lines) == 1
    event = orjson.loads(lines[0])
    assert event["resourceType"] == "AuditEvent"
    assert read_target(event) == ids[1]
    everything = io.BytesIO()
    assert await export(audit_db, None, None, everything) == 3
    assert [read_target(orjson.loads(x)) for x in everything.getvalue().splitlines()] == ids


async def test_export_with_chain_lets_the_receiver_check_links(
    audit_log: AuditLog, audit_db: Db
) -> None:
    for d in (2, 1):
        await append_at(audit_log, NOW - timedelta(days=d), "p1")
    out = io.BytesIO()
    await export(audit_db, None, None, out, with_chain=True)
    first, second = (orjson.loads(x) for x in out.getvalue().splitlines())
    assert (first["seq"], second["seq"]) == (1, 2)
    assert second["prev"] == first["hash"]


async def test_purge_removes_a_whole_prefix_and_keeps_the_chain_verifiable(
    audit_log: AuditLog, audit_db: Db
) -> None:
    # seq 1-3 old, seq 4 new, seq 5 stamped old again: the log records it no earlier than
    # seq 4 (chain.link), so only 1-3 may go, and the chain is never holed.
    for days in (40, 39, 38, 1, 45):
        await append_at(audit_log, NOW - timedelta(days=days), "p1")
    fourth, fifth = (await stored(audit_db))[3:5]
    assert fifth["recorded"] == fourth["recorded"]
    assert fifth["resource"]["recorded"] == fourth["resource"]["recorded"]
    third = (await stored(audit_db))[2]
    assert await index_all(audit_db) == 5
    report = await purge(audit_db, audit_log, SOURCE, retention_days=30)
    assert report.through_seq == 3
    assert report.purged == 3
    remaining = await stored(audit_db)
    assert [int(d["_id"]) for d in remaining] == [4, 5, 6]
    # The search index loses the same prefix, and nothing else.
    await index_all(audit_db)
    assert [int(d["_id"]) async for d in audit_db[BLOCK_INDEX].find({}).sort("_id", 1)] == [4, 5, 6]
    verified = await verify_chain(audit_db)
    assert verified.ok, verified.summary()
    assert verified.checkpoint_seq == 3
    # The purge is itself audited, in the chain, naming what it removed.
    purge_event = remaining[-1]["resource"]
    assert purge_event["subtype"][0]["code"] == "audit-purge"
    assert purge_event["action"] == "D"
    assert purge_marker(purge_event) == (3, third["hash"])
    # Appending continues the chain from the remaining segment.
    await append_at(audit_log, NOW, "p2")
    assert (await verify_chain(audit_db)).ok


async def test_purge_with_nothing_expired_changes_nothing(
    audit_log: AuditLog, audit_db: Db
) -> None:
    await append_at(audit_log, NOW, "p1")
    report = await purge(audit_db, audit_log, SOURCE, retention_days=30)
    assert report.through_seq is None
    assert len(await stored(audit_db)) == 1


async def test_purge_refuses_a_broken_chain(audit_log: AuditLog, audit_db: Db) -> None:
    for days in (40, 39, 1):
        await append_at(audit_log, NOW - timedelta(days=days), "p1")
    await tamper_journal(audit_db, 1, lambda event: event["resource"].update(action="C"))
    with pytest.raises(PurgeRefused):
        await purge(audit_db, audit_log, SOURCE, retention_days=30)
    assert len(await stored(audit_db)) == 3


async def test_a_forged_checkpoint_does_not_hide_a_deleted_prefix(
    audit_log: AuditLog, audit_db: Db
) -> None:
    for days in (3, 2, 1):
        await append_at(audit_log, NOW - timedelta(days=days), "p1")
    second = (await stored(audit_db))[1]
    await audit_db[JOURNAL].delete_many({"_id": {"$lte": seq_key(2)}})
    await audit_db[CHECKPOINTS].insert_one({"_id": 2, "through_seq": 2, "anchor": second["hash"]})
    report = await verify_chain(audit_db)
    assert not report.ok
    assert "not vouched" in (report.reason or "")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hestia")
    add_audit_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


async def test_cli_verify_reports_ok_then_the_broken_link(
    audit_log: AuditLog, audit_db: Db
) -> None:
    for days in (2, 1):
        await append_at(audit_log, NOW - timedelta(days=days), "p1")
    out = io.StringIO()
    assert await run_audit_command(parse(["audit", "verify"]), audit_db, stdout=out) == 0
    assert out.getvalue().startswith("OK: 2 events")
    # verify is itself an access to the audit log, and is recorded.
    newest = (await stored(audit_db))[-1]["resource"]
    assert newest["subtype"][0]["code"] == "audit-verify"
    await tamper_journal(audit_db, 2, lambda event: event["resource"].update(outcome="8"))
    out = io.StringIO()
    assert await run_audit_command(parse(["audit", "verify"]), audit_db, stdout=out) == 1
    assert out.getvalue().startswith("BROKEN at seq 2")


async def test_cli_export_and_purge(audit_log: AuditLog, audit_db: Db, tmp_path: Path) -> None:
    for days in (50, 40, 1):
        await append_at(audit_log, NOW - timedelta(days=days), "p1")
    target = tmp_path / "audit.ndjson"
    since, until = (NOW - timedelta(days=45)).isoformat(), (NOW - timedelta(days=2)).isoformat()
    args = parse(["audit", "export", "--since", since, "--until", until, "--out", str(target)])
    assert await run_audit_command(args, audit_db) == 0
    lines: list[Any] = [orjson.loads(x) for x in target.read_bytes().splitlines()]
    assert len(lines) == 1
    export_events = [d["resource"] for d in await stored(audit_db)]
    assert export_events[-1]["subtype"][0]["code"] == "audit-export"

    out = io.StringIO()
    args = parse(["audit", "purge", "--days", "30"])
    assert await run_audit_command(args, audit_db, stdout=out) == 0
    assert out.getvalue().startswith("purged 2 events through seq 2")
    assert (await verify_chain(audit_db)).ok


async def test_cli_export_stops_with_a_message_at_a_block_it_cannot_read(
    audit_log: AuditLog, audit_db: Db, tmp_path: Path
) -> None:
    for days in (2, 1):
        await append_at(audit_log, NOW - timedelta(days=days), "p1")
    await audit_db[JOURNAL].update_one(
        {"_id": seq_key(2)}, {"$set": {"events": Binary(b"[{not json")}}
    )
    out = io.StringIO()
    args = parse(["audit", "export", "--out", str(tmp_path / "audit.ndjson")])
    assert await run_audit_command(args, audit_db, stdout=out) == 1
    assert out.getvalue().startswith("export stopped: the events of block")
    assert "hestia audit verify" in out.getvalue()
