"""POST /ingest/hl7v2, $reprocess, the failed-payload listing and Binary reads, over HTTP (the
router mounted on a FastAPI app, requests through httpx's ASGI transport, real database)."""

from __future__ import annotations

import base64

import httpx

from tests.ingest.conftest import HL7V2, Wiring
from tests.ingest.ingest_helpers import message, parse_ack, parse_acks

ER7 = "x-application/hl7-v2+er7"


def _adt(control_id: str, mrn: str = "7001", event: str = "A04") -> bytes:
    return message(
        f"MSH|^~\\&|REG|GHH|HESTIA|HESTIA|20240105101500||ADT^{event}|{control_id}|P|2.5.1",
        f"EVN|{event}|20240105101500",
        f"PID|1||{mrn}^^^GHH^MR||ROE^RICHARD||19700203|M",
        "PV1|1|O|CLINIC^^^GHH",
    )


async def test_single_message_gets_its_ack_as_the_body(http: httpx.AsyncClient) -> None:
    response = await http.post("/ingest/hl7v2", content=_adt("H-1"), headers={"content-type": ER7})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(ER7)
    ack = parse_ack(response.content)
    assert (ack.code, ack.control_id) == ("AA", "H-1")
    assert response.content.startswith(b"MSH|^~\\&|HESTIA|HESTIA|REG|GHH|")


async def test_text_plain_with_lf_line_endings_is_accepted(http: httpx.AsyncClient) -> None:
    body = _adt("H-LF").replace(b"\r", b"\n")
    response = await http.post(
        "/ingest/hl7v2", content=body, headers={"content-type": "text/plain"}
    )
    assert response.status_code == 200
    assert parse_ack(response.content).code == "AA"


async def test_batch_file_gets_a_batch_of_acks(http: httpx.AsyncClient, wiring: Wiring) -> None:
    batch = (HL7V2 / "python-hl7" / "sample_batch1.hl7").read_bytes()
    response = await http.post("/ingest/hl7v2", content=batch, headers={"content-type": ER7})
    acks = parse_acks(response.content)
    assert response.content.startswith(b"FHS|")
    assert response.content.rstrip(b"\r").endswith(b"FTS|1")
    sent = [m for m in batch.replace(b"\n", b"\r").split(b"\r") if m.startswith(b"MSH")]
    assert len(acks) == len(sent) >= 2
    assert [a.control_id for a in acks] == [m.split(b"|")[9].decode() for m in sent]
    assert await wiring.raw.collection.count_documents({}) == len(sent)


async def test_wrong_content_type_is_415(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/ingest/hl7v2", content=_adt("H-CT"), headers={"content-type": "application/json"}
    )
    assert response.status_code == 415
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_unparseable_body_is_ar_400_and_kept(http: httpx.AsyncClient, wiring: Wiring) -> None:
    response = await http.post(
        "/ingest/hl7v2", content=b"hello, this is not HL7", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 400
    ack = parse_ack(response.content)
    assert ack.code == "AR" and ack.reasons
    (kept,) = await wiring.raw.list_by_status(("rejected",))
    assert kept.data == b"hello, this is not HL7"


async def test_unsupported_type_is_ar_with_reason(http: httpx.AsyncClient) -> None:
    body = message(
        "MSH|^~\\&|X|Y|HESTIA|HESTIA|20240101||QBP^Q22|U-1|P|2.5.1",
        "QPD|IHE PDQ Query|Q1|@PID.5.1.1^ROE",
    )
    response = await http.post("/ingest/hl7v2", content=body, headers={"content-type": ER7})
    ack = parse_ack(response.content)
    assert response.status_code == 400
    assert (ack.code, ack.control_id) == ("AR", "U-1")
    assert "QBP" in ack.reasons[0]
    assert ack.errors[0][2].startswith("MSH^1^9")  # ERR-2: the segment and field at fault


async def test_unmappable_message_is_ae_422_with_err(http: httpx.AsyncClient) -> None:
    body = message(
        "MSH|^~\\&|REG|GHH|HESTIA|HESTIA|20240105||ADT^A01|E-1|P|2.5.1",
        "EVN|A01|20240105",
        "PID|1||^^^GHH^MR||NOBODY^NEMO",  # PID-3 without an identifier
    )
    response = await http.post("/ingest/hl7v2", content=body, headers={"content-type": ER7})
    ack = parse_ack(response.content)
    assert response.status_code == 422
    assert (ack.code, ack.control_id) == ("AE", "E-1")
    assert ack.errors[0][2].startswith("PID^1^3")


async def test_binary_serves_the_stored_bytes(http: httpx.AsyncClient, wiring: Wiring) -> None:
    sent = _adt("H-BIN", mrn="7002")
    response = await http.post("/ingest/hl7v2", content=sent, headers={"content-type": ER7})
    raw_id = response.headers["x-hestia-payload"]

    as_fhir = await http.get(f"/fhir/Binary/{raw_id}", headers={"accept": "application/fhir+json"})
    assert as_fhir.status_code == 200
    binary = as_fhir.json()
    assert binary["resourceType"] == "Binary" and binary["id"] == raw_id
    assert binary["contentType"] == ER7
    assert base64.b64decode(binary["data"]) == sent

    native = await http.get(f"/fhir/Binary/{raw_id}")
    assert native.content == sent
    assert native.headers["content-type"].startswith(ER7)

    # The Provenance of the message names exactly this Binary as its source.
    stored = await wiring.raw.get(raw_id)
    assert stored is not None and stored.provenance is not None
    kind, pid, _, vid = stored.provenance.split("/")
    provenance = (await wiring.store.read_version(kind, pid, int(vid)))["resource"]  # type: ignore[index]
    assert provenance["entity"] == [{"role": "source", "what": {"reference": f"Binary/{raw_id}"}}]
    assert provenance["agent"][0]["who"]["identifier"]["value"] == "REG"

    # The keys behind Provenance?entity=Binary/<id> ("what came from this message") and
    # Provenance?target=Type/id ("where did this come from") are on the stored Provenance.
    (found,) = await wiring.store.find("Provenance", {"s.entity": f"Binary/{raw_id}"})
    assert found["_id"] == pid
    for versioned in stored.resources:
        target = versioned.split("/_history/")[0]
        (source,) = await wiring.store.find("Provenance", {"s.target": target})
        assert source["_id"] == pid

    missing = await http.get("/fhir/Binary/doesnotexist")
    assert missing.status_code == 404


async def test_reprocess_requires_a_selection(http: httpx.AsyncClient) -> None:
    response = await http.post("/ingest/hl7v2/$reprocess")
    assert response.status_code == 400
    unknown = await http.post("/ingest/hl7v2/$reprocess", params={"payload": "nope"})
    assert unknown.status_code == 404
