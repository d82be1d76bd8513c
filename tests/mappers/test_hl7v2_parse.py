"""HL7 v2 reading: line endings, BOM, MSH-18 charsets, escapes, batches, and the ACK builder."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from mappers.hl7v2 import (
    Hl7v2Error,
    UnparseableMessage,
    build_ack,
    parse_message,
    split_batch,
)
from mappers.hl7v2.datatypes import parse_ts
from mappers.hl7v2.parse import Encoding
from terminology.conceptmap import conceptmap_ids, translate

CORPUS = Path("/work/shared/corpus/hl7v2")

ADT = (
    "MSH|^~\\&|SENDAPP|SENDFAC|HESTIA|HOSP|20240102030405+0100||ADT^A01^ADT_A01|CTRL-1|P|2.5.1\r"
    "EVN|A01|20240102030405+0100\r"
    "PID|1||12345^^^HOSP^MR||Doe^Jane||19800101|F\r"
    "PV1|1|I|W1^101^A\r"
)


@pytest.mark.parametrize("ending", ["\r", "\n", "\r\n"])
def test_any_segment_ending_gives_the_same_segments(ending: str) -> None:
    message = parse_message(ADT.replace("\r", ending).encode())
    assert [s.name for s in message.segments] == ["MSH", "EVN", "PID", "PV1"]
    assert message.first("PID").text(5, 2) == "Jane"  # type: ignore[union-attr]


def test_utf8_bom_is_ignored() -> None:
    message = parse_message(b"\xef\xbb\xbf" + ADT.encode())
    assert message.msh.name == "MSH"
    assert message.control_id == "CTRL-1"


def test_msh_numbering_matches_the_standard() -> None:
    msh = parse_message(ADT.encode()).msh
    assert msh.field(1) == "|"
    assert msh.field(2) == "^~\\&"
    assert msh.text(9, 1) == "ADT" and msh.text(9, 2) == "A01"
    assert msh.text(10) == "CTRL-1"


def _with_charset(charset: str) -> str:
    return (
        f"MSH|^~\\&|A|B|C|D|20240101||ADT^A08|X1|P|2.5|||||DEU|{charset}\r"
        "PID|1||7^^^H^MR||Müller^Jürgen^Ä||19700101|M\r"
    )


def test_latin1_bytes_are_decoded_when_msh18_says_8859_1() -> None:
    message = parse_message(_with_charset("8859/1").encode("latin-1"))
    assert message.charset == "latin-1"
    assert message.first("PID").text(5, 1) == "Müller"  # type: ignore[union-attr]


def test_utf8_bytes_are_decoded_when_msh18_says_unicode_utf8() -> None:
    message = parse_message(_with_charset("UNICODE UTF-8").encode("utf-8"))
    assert message.first("PID").text(5, 2) == "Jürgen"  # type: ignore[union-attr]


def test_mislabelled_ascii_with_latin1_bytes_still_decodes() -> None:
    message = parse_message(_with_charset("ASCII").encode("latin-1"))
    assert message.first("PID").text(5, 1) == "Müller"  # type: ignore[union-attr]
    assert message.warnings  # the mislabel is reported, not silently accepted


def test_undeclared_latin1_falls_back_without_error() -> None:
    message = parse_message(_with_charset("").encode("latin-1"))
    assert message.first("PID").text(5, 1) == "Müller"  # type: ignore[union-attr]


@pytest.mark.parametrize("raw", [b"MSH\r|", b"MSH\n", b"MSH"])
def test_an_msh_cut_off_before_its_field_separator_is_refused_by_field(raw: bytes) -> None:
    """Found by tests/ingest/test_ingest_fuzz.py: reading MSH-18 before decoding raised
    IndexError on "MSH" followed by a line break, a crash where a refusal is due."""
    with pytest.raises(UnparseableMessage) as refused:
        parse_message(raw)
    assert refused.value.field == 1


@pytest.mark.parametrize(
    ("escaped", "decoded"),
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b", "a^b"),
        ("a\\T\\b", "a&b"),
        ("a\\R\\b", "a~b"),
        ("a\\E\\b", "a\\b"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("\\X41\\\\X42\\", "AB"),
        ("caf\\XC3A9\\", "café"),
        ("\\H\\bold\\N\\", "bold"),
        ("no escapes", "no escapes"),
        ("dangling \\ backslash", "dangling \\ backslash"),
    ],
)
def test_escape_sequences_are_decoded(escaped: str, decoded: str) -> None:
    assert Encoding().unescape(escaped) == decoded


def test_escaped_delimiters_do_not_split_fields() -> None:
    raw = ADT.replace("Doe^Jane", "O\\S\\Brien\\F\\x^Jane").encode()
    pid = parse_message(raw).first("PID")
    assert pid is not None
    assert pid.text(5, 1) == "O^Brien|x"
    assert pid.text(5, 2) == "Jane"


def test_escape_text_round_trips() -> None:
    enc = Encoding()
    text = "a|b^c&d~e\\f"
    assert enc.unescape(enc.escape_text(text)) == text


def test_batch_file_is_split_into_messages() -> None:
    raw = (CORPUS / "python-hl7" / "sample_batch1.hl7").read_bytes()
    messages = split_batch(raw)
    assert len(messages) == raw.count(b"MSH|")
    for chunk in messages:
        assert chunk.startswith(b"MSH|")
        assert b"BTS" not in chunk and b"FHS" not in chunk and b"BHS" not in chunk
        parse_message(chunk)


def test_single_message_is_its_own_batch() -> None:
    assert split_batch(ADT.encode()) == [ADT.encode()]


def test_two_msh_in_one_message_is_unparseable() -> None:
    with pytest.raises(UnparseableMessage):
        parse_message((ADT + ADT).encode())


@pytest.mark.parametrize("raw", [b"", b"hello", b"PID|1||x", b"MSH", b"MSH|^^^^|"])
def test_garbage_is_unparseable_with_ar(raw: bytes) -> None:
    with pytest.raises(Hl7v2Error) as info:
        parse_message(raw)
    assert info.value.ack_code == "AR"


@pytest.mark.parametrize(
    ("hl7", "fhir"),
    [
        ("2024", "2024"),
        ("202403", "2024-03"),
        ("20240315", "2024-03-15"),
        ("202403151230+0200", "2024-03-15T12:30:00+02:00"),
        ("20240315123045.12-0500", "2024-03-15T12:30:45.12-05:00"),
        ("20240315123045", "2024-03-15T12:30:45Z"),  # no offset: read in the assumed zone (UTC)
    ],
)
def test_timestamps_keep_their_precision(hl7: str, fhir: str) -> None:
    assert parse_ts(hl7, UTC) == fhir


@pytest.mark.parametrize("bad", ["20241301", "20240230", "2024x", "12", "20240101251000"])
def test_impossible_timestamps_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_ts(bad, UTC)


def _segments(ack: bytes) -> list[list[str]]:
    return [line.split("|") for line in ack.decode().split("\r") if line]


NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_aa_ack_echoes_the_control_id_and_swaps_sender_and_receiver() -> None:
    segs = _segments(build_ack(parse_message(ADT.encode()), "AA", now=NOW))
    msh, msa = segs[0], segs[1]
    assert msh[0] == "MSH" and msh[1] == "^~\\&"
    assert msh[2:6] == ["HESTIA", "HOSP", "SENDAPP", "SENDFAC"]
    assert msh[8] == "ACK^A01^ACK"
    assert msa[:3] == ["MSA", "AA", "CTRL-1"]
    assert len(segs) == 2


def test_ae_ack_has_an_err_segment_locating_the_problem() -> None:
    error = Hl7v2Error("PID-7: bad date", segment="PID", field=7, error_code="102")
    segs = _segments(build_ack(ADT.encode(), "AE", [error], now=NOW))
    assert segs[1][:3] == ["MSA", "AE", "CTRL-1"]
    err = segs[2]
    assert err[0] == "ERR"
    assert err[2].split("^")[:3] == ["PID", "1", "7"]
    assert err[3].split("^")[0] == "102"
    assert err[4] == "E"
    assert "bad date" in err[7]


def test_ar_ack_is_built_even_from_unparseable_bytes() -> None:
    raw = b"MSH|^~\\&|APP|FAC|||20240101||XYZ^Q99|C-77|P|2.3\rgarbage\x00\xff"
    with pytest.raises(Hl7v2Error) as info:
        from mappers.hl7v2 import map_message

        map_message(raw, raw_id="r", received_at=NOW)
    segs = _segments(build_ack(raw, "AR", [info.value], now=NOW))
    assert segs[1][:3] == ["MSA", "AR", "C-77"]
    assert segs[2][0] == "ERR"


@pytest.mark.parametrize("raw", [b"", b"\x00\x01", b"not hl7 at all", b"MSH|"])
def test_ack_for_input_without_a_usable_msh_still_has_msa(raw: bytes) -> None:
    segs = _segments(build_ack(raw, "AR", [UnparseableMessage("no MSH")], now=NOW))
    assert segs[0][0] == "MSH"
    assert segs[1][:2] == ["MSA", "AR"]


def test_ack_text_is_escaped() -> None:
    error = Hl7v2Error("value a|b^c is wrong", segment="OBX", occurrence=3, field=5)
    ack = build_ack(ADT.encode(), "AE", [error], now=NOW)
    err = _segments(ack)[2]
    assert len(err) == 8  # the | inside the reason did not add a field
    assert Encoding().unescape(err[7]) == "value a|b^c is wrong"
    assert err[2].split("^")[:3] == ["OBX", "3", "5"]


def test_conceptmaps_translate_v2_tables() -> None:
    assert "v2-0001-to-administrative-gender" in conceptmap_ids()
    sex = translate("v2-0001-to-administrative-gender", "HL70001", "F")
    assert sex is not None and sex.code == "female"
    klass = translate("v2-0004-to-encounter-class", "HL70004", "E")
    assert klass is not None
    assert (klass.system, klass.code) == (
        "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "EMER",
    )
    status = translate("v2-0085-to-observation-status", "HL70085", "C")
    assert status is not None and status.code == "corrected"
    # R (recurring patient) is left unmapped by the v2-to-FHIR IG.
    assert translate("v2-0004-to-encounter-class", "HL70004", "R") is None


def test_every_conceptmap_is_a_valid_fhir_conceptmap() -> None:
    import json

    from fhir.resources.R4B.conceptmap import ConceptMap

    folder = Path(__file__).resolve().parents[2] / "terminology" / "conceptmaps"
    files = sorted(folder.glob("*.json"))
    assert len(files) >= 6
    for path in files:
        ConceptMap.model_validate(json.loads(path.read_text()))


def test_ack_uses_the_message_charset_and_echoes_msh18() -> None:
    message = parse_message(_with_charset("8859/1").encode("latin-1"))
    error = Hl7v2Error("Name Müller is ambiguous", segment="PID", field=5)
    ack = build_ack(message, "AE", [error], now=NOW)
    text = ack.decode("latin-1")
    assert "Müller" in text
    assert text.split("\r")[0].split("|")[17] == "8859/1"
