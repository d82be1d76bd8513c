"""The MLLP listener on a real TCP socket: framing, concurrency, partial and oversized frames.

Every ACK must carry MSA-2 = the message's MSH-10 (HL7 v2.5 §2.9.2 / table 0008 codes).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from test_corpus_stored import ALL, _header_control_id

from app.ingest.framing import frame
from app.ingest.header import read_header
from app.ingest.mllp import MllpServer, MllpSettings
from app.store.raw import dedup_key, sha256_hex
from tests.ingest.conftest import Wiring
from tests.ingest.ingest_helpers import MllpClient, message, parse_ack


def _oru(control_id: str, mrn: str = "555") -> bytes:
    return message(
        f"MSH|^~\\&|LAB|GHH|HESTIA|HESTIA|20240102080000||ORU^R01|{control_id}|P|2.5.1",
        f"PID|1||{mrn}^^^GHH^MR||DOE^JANE||19800101|F",
        f"OBR|1|ORD-{control_id}|FIL-{control_id}|2345-7^Glucose^LN|||20240102073000",
        "OBX|1|NM|2345-7^Glucose^LN||98|mg/dL^mg/dL^UCUM|70-99|N|||F",
    )


async def _raw_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    data = await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 30)
    assert data.startswith(b"\x0b")
    return data[1:-2]


async def test_corpus_stream_over_four_connections(wiring: Wiring, mllp: MllpServer) -> None:
    """The whole corpus, split across 4 concurrent connections: every message is answered, in
    order, with its own control id; repeats of a (sender, MSH-10) get the first one's ACK."""
    lanes = [ALL[i::4] for i in range(4)]

    async def send_lane(lane: list[tuple[str, bytes]]) -> list[tuple[str, bytes, bytes]]:
        client = await MllpClient.connect(mllp.port)
        try:
            return [(label, raw, await client.send(raw)) for label, raw in lane]
        finally:
            await client.close()

    answered = [item for lane in await asyncio.gather(*map(send_lane, lanes)) for item in lane]
    assert len(answered) == len(ALL)

    acks_by_key: dict[str, set[bytes]] = defaultdict(set)
    for label, raw, ack_bytes in answered:
        ack = parse_ack(ack_bytes)
        assert ack.control_id == _header_control_id(raw), label
        assert ack.code in ("AA", "AE", "AR"), label
        if ack.code != "AA":
            assert ack.reasons and ack.reasons[0], label
        header = read_header(raw)
        key = dedup_key(
            header.sending_application, header.sending_facility, header.control_id, sha256_hex(raw)
        )
        acks_by_key[key].add(ack_bytes)
    assert all(len(acks) == 1 for acks in acks_by_key.values())
    # One stored payload per distinct message, plus the reused-control-id ones kept aside.
    stored = await wiring.raw.collection.count_documents({"status": {"$ne": "duplicate"}})
    assert stored == len(acks_by_key)


async def test_frame_delivered_in_small_pieces(wiring: Wiring, mllp: MllpServer) -> None:
    reader, writer = await _raw_connection(mllp.port)
    wire = frame(_oru("PIECES-1"))
    for i in range(0, len(wire), 7):
        writer.write(wire[i : i + 7])
        await writer.drain()
        await asyncio.sleep(0.001)
    ack = parse_ack(await _read_frame(reader))
    writer.close()
    assert (ack.code, ack.control_id) == ("AA", "PIECES-1")


async def test_several_frames_in_one_write_are_answered_in_order(
    wiring: Wiring, mllp: MllpServer
) -> None:
    reader, writer = await _raw_connection(mllp.port)
    writer.write(b"\r\n" + frame(_oru("ORDER-1")) + frame(_oru("ORDER-2", "556")) + frame(b"junk"))
    await writer.drain()
    acks = [parse_ack(await _read_frame(reader)) for _ in range(3)]
    writer.close()
    assert [(a.code, a.control_id) for a in acks] == [
        ("AA", "ORDER-1"),
        ("AA", "ORDER-2"),
        ("AR", ""),
    ]


async def test_oversized_frame_is_rejected_and_the_connection_goes_on(
    wiring: Wiring, mllp: MllpServer
) -> None:
    limit = mllp.settings.max_frame_bytes
    big = _oru("BIG-1") + b"NTE|1||" + b"x" * (limit + 10) + b"\r"
    reader, writer = await _raw_connection(mllp.port)
    writer.write(frame(big))
    writer.write(frame(_oru("AFTER-BIG")))
    await writer.drain()
    rejected = parse_ack(await _read_frame(reader))
    after = parse_ack(await _read_frame(reader))
    writer.close()
    assert (rejected.code, rejected.control_id) == ("AR", "BIG-1")
    assert rejected.reasons == [
        f"the message is {len(big)} bytes; at most {limit} bytes are accepted"
    ]
    assert (after.code, after.control_id) == ("AA", "AFTER-BIG")
    assert await wiring.raw.collection.count_documents({"control_id": "BIG-1"}) == 0


async def test_many_concurrent_connections(wiring: Wiring, mllp: MllpServer) -> None:
    async def sender(n: int) -> list[tuple[str, str]]:
        client = await MllpClient.connect(mllp.port)
        try:
            out = []
            for k in range(3):
                ack = parse_ack(await client.send(_oru(f"C{n}-{k}", mrn=f"P{n}")))
                out.append((ack.code, ack.control_id))
            return out
        finally:
            await client.close()

    results = await asyncio.gather(*(sender(n) for n in range(25)))
    for n, acks in enumerate(results):
        assert acks == [("AA", f"C{n}-{k}") for k in range(3)]
    assert await wiring.count("Patient") == 25
    assert await wiring.count("Provenance") == 75


async def test_stalled_partial_frame_closes_the_connection(wiring: Wiring) -> None:
    server = wiring.ingestor.mllp_server(MllpSettings(port=0, partial_frame_timeout=0.3))
    await server.start()
    try:
        reader, writer = await _raw_connection(server.port)
        writer.write(b"\x0bMSH|^~\\&|half")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
        writer.close()
    finally:
        await server.stop()


async def test_stop_ends_open_connections(wiring: Wiring) -> None:
    server = wiring.ingestor.mllp_server(MllpSettings(port=0))
    await server.start()
    client = await MllpClient.connect(server.port)
    assert parse_ack(await client.send(_oru("STOP-1"))).code == "AA"
    await asyncio.wait_for(server.stop(), 10)
    assert await asyncio.wait_for(client.reader.read(), 5) == b""
