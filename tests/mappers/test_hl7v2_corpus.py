"""The whole HL7 v2 corpus: FHIR-Converter parity on clinical fields, and no crash on anything.

Parity is on what matters clinically (identifiers, names, birth date, gender; observation code,
value, unit, status, time; encounter class and period), not on JSON shape. Each deliberate
difference is listed in DIFFERENCES with its reason; the test for that aspect is then skipped
for that file only. One general difference: when OBX-14 is empty Hestia dates the observation
with OBR-7 (when the specimen was taken); FHIR-Converter leaves effective[x] out, so effective
times are compared only where FHIR-Converter has one.
"""

from __future__ import annotations

import importlib
import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mappers.hl7v2 import Hl7v2Error, InternalMappingError, MappingResult, map_message, split_batch
from mappers.hl7v2.messages import SUPPORTED

CORPUS = Path("/work/shared/corpus")
INPUTS = CORPUS / "hl7v2" / "fhir-converter"
EXPECTED = CORPUS / "expected" / "fhir-converter"
RECEIVED = datetime(2024, 1, 1, tzinfo=UTC)

_STATUS_IG = (
    "OBX-11 is mapped with the HL7 v2-to-FHIR IG ConceptMap (S→preliminary, I/O→registered); "
    "FHIR-Converter emits 'unknown' plus an extension for these codes"
)
_PERIOD_SOURCES = (
    "Encounter.period comes only from PV1-44/PV1-45; FHIR-Converter also fills it from other "
    "segments (PV2 expected dates), which Hestia does not treat as the actual visit period"
)
DIFFERENCES: dict[tuple[str, str], str] = {
    **{
        (name, "observation-status"): _STATUS_IG
        for name in (
            "ADT-A01-01",
            "ADT-A02-01",
            "ADT-A03-01",
            "ADT-A04-01",
            "ADT-A05-01",
            "ADT-A08-01",
            "ADT-A11-01",
            "ADT-A13-01",
            "ADT-A28-01",
            "ADT-A31-01",
            "LAB-ORU-1",
            "OML-O21-01",
            "ORM-O01-01",
            "ORM-O01-02",
            "ORU-R01-01",
        )
    },
    **{
        (name, "observation-value"): (
            "OBX-5 '60~120' repeats an NM: Hestia maps the first repetition, FHIR-Converter "
            "drops the value"
        )
        for name in (
            "ADT-A01-01",
            "ADT-A02-01",
            "ADT-A03-01",
            "ADT-A04-01",
            "ADT-A05-01",
            "ADT-A08-01",
            "ADT-A11-01",
            "ADT-A13-01",
            "ADT-A28-01",
            "ADT-A31-01",
            "ORM-O01-01",
        )
    },
    **{
        (name, "encounter-period"): _PERIOD_SOURCES
        for name in ("ADT-A04-01", "ADT-A05-01", "ADT-A11-01")
    },
    **{
        (name, "encounter"): (
            "A28/A31 are person-level events: their PV1 is not a visit, so no Encounter is made"
        )
        for name in ("ADT-A28-01", "ADT-A31-01")
    },
    ("IZ_1_1.1_Admin_Child_Max_Message", "observation-value"): (
        "OBX-2 DT values become valueDateTime; FHIR-Converter leaves them out"
    ),
    ("MDM-T02-03", "observations"): (
        "MDM OBX lines are the document's text: Hestia puts them in DocumentReference.content, "
        "FHIR-Converter also emits one Observation per line"
    ),
    ("MDM-T02-01", "observations"): (
        "MDM OBX content goes into DocumentReference.content, not an Observation"
    ),
    ("OML-O21-01", "observation-count"): (
        "the OBX of types RP and ED without codes are kept differently (RP as valueString, "
        "ED in the report); FHIR-Converter drops OBX after the second SPM"
    ),
    **{
        (name, "patient"): (
            "FHIR-Converter expresses a merge as a Linkage and emits no Patient; Hestia emits "
            "both Patients (old: active=false + replaced-by link; survivor: replaces link)"
        )
        for name in ("ADT-A40-01", "ADT-A40-02")
    },
    ("MDHHS-OML-O21-1", "observations"): (
        "FHIR-Converter drops the OML ask-at-order-entry OBX; Hestia keeps it as an Observation"
    ),
    ("ORM-O01-02", "observation-count"): (
        "the RP OBX after SPM becomes an Observation (valueString) in Hestia; FHIR-Converter "
        "drops it"
    ),
    ("VXU-V04-01", "observation-count"): (
        "FHIR-Converter folds the funding OBX (30963-3, 64994-7) into Immunization fields; "
        "Hestia keeps every OBX as an Observation partOf the Immunization"
    ),
    ("VXU-V04-01", "observation-status"): _STATUS_IG,
    ("VXU-V04-01", "observation-value"): (
        "OBX-5 '60~120' (first repetition kept) and a DT value (valueDateTime) that "
        "FHIR-Converter leaves out"
    ),
    **{
        (name, "observation-value"): (
            "FHIR-Converter leaves out repeating NM values ('27~25': Hestia keeps the first) "
            "and RP values (Hestia: valueString with the pointer)"
        )
        for name in ("OML-O21-01", "ORU-R01-01")
    },
    ("ORU-R01-01", "observation-count"): (
        "OBX-3 missing on the ED line: it becomes a report attachment, not an Observation"
    ),
}


