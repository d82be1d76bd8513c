"""Every access leaves an AuditEvent that auditors can search through the FHIR API; the log
cannot be changed through the API, and tampering with the database is detected."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from app.audit.chain import JOURNAL, seq_key
from app.audit.journal import packed, stored_events
from tests.conftest import ROOT, RunningServer, start_hestia, stop_hestia

JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    tmp = tmp_path_factory.mktemp("audited")
    running = start_hestia(tmp, {"HESTIA_AUTH": "on"}, name="audited")
    yield running, tmp / "audited"
    stop_hestia(running)


def hestia(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args, "--data-dir", str(data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def token(data_dir: Path, scope: str, patient: str | None = None) -> dict[str, str]:
    args = ["token", "--scope", scope] + (["--patient", patient] if patient else [])
    done = hestia(data_dir, *args)
    assert done.returncode == 0, done.stderr
    return {**JSON, "Authorization": f"Bearer {done.stdout.strip().splitlines()[-1]}"}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def events(base: str, auditor: dict[str, str], **params: str) -> list[dict]:
    bundle = httpx.get(f"{base}/AuditEvent", params={**params, "_count": "200"}, headers=auditor)
    assert bundle.status_code == 200, bundle.text
    return [e["resource"] for e in bundle.json().get("entry", [])]


def subtype(event: dict) -> str:
    return str(event["subtype"][0]["code"])


def admin_and_auditor(
    server: tuple[RunningServer, Path],
) -> tuple[str, Path, dict[str, str], dict[str, str]]:
    """The FHIR base, the data dir, and headers of an all-powerful client and an auditor."""
    running, data_dir = server
    admin = token(data_dir, "system/*.cruds")
    return running.fhir, data_dir, admin, token(data_dir, "user/AuditEvent.rs")


def test_reads_writes_and_denials_are_each_recorded_once(
    server: tuple[RunningServer, Path],
) -> None:
    base, data_dir, admin, auditor = admin_and_auditor(server)
    since = now()
    patient = httpx.post(f"{base}/Patient", json={"resourceType": "Patient"}, headers=admin).json()
    pid = patient["id"]
    alice = token(data_dir, "patient/*.rs", patient=pid)
    assert httpx.get(f"{base}/Patient/{pid}", headers=alice).status_code == 200
    assert httpx.get(f"{base}/Patient/{pid}").status_code == 401
    assert httpx.delete(f"{base}/Patient/{pid}", headers=alice).status_code == 403

    about = events(base, auditor, patient=f"Patient/{pid}", date=f"ge{since}")
    by_kind = sorted((subtype(e), e["outcome"]) for e in about)
    assert ("create", "0") in by_kind
    assert ("read", "0") in by_kind
    assert ("delete", "4") in by_kind  # the refused delete, outcome "minor failure"
    assert [k for k in by_kind if k == ("read", "0")] == [("read", "0")]
    read = next(e for e in about if subtype(e) == "read")
    assert any(e["what"]["reference"] == f"Patient/{pid}/_history/1" for e in read["entity"])
    assert json.dumps(read).find("Bearer") == -1  # identifiers only, no credentials
    # The unauthenticated read names no patient (nothing was served) but is recorded too.
    denied = events(base, auditor, date=f"ge{since}", outcome="4")
    assert any(subtype(e) == "read" for e in denied)


def test_only_auditor_scopes_read_the_log(server: tuple[RunningServer, Path]) -> None:
    running, data_dir = server
    base = running.fhir
    patient_token = token(data_dir, "patient/*.rs", patient="someone")
    wildcard = token(data_dir, "system/*.rs")
    for headers in (patient_token, wildcard):
        assert httpx.get(f"{base}/AuditEvent", headers=headers).status_code == 403
    assert (
        httpx.get(f"{base}/AuditEvent", headers=token(data_dir, "system/AuditEvent.rs")).status_code
        == 200
    )


def test_the_log_cannot_be_changed_through_the_api(server: tuple[RunningServer, Path]) -> None:
    running, data_dir = server
    base = running.fhir
    auditor = token(data_dir, "system/AuditEvent.cruds")
    some = events(base, auditor)[0]
    body = {**some, "outcome": "0"}
    assert (
        httpx.put(f"{base}/AuditEvent/{some['id']}", json=body, headers=auditor).status_code == 405
    )
    assert httpx.delete(f"{base}/AuditEvent/{some['id']}", headers=auditor).status_code == 405
    assert httpx.post(f"{base}/AuditEvent", json=body, headers=auditor).status_code == 405
    read = httpx.get(f"{base}/AuditEvent/{some['id']}", headers=auditor)
    assert read.status_code == 200 and read.json()["id"] == some["id"]


def test_reading_the_log_is_itself_audited(server: tuple[RunningServer, Path]) -> None:
    running, data_dir = server
    base = running.fhir
    auditor = token(data_dir, "user/AuditEvent.rs")
    since = now()
    events(base, auditor, action="R")
    time.sleep(0.05)
    searches = events(base, auditor, subtype="search-type", date=f"ge{since}")
    assert any(e.get("entity") and any("query" in x for x in e["entity"]) for e in searches), (
        searches
    )


def test_unknown_audit_search_parameters_are_refused(server: tuple[RunningServer, Path]) -> None:
    running, data_dir = server
    auditor = token(data_dir, "user/AuditEvent.rs")
    response = httpx.get(f"{running.fhir}/AuditEvent", params={"policy": "x"}, headers=auditor)
    assert response.status_code == 400
    assert "policy" in response.text


def test_verify_detects_a_tampered_event(server: tuple[RunningServer, Path]) -> None:
    _, data_dir = server
    ok = hestia(data_dir, "audit", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    uri = json.loads((data_dir / "hestia-db.json").read_text())["mongodb_uri"]
    with MongoClient(uri) as client:
        journal = client["hestia_audit"][JOURNAL]
        block = journal.find_one({"_id": {"$lte": seq_key(2)}}, sort=[("_id", -1)])
        assert block is not None
        events = stored_events(block)
        [victim] = [e for e in events if e["_id"] == seq_key(2)]
        victim["resource"]["outcome"] = "8" if victim["resource"]["outcome"] != "8" else "0"
        block["events"] = packed(events)
        journal.replace_one({"_id": block["_id"]}, block)
    broken = hestia(data_dir, "audit", "verify")
    assert broken.returncode == 1
    assert "2" in broken.stdout and "broken" in broken.stdout.lower()


def test_a_search_over_two_patients_records_one_event_per_patient(
    server: tuple[RunningServer, Path],
) -> None:
    base, _, admin, auditor = admin_and_auditor(server)
    code = f"audit-{time.time_ns()}"
    patients = []
    for _ in range(2):
        pid = httpx.post(f"{base}/Patient", json={"resourceType": "Patient"}, headers=admin)
        patients.append(pid.json()["id"])
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "urn:test", "code": code}]},
            "subject": {"reference": f"Patient/{patients[-1]}"},
        }
        assert httpx.post(f"{base}/Observation", json=observation, headers=admin).is_success
    since = now()
    found = httpx.get(
        f"{base}/Observation",
        params={"code": f"urn:test|{code}", "_include": "Observation:subject"},
        headers=admin,
    )
    assert found.status_code == 200 and len(found.json()["entry"]) == 4
    searches = [e for e in events(base, auditor, date=f"ge{since}") if subtype(e) == "search-type"]
    searches = [e for e in searches if any("query" in x for x in e.get("entity", []))]
    named = sorted(
        x["what"]["reference"]
        for e in searches
        for x in e["entity"]
        if x.get("role", {}).get("code") == "1"
    )
    assert named == sorted(f"Patient/{p}" for p in patients)
    assert len(searches) == 2


def test_auditors_page_through_the_log_newest_first(server: tuple[RunningServer, Path]) -> None:
    running, data_dir = server
    base = running.fhir
    auditor = token(data_dir, "user/AuditEvent.rs")
    since = now()
    for _ in range(5):
        assert httpx.get(f"{base}/metadata").status_code == 200
    pages = 0
    found: list[dict] = []
    url: str | None = f"{base}/AuditEvent?date=ge{since}&_sort=-date&_count=2"
    while url:
        bundle = httpx.get(url, headers=auditor).json()
        found += [e["resource"] for e in bundle.get("entry", [])]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        pages += 1
    assert pages >= 3
    keys = [(e["recorded"], int(e["id"])) for e in found]
    assert keys == sorted(keys, reverse=True)
    assert len({e["id"] for e in found}) == len(found)
    # Oldest first, the same events come first; the searches above were audited after them.
    oldest_first = events(base, auditor, date=f"ge{since}", _sort="date")
    assert [e["id"] for e in oldest_first][: len(found)] == [e["id"] for e in reversed(found)]
