"""Auditors read AuditEvents from the hash-chained journal, not from the search index.

The index documents auditors' searches run on hold each block's search keys and its events'
seqs and hashes, not the events: the event each answer carries is the journal's, checked
against its hash. So what an intruder changes in the index cannot be what an auditor reads,
and what an intruder changes in the journal, or an index entry that no longer matches it, is
refused with an outcome that says where to look.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from bson import Binary
from pymongo import MongoClient

from app.audit.chain import BLOCK_INDEX, JOURNAL
from app.audit.journal import events_of, inflated, packed, stored_events
from tests.api.test_audit_http import hestia, token
from tests.conftest import RunningServer, start_hestia, stop_hestia


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    tmp = tmp_path_factory.mktemp("journal-reads")
    running = start_hestia(tmp, {"HESTIA_AUTH": "on"}, name="journal-reads")
    yield running, tmp / "journal-reads"
    stop_hestia(running)


@pytest.fixture(scope="module")
def audit(server: tuple[RunningServer, Path]) -> Iterator[Any]:
    _, data_dir = server
    uri = json.loads((data_dir / "hestia-db.json").read_text())["mongodb_uri"]
    with MongoClient(uri) as client:
        yield client["hestia_audit"]


@pytest.fixture(scope="module")
def accessed(server: tuple[RunningServer, Path]) -> tuple[str, dict[str, str], str]:
    """(base, auditor headers, patient id) after a create and two reads of one patient."""
    running, data_dir = server
    admin = token(data_dir, "system/*.cruds")
    created = httpx.post(f"{running.fhir}/Patient", json={"resourceType": "Patient"}, headers=admin)
    pid = created.json()["id"]
    for _ in range(2):
        assert httpx.get(f"{running.fhir}/Patient/{pid}", headers=admin).status_code == 200
    return running.fhir, token(data_dir, "user/AuditEvent.rs"), pid


def _search(base: str, auditor: dict[str, str], pid: str) -> list[dict[str, Any]]:
    bundle = httpx.get(f"{base}/AuditEvent", params={"patient": f"Patient/{pid}"}, headers=auditor)
    assert bundle.status_code == 200, bundle.text
    return [entry["resource"] for entry in bundle.json()["entry"]]


def _journal_resources(audit: Any) -> dict[str, dict[str, Any]]:
    return {
        str(int(event["_id"])): event["resource"]
        for block in audit[JOURNAL].find({})
        for event in events_of(block)
    }


def test_the_index_holds_no_event_and_auditors_get_the_journals(
    accessed: tuple[str, dict[str, str], str], audit: Any
) -> None:
    base, auditor, pid = accessed
    found = _search(base, auditor, pid)
    assert len(found) == 3  # create, read, read
    journal = _journal_resources(audit)
    for event in found:
        assert event == journal[event["id"]]
    documents = list(audit[BLOCK_INDEX].find({"compartments": f"Patient/{pid}"}))
    assert documents
    for doc in documents:
        assert audit[JOURNAL].find_one({"_id": doc["_id"]}) is not None
        for seq, digest, _, _ in orjson.loads(inflated(doc["events"])):  # seq, hash, patients, keys
            assert isinstance(seq, int) and len(digest) == 64
    one = httpx.get(f"{base}/AuditEvent/{found[0]['id']}", headers=auditor)
    assert one.status_code == 200
    assert {k: v for k, v in one.json().items() if k != "meta"} == journal[found[0]["id"]]


def _journal_block_of(audit: Any, seq: int) -> dict[str, Any]:
    block = audit[JOURNAL].find_one({"first": {"$lte": seq}, "last": {"$gte": seq}})
    assert block is not None
    return dict(block)


def test_an_index_entry_that_does_not_match_the_journal_is_refused(
    server: tuple[RunningServer, Path], accessed: tuple[str, dict[str, str], str], audit: Any
) -> None:
    base, auditor, pid = accessed
    victim = _search(base, auditor, pid)[0]
    seq = int(victim["id"])
    document = audit[BLOCK_INDEX].find_one({"first": {"$lte": seq}, "last": {"$gte": seq}})
    original = document["events"]
    entries = orjson.loads(inflated(original))  # an intruder may write it back uncompressed
    for entry in entries:
        if entry[0] == seq:
            entry[1] = "0" * 64
    audit[BLOCK_INDEX].update_one(
        {"_id": document["_id"]}, {"$set": {"events": Binary(orjson.dumps(entries))}}
    )
    try:
        response = httpx.get(
            f"{base}/AuditEvent", params={"patient": f"Patient/{pid}"}, headers=auditor
        )
        assert response.status_code == 500
        assert "hestia audit verify" in response.json()["issue"][0]["diagnostics"]
        # A read by id goes to the journal alone.
        read = httpx.get(f"{base}/AuditEvent/{victim['id']}", headers=auditor).json()
        assert read["outcome"] == victim["outcome"]
        report = hestia(server[1], "audit", "verify")
        assert report.returncode == 1 and "search index" in report.stdout
    finally:
        audit[BLOCK_INDEX].update_one({"_id": document["_id"]}, {"$set": {"events": original}})
    assert hestia(server[1], "audit", "verify").returncode == 0


def test_an_event_changed_in_the_journal_is_refused_to_auditors(
    accessed: tuple[str, dict[str, str], str], audit: Any
) -> None:
    base, auditor, pid = accessed
    victim = _search(base, auditor, pid)[0]
    key = f"{int(victim['id']):020d}"
    block = _journal_block_of(audit, int(victim["id"]))
    original = block["events"]
    events = stored_events(block)
    [event] = [e for e in events if e["_id"] == key]
    event["resource"]["outcome"] = "8" if event["resource"]["outcome"] != "8" else "0"
    audit[JOURNAL].update_one({"_id": block["_id"]}, {"$set": {"events": packed(events)}})
    try:
        for response in (
            httpx.get(f"{base}/AuditEvent", params={"patient": f"Patient/{pid}"}, headers=auditor),
            httpx.get(f"{base}/AuditEvent/{victim['id']}", headers=auditor),
        ):
            assert response.status_code == 500
            outcome = response.json()
            assert outcome["resourceType"] == "OperationOutcome"
            assert "hestia audit verify" in outcome["issue"][0]["diagnostics"]
    finally:
        audit[JOURNAL].update_one({"_id": block["_id"]}, {"$set": {"events": original}})
    assert victim in _search(base, auditor, pid)