def _cases() -> list[str]:
    names = []
    for path in sorted(INPUTS.glob("*.hl7")):
        if (EXPECTED / f"{path.stem}-expected.json").exists():
            names.append(path.stem)
    return names


def _supported(raw: bytes) -> bool:
    head = raw.lstrip(b"\xef\xbb\xbf").split(b"\n", 1)[0].split(b"\r", 1)[0].decode("latin-1")
    kind = head.split("|")[8].split("^") if head.count("|") > 8 else [""]
    return kind[0] in SUPPORTED and len(kind) > 1 and kind[1] in SUPPORTED[kind[0]]


def _by_type(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _instant(value: str | None) -> datetime | str | None:
    """Compare date-times as instants: FHIR-Converter re-expresses them in its own zone."""
    if value is None or "T" not in value:
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _allowed(name: str, aspect: str) -> bool:
    return (name, aspect) in DIFFERENCES


PARITY = [n for n in _cases() if _supported((INPUTS / f"{n}.hl7").read_bytes())]


def test_parity_set_is_not_empty() -> None:
    assert len(PARITY) >= 25


@pytest.mark.parametrize("name", PARITY)
def test_matches_fhir_converter_on_clinical_fields(name: str) -> None:
    raw = (INPUTS / f"{name}.hl7").read_bytes()
    mine = map_message(raw, raw_id="raw", received_at=RECEIVED).bundle
    theirs = json.loads((EXPECTED / f"{name}-expected.json").read_text())

    if _allowed(name, "patient"):
        return
    patient, expected_patient = _by_type(mine, "Patient")[0], _by_type(theirs, "Patient")[0]
    assert patient.get("birthDate") == expected_patient.get("birthDate")
    assert patient.get("gender") == expected_patient.get("gender")
    # FHIR-Converter also adds identifiers and names from GT1/IN1/IN2/DB1 to the Patient;
    # every PID-derived one of ours must be among theirs, and the MRN must agree.
    ours = [i["value"] for i in patient["identifier"]]
    theirs_ids = {i["value"] for i in expected_patient.get("identifier", [])}
    assert set(ours) <= theirs_ids
    assert expected_patient["identifier"][0]["value"] in ours
    for ours_name, their_name in zip(
        patient.get("name", []), expected_patient.get("name", []), strict=False
    ):
        assert ours_name.get("family") == their_name.get("family")
        given = ours_name.get("given", [])
        assert their_name.get("given", [])[: len(given)] == given

    encounters, expected_encounters = _by_type(mine, "Encounter"), _by_type(theirs, "Encounter")
    if not _allowed(name, "encounter"):
        assert len(encounters) == len(expected_encounters)
    for ours_enc, their_enc in zip(encounters, expected_encounters, strict=False):
        assert ours_enc["class"]["code"] == their_enc["class"]["code"]
        if not _allowed(name, "encounter-period"):
            ours_period, their_period = ours_enc.get("period", {}), their_enc.get("period", {})
            for bound in ("start", "end"):
                assert _instant(ours_period.get(bound)) == _instant(their_period.get(bound))

    _compare_observations(name, raw, _by_type(mine, "Observation"), _by_type(theirs, "Observation"))


def _code(observation: dict[str, Any]) -> str:
    return str(observation["code"].get("coding", [{}])[0].get("code", ""))


def _value(observation: dict[str, Any]) -> Any:
    if "valueQuantity" in observation:
        q = observation["valueQuantity"]
        return ("Quantity", q.get("value"), q.get("unit") or q.get("code"), q.get("comparator"))
    if "valueCodeableConcept" in observation:
        coding = observation["valueCodeableConcept"].get("coding", [{}])[0]
        return ("CodeableConcept", coding.get("code"))
    for key in ("valueString", "valueDateTime", "valueTime", "valueRange", "valueRatio"):
        if key in observation:
            return (key, observation[key])
    return None


def _obx_codes(raw: bytes) -> set[str]:
    """OBX-3.1 codes as written in the message (FHIR-Converter also makes Observations from
    ACC/PDA/OBR segments; only those that come from an OBX are compared)."""
    codes = set()
    for line in raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        fields = line.decode("utf-8", "replace").split("|")
        if fields[0] == "OBX" and len(fields) > 3:
            codes.add(fields[3].split("^")[0])
    return codes


def _compare_observations(
    name: str, raw: bytes, mine: list[dict[str, Any]], theirs: list[dict[str, Any]]
) -> None:
    if _allowed(name, "observations"):
        return
    obx_codes = _obx_codes(raw)
    theirs = [o for o in theirs if _code(o) in obx_codes]
    if _allowed(name, "observation-count"):
        # Pair each of theirs with ours of the same code; ours may have more.
        remaining = list(mine)
        pairs = []
        for expected in theirs:
            match = next(o for o in remaining if _code(o) == _code(expected))
            remaining.remove(match)
            pairs.append((match, expected))
    else:
        assert len(mine) == len(theirs)
        pairs = list(zip(mine, theirs, strict=True))
    for ours, expected in pairs:
        assert _code(ours) == _code(expected)
        if "effectiveDateTime" in expected:
            assert _instant(ours.get("effectiveDateTime")) == _instant(
                expected["effectiveDateTime"]
            )
        if not _allowed(name, "observation-status"):
            assert ours["status"] == expected["status"]
        if not _allowed(name, "observation-value"):
            assert _value(ours) == _value(expected)


# --- Every message in the corpus: maps, or raises the mapped error with a reason --------------


def _all_messages() -> Iterator[tuple[str, bytes]]:
    for path in sorted((CORPUS / "hl7v2").rglob("*")):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        chunks = split_batch(raw) or [raw]
        if path.parent.name == "BadInputs":
            chunks = [raw]  # fuzzer-found crash inputs: fed as they are, unsplit
        for i, chunk in enumerate(chunks):
            yield f"{path.relative_to(CORPUS / 'hl7v2')}#{i}", chunk


ALL = list(_all_messages())


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def fail(signum: int, frame: Any) -> None:
        raise TimeoutError("mapping hung")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _validate(result: MappingResult) -> None:
    for entry in result.bundle["entry"]:
        resource = entry["resource"]
        module = importlib.import_module(f"fhir.resources.R4B.{resource['resourceType'].lower()}")
        getattr(module, resource["resourceType"]).model_validate(resource)


@pytest.mark.parametrize(("label", "raw"), ALL, ids=[label for label, _ in ALL])
def test_every_corpus_message_maps_or_raises_the_mapped_error(label: str, raw: bytes) -> None:
    with _time_limit(5):
        try:
            result = map_message(raw, raw_id="raw", received_at=RECEIVED)
        except InternalMappingError:
            pytest.fail(f"{label}: mapper defect surfaced as an internal error")
        except Hl7v2Error as error:
            assert error.ack_code in ("AE", "AR")
            assert error.reason
            assert error.to_outcome()["issue"][0]["diagnostics"] == error.reason
            return
    _validate(result)
    urls = [e["request"]["url"] for e in result.bundle["entry"]]
    assert len(urls) == len(set(urls)), "a resource appears twice in the Bundle"


def test_corpus_outcomes_are_mostly_successful() -> None:
    """Guard against a regression that turns real messages into errors wholesale."""
    mapped = 0
    for _, raw in ALL:
        try:
            map_message(raw, raw_id="raw", received_at=RECEIVED)
            mapped += 1
        except Hl7v2Error:
            pass
    assert mapped >= 50
