"""Fuzzed payloads through the whole intake: whatever the bytes, they are stored as received and
answered with an ACK (AA, AE or AR) — never an exception, never a lost payload."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.store.client import EmbeddedServer
from tests.fuzzing import examples, fuzz
from tests.ingest.conftest import HL7V2, wire
from tests.ingest.ingest_helpers import parse_ack

pytestmark = fuzz

SEED = (HL7V2 / "fhir-converter" / "ADT-A01-01.hl7").read_bytes()
SPECIAL = [b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b'""', b"\x0b", b"\x1c", b"\xff", b"MSH"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEED)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        if kind == "insert":
            data[at:at] = draw(st.sampled_from(SPECIAL))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        elif kind == "replace":
            data[at : at + 1] = bytes([draw(st.integers(0, 255))])
        else:
            del data[at:]
    return bytes(data)


@settings(
    max_examples=examples(4),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.one_of(mutated(), st.binary(max_size=300)), min_size=10, max_size=15))
# Found by this test on 2026-12-03: "MSH" then a line break crashed reading the header.
@example(payloads=[b"MSH\r|", b"MSH\n", b"xMSH\r\n|^~\\&"])
# Found by tests/api/test_api_fuzz.py on 2026-12-06: a result past 64 bits failed the write.
@example(
    payloads=[
        b"MSH|^~\\&|LAB|H|HESTIA|H|20240105101500||ORU^R01|M-77|P|2.5.1\r"
        b"PID|1||7001^^^GHH^MR||ROE^RICHARD||19700203|M\rOBR|1||F-1|2345-7^Glucose^LN\r"
        b"OBX|1|NM|2345-7^Glucose^LN||99999999999999999999999|mg/dL|||||F\r"
    ]
)
def test_any_bytes_are_stored_and_answered(database: EmbeddedServer, payloads: list[bytes]) -> None:
    async def run() -> None:
        wiring = await wire(database.uri)
        try:
            for payload in payloads:
                result = await wiring.ingestor.ingest(payload, transport="http", peer=None)
                assert result.status in ("mapped", "failed", "rejected"), result.status
                assert parse_ack(result.ack).code in ("AA", "AE", "AR")
                assert result.raw_id is not None
                stored = await wiring.raw.get(result.raw_id)
                assert stored is not None
                if not result.duplicate:
                    assert stored.data == payload
        finally:
            await wiring.database.client.drop_database(wiring.database.db.name)
            await wiring.database.close()

    asyncio.run(run())
