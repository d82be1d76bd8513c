"""Property tests: whatever the bytes, the mapper answers with its mapped error or a Bundle."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappers.hl7v2 import Hl7v2Error, InternalMappingError, build_ack, map_message
from tests.fuzzing import examples, fuzz

pytestmark = fuzz

RECEIVED = datetime(2024, 1, 1, tzinfo=UTC)
CORPUS = Path("/work/shared/corpus/hl7v2")
SEEDS = [p.read_bytes() for p in sorted(CORPUS.rglob("*.hl7")) if p.stat().st_size < 20_000]
FAST = settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _check(raw: bytes) -> None:
    try:
        result = map_message(raw, raw_id="fuzz", received_at=RECEIVED)
    except InternalMappingError as error:  # a defect caught by the safety net is still a bug
        raise AssertionError(f"internal error for {raw[:200]!r}") from error
    except Hl7v2Error as error:
        assert error.ack_code in ("AE", "AR")
        ack = build_ack(raw, error.ack_code, [error])
        assert b"MSA|" + error.ack_code.encode() in ack or b"MSA" in ack
        return
    assert result.bundle["type"] == "transaction"
    segments = build_ack(raw, "AA").split(b"\r")
    assert [s for s in segments if s.startswith(b"MSA|")] == [segments[1]]


@FAST
@given(st.binary(max_size=400))
def test_random_bytes(raw: bytes) -> None:
    _check(raw)


HEADER = "MSH|^~\\&|A|B|C|D|20240101||{kind}|1|P|2.5.1\r"
KINDS = st.sampled_from(
    [
        "ADT^A01",
        "ADT^A08",
        "ADT^A40",
        "ORU^R01",
        "VXU^V04",
        "MDM^T02",
        "SIU^S12",
        "ORM^O01",
        "OML^O21",
        "ADT^A13",
    ]
)
SEGMENT_NAMES = st.sampled_from(
    [
        "PID",
        "PV1",
        "PV2",
        "OBR",
        "OBX",
        "ORC",
        "NTE",
        "SPM",
        "MRG",
        "RXA",
        "RXR",
        "TXA",
        "SCH",
        "AIS",
        "AIP",
        "AL1",
        "DG1",
        "NK1",
        "ZXX",
        "EVN",
    ]
)
FIELD = st.text(alphabet='^~\\&|AZ09+-.<>"é :', max_size=24)


@FAST
@given(KINDS, st.lists(st.tuples(SEGMENT_NAMES, st.lists(FIELD, max_size=30)), max_size=8))
def test_structured_messages(kind: str, segments: list[tuple[str, list[str]]]) -> None:
    body = "".join(name + "|" + "|".join(fields) + "\r" for name, fields in segments)
    _check((HEADER.format(kind=kind) + body).encode("utf-8"))


@FAST
@given(
    st.sampled_from(SEEDS),
    st.lists(
        st.tuples(st.integers(min_value=0), st.binary(min_size=0, max_size=4)),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_corpus_messages(seed: bytes, edits: list[tuple[int, bytes]]) -> None:
    raw = bytearray(seed)
    for position, replacement in edits:
        at = position % (len(raw) + 1)
        raw[at : at + len(replacement)] = replacement
    _check(bytes(raw))


@FAST
@given(st.sampled_from(SEEDS), st.integers(min_value=0))
def test_truncated_corpus_messages(seed: bytes, cut: int) -> None:
    _check(seed[: cut % (len(seed) + 1)])
