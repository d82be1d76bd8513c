"""MLLP framing: <VT> payload <FS><CR>, fed in arbitrary pieces (HL7 v2 MLLP, release 2)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.ingest.framing import HEAD_BYTES, Frame, MllpDecoder, Oversized, frame
from tests.fuzzing import examples, fuzz

MSG_A = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|||1\r"
MSG_B = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A08|2|P|2.5\rPID|||1\r"


def test_one_frame_in_one_piece() -> None:
    assert MllpDecoder(1000).feed(frame(MSG_A)) == [Frame(MSG_A)]


def test_two_frames_in_one_read() -> None:
    assert MllpDecoder(1000).feed(frame(MSG_A) + frame(MSG_B)) == [Frame(MSG_A), Frame(MSG_B)]


def test_frame_split_inside_the_end_marker() -> None:
    decoder = MllpDecoder(1000)
    wire = frame(MSG_A)
    assert decoder.feed(wire[:-1]) == []  # ends with <FS>, the <CR> is still to come
    assert not decoder.idle
    assert decoder.feed(wire[-1:]) == [Frame(MSG_A)]
    assert decoder.idle


@fuzz
@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_any_split_of_the_stream_yields_the_same_frames(cuts: list[int]) -> None:
    wire = frame(MSG_A) + frame(MSG_B) + frame(MSG_A)
    decoder = MllpDecoder(1000)
    events = []
    pos = 0
    for size in cuts:
        events += decoder.feed(wire[pos : pos + size])
        pos += size
    events += decoder.feed(wire[pos:])
    assert events == [Frame(MSG_A), Frame(MSG_B), Frame(MSG_A)]


def test_bytes_between_frames_are_dropped() -> None:
    decoder = MllpDecoder(1000)
    events = decoder.feed(b"\r\nnoise" + frame(MSG_A) + b"\n" + frame(MSG_B))
    assert events == [Frame(MSG_A), Frame(MSG_B)]
    assert decoder.garbage_bytes == len(b"\r\nnoise") + 1


def test_abandoned_partial_frame_is_replaced_by_the_next_start_block() -> None:
    decoder = MllpDecoder(1000)
    assert decoder.feed(b"\x0bMSH|half a mess") == []
    assert decoder.feed(frame(MSG_B)) == [Frame(MSG_B)]


def test_oversized_frame_is_reported_once_and_the_stream_stays_in_sync() -> None:
    big = b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|9|P|2.5\r" + b"OBX|" + b"x" * 10_000 + b"\r"
    decoder = MllpDecoder(max_frame_bytes=1000)
    wire = frame(big) + frame(MSG_A)
    events = []
    for i in range(0, len(wire), 333):  # arrives in pieces, never all buffered
        events += decoder.feed(wire[i : i + 333])
        assert len(decoder._buffer) <= 1000 + 333
    assert len(events) == 2
    oversized, after = events
    assert isinstance(oversized, Oversized)
    assert oversized.size == len(big)
    # The head (what the ACK is built from) is a prefix holding at least the MSH segment.
    assert big.startswith(oversized.head)
    assert len(oversized.head) >= min(1000, HEAD_BYTES)
    assert after == Frame(MSG_A)


def test_oversized_frame_delivered_whole_in_one_read() -> None:
    big = b"MSH|" + b"y" * 5000
    events = MllpDecoder(max_frame_bytes=100).feed(frame(big) + frame(MSG_A))
    assert events == [Oversized(big[:HEAD_BYTES], len(big)), Frame(MSG_A)]


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    payload = b"M" * 100
    assert MllpDecoder(max_frame_bytes=100).feed(frame(payload)) == [Frame(payload)]
