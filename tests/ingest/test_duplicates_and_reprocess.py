"""Duplicates (same sender and MSH-10) get the first ACK and write nothing; failed payloads are
kept with their OperationOutcome and can be re-processed."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from app.ingest.service import Hl7v2Ingestor, IngestSettings
from app.store.client import EmbeddedServer
from app.store.raw import RawSource
from app.store.versions import now_utc
from mappers.hl7v2 import Hl7v2Error, MappingResult
from mappers.hl7v2.messages import map_parsed
from tests.ingest.conftest import Wiring, wire
from tests.ingest.ingest_helpers import message, parse_ack

ER7 = "x-application/hl7-v2+er7"


def _oru(control_id: str, value: str = "98") -> bytes:
    return message(
        f"MSH|^~\\&|LAB|GHH|HESTIA|HESTIA|20240102080000||ORU^R01|{control_id}|P|2.5.1",
        "PID|1||9001^^^GHH^MR||DOE^JOHN||19750505|M",
        f"OBR|1|P-{control_id}|F-{control_id}|2345-7^Glucose^LN|||20240102073000",
        f"OBX|1|NM|2345-7^Glucose^LN||{value}|mg/dL^mg/dL^UCUM|70-99|N|||F",
    )


async def _versions(wiring: Wiring) -> int:
    return await wiring.store.count_history({})


async def test_duplicate_gets_the_original_ack_and_no_new_versions(wiring: Wiring) -> None:
    first = await wiring.ingestor.ingest(_oru("D-1"), transport="mllp", peer="a:1")
    versions = await _versions(wiring)
    again = await wiring.ingestor.ingest(_oru("D-1"), transport="mllp", peer="b:2")
    assert first.status == "mapped" and not first.duplicate
    assert again.duplicate and again.raw_id == first.raw_id
    assert again.ack == first.ack  # byte for byte the ACK sent the first time
    assert await _versions(wiring) == versions
    assert await wiring.count("Provenance") == 1
    doc = await wiring.raw.collection.find_one({"_id": first.raw_id})
    assert doc is not None and doc["duplicates"] == 1
    assert await wiring.raw.collection.count_documents({}) == 1


async def test_concurrent_duplicates_write_once(wiring: Wiring) -> None:
    results = await asyncio.gather(
        *(wiring.ingestor.ingest(_oru("D-2"), transport="mllp", peer=f"p:{i}") for i in range(4))
    )
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.ack for r in results}) == 1
    assert parse_ack(results[0].ack).code == "AA"
    # Patient, ServiceRequest, DiagnosticReport, Observation, Provenance: one version each.
    assert await _versions(wiring) == 5


async def test_reused_control_id_with_other_content_is_kept_but_not_mapped(
    wiring: Wiring,
) -> None:
    first = await wiring.ingestor.ingest(_oru("D-3", "98"), transport="http", peer=None)
    versions = await _versions(wiring)
    other = await wiring.ingestor.ingest(_oru("D-3", "250"), transport="http", peer=None)
    assert other.ack == first.ack and other.duplicate
    assert await _versions(wiring) == versions
    kept = await wiring.raw.collection.find_one({"status": "duplicate"})
    assert kept is not None and b"|250|" in kept["data"]
    assert kept["duplicate_of"] == first.raw_id


async def test_unfinished_original_is_completed_by_its_resend(database: EmbeddedServer) -> None:
    wiring = await wire(database.uri, IngestSettings(duplicate_wait_seconds=0.2))
    try:
        # As left by a crash between storing the bytes and mapping them.
        stored, _ = await wiring.raw.insert(
            _oru("D-4"),
            content_type=ER7,
            source=RawSource("mllp", "a:1", "LAB", "GHH"),
            control_id="D-4",
            received_at=now_utc(),
        )
        resent = await wiring.ingestor.ingest(_oru("D-4"), transport="mllp", peer="a:1")
        assert resent.status == "mapped" and resent.raw_id == stored.id
        assert parse_ack(resent.ack).code == "AA"
        assert await wiring.count("Observation") == 1
    finally:
        await wiring.database.client.drop_database(wiring.database.db.name)
        await wiring.database.close()


def _mapper_before_the_fix(message: Any, **kwargs: Any) -> MappingResult:
    """The mapper as it was before it learned ORU^R01 (the deployed one knows it)."""
    if message.message_code == "ORU":
        raise Hl7v2Error("ORU^R01 is not supported yet", segment="MSH", field=9, ack_code="AR")
    return map_parsed(message, **kwargs)


async def test_failed_payload_is_kept_and_reprocessed_after_a_mapper_fix(
    wiring: Wiring, http: httpx.AsyncClient
) -> None:
    before_fix = Hl7v2Ingestor(wiring.interactions, wiring.raw, mapper=_mapper_before_the_fix)
    failed = await before_fix.ingest(_oru("R-1"), transport="mllp", peer="a:1")
    assert failed.status == "rejected" and parse_ack(failed.ack).code == "AR"
    assert await wiring.count("Observation") == 0

    listed = (await http.get("/ingest/hl7v2/payloads", params={"status": "failed"})).json()
    (entry,) = listed["payloads"]
    assert entry["id"] == failed.raw_id and entry["status"] == "rejected"
    assert entry["outcome"]["resourceType"] == "OperationOutcome"
    assert entry["outcome"]["issue"][0]["diagnostics"] == "ORU^R01 is not supported yet"
    assert entry["outcome"]["issue"][0]["expression"] == ["MSH-9"]

    # Re-processing runs the current mapper over the stored bytes.
    response = await http.post("/ingest/hl7v2/$reprocess", params={"status": "failed"})
    assert response.status_code == 200
    (done,) = response.json()["reprocessed"]
    assert done["payload"] == failed.raw_id
    assert (done["status"], done["ackCode"]) == ("mapped", "AA")
    assert await wiring.count("Observation") == 1
    stored = await wiring.raw.get(failed.raw_id)  # type: ignore[arg-type]
    assert stored is not None
    assert stored.status == "mapped" and stored.attempts == 2 and stored.outcome is None
    assert parse_ack(stored.ack or b"").code == "AA"
    assert await wiring.raw.list_by_status() == []

    # A later resend of the same message now gets the new ACK and changes nothing.
    versions = await _versions(wiring)
    again = await wiring.ingestor.ingest(_oru("R-1"), transport="mllp", peer="a:1")
    assert again.duplicate and again.ack == stored.ack
    assert await _versions(wiring) == versions


async def test_reprocess_one_payload_by_id(wiring: Wiring, http: httpx.AsyncClient) -> None:
    first = await wiring.ingestor.ingest(_oru("R-2"), transport="http", peer=None)
    response = await http.post("/ingest/hl7v2/$reprocess", params={"payload": first.raw_id})
    (done,) = response.json()["reprocessed"]
    assert done["status"] == "mapped"
    # Re-mapping with the same mapper finds every resource (ids are deterministic) exactly as
    # stored: it adds no version, and its Provenance is the first one.
    assert done["provenance"] == first.provenance
    assert done["resources"] == first.resources
    assert await wiring.count("Observation") == 1


async def test_a_repeated_patient_adds_no_version_but_is_named_by_the_provenance(
    wiring: Wiring,
) -> None:
    first = await wiring.ingestor.ingest(_oru("U-1"), transport="mllp", peer="a:1")
    # A new result for the same patient: the PID says what is stored already.
    second = await wiring.ingestor.ingest(_oru("U-2", "120"), transport="mllp", peer="a:1")
    assert (first.status, second.status) == ("mapped", "mapped")
    patient = next(r for r in first.resources if r.startswith("Patient/"))
    assert patient.endswith("/_history/1")
    assert patient in second.resources  # the version it confirmed, not a new one
    assert await wiring.store.count_history({"type": "Patient"}) == 1
    assert second.provenance is not None
    provenance_id = second.provenance.split("/")[1]
    doc = await wiring.store.read_current("Provenance", provenance_id)
    assert doc is not None
    assert {"reference": patient} in doc["resource"]["target"]
    # A changed PID is written as the next version.
    changed = _oru("U-3").replace(b"DOE^JOHN", b"DOE^JONATHAN")
    third = await wiring.ingestor.ingest(changed, transport="mllp", peer="a:1")
    assert patient.replace("/_history/1", "/_history/2") in third.resources
