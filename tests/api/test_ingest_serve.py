"""`hestia serve --mllp-port`: an interface engine's messages over a real MLLP socket become
FHIR resources with lineage (Provenance → Binary), each ACKed and audited; and the same
through POST /ingest/hl7v2."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import hl7
import httpx
import pytest
from hl7.mllp import open_hl7_connection

from app.store.client import EmbeddedServer, free_port
from tests.conftest import RunningServer, start_hestia, stop_hestia

ER7 = "x-application/hl7-v2+er7"


@pytest.fixture(scope="module")
def feed_server(
    database: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, int]]:
    port = free_port()
    server = start_hestia(
        tmp_path_factory.mktemp("mllp"),
        {"HESTIA_MONGODB_URI": database.uri, "HESTIA_MLLP_PORT": str(port)},
        name="mllp",
    )
    yield server, port
    stop_hestia(server)


def adt_a01(control_id: str, mrn: str) -> str:
    return "\r".join(
        [
            "MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|HESTIA|HESTIA|20240105101500||ADT^A01|"
            f"{control_id}|P|2.5.1",
            "EVN|A01|20240105101500",
            f"PID|1||{mrn}^^^GHH^MR||EVERYWOMAN^EVE^E||19620320|F",
            "PV1|1|I|2000^2012^01||||004777^ATTEND^AARON^A|||SUR",
        ]
    )


async def send_over_mllp(port: int, messages: list[str]) -> list[hl7.Message]:
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    acks = []
    try:
        for text in messages:
            writer.writemessage(hl7.parse(text))
            await writer.drain()
            acks.append(await asyncio.wait_for(reader.readmessage(), 30))
    finally:
        writer.close()
    return acks


def test_mllp_messages_become_resources_with_provenance(
    feed_server: tuple[RunningServer, int],
) -> None:
    server, port = feed_server
    run = uuid.uuid4().hex[:8]
    messages = [adt_a01(f"{run}-{n}", f"MRN{run}{n}") for n in range(3)]
    acks = asyncio.run(send_over_mllp(port, messages))
    for n, ack in enumerate(acks):
        assert str(ack.segment("MSA")[1]) == "AA", str(ack)
        assert str(ack.segment("MSA")[2]) == f"{run}-{n}"

    with httpx.Client(base_url=server.fhir, timeout=30) as fhir:
        found = fhir.get("/Patient", params={"identifier": f"MRN{run}0"}).json()
        (entry,) = found["entry"]
        patient = entry["resource"]
        assert patient["name"][0]["family"] == "EVERYWOMAN"
        assert patient["birthDate"] == "1962-03-20"
        lineage = fhir.get("/Provenance", params={"target": f"Patient/{patient['id']}"}).json()
        (provenance,) = [e["resource"] for e in lineage["entry"]]
        source = next(e for e in provenance["entity"] if e["role"] == "source")
        binary = fhir.get(f"/{source['what']['reference']}")
        assert binary.status_code == 200
        assert binary.content.replace(b"\n", b"\r").rstrip(b"\r") == messages[0].encode()
        # "What came from this message" is answered from the same Provenance.
        derived = fhir.get("/Provenance", params={"entity": source["what"]["reference"]}).json()
        assert [e["resource"]["id"] for e in derived["entry"]] == [provenance["id"]]
        audited = fhir.get("/AuditEvent", params={"subtype": "mllp", "_count": "100"}).json()
        assert len(audited.get("entry", [])) >= 3


def test_http_ingest_and_duplicate_resend(feed_server: tuple[RunningServer, int]) -> None:
    server, _ = feed_server
    run = uuid.uuid4().hex[:8]
    body = adt_a01(f"{run}-http", f"MRN{run}H").encode()
    with httpx.Client(base_url=server.base, timeout=30) as client:
        first = client.post("/ingest/hl7v2", content=body, headers={"Content-Type": ER7})
        assert first.status_code == 200, first.text
        assert b"MSA|AA|" + f"{run}-http".encode() in first.content
        again = client.post("/ingest/hl7v2", content=body, headers={"Content-Type": ER7})
        assert again.status_code == 200
        assert again.content == first.content  # the original ACK, nothing new written
        found = client.get("/fhir/Patient", params={"identifier": f"MRN{run}H"}).json()
        assert len(found["entry"]) == 1
        assert found["entry"][0]["resource"]["meta"]["versionId"] == "1"
