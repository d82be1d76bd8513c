"""Property tests for the DICOM and CSV mappers: whatever the input, the mapper answers with
resources that validate as FHIR R4, or with a FhirError that names the problem (an HTTP status
and an OperationOutcome), never with any other exception. Mutations start from the shared
corpus (pydicom's sample files, Google's DICOM JSON inputs, the Synthea CSV excerpts)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.fhir.outcome import FhirError
from mappers.csv import iter_rows, load_map
from mappers.dicom import StudyResources, map_dicom_json, map_part10, transaction_bundle
from tests.fuzzing import examples, fuzz

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
PART10 = sorted((CORPUS / "dicom" / "pydicom").glob("*.dcm"))
DICOM_JSON = sorted((CORPUS / "dicom" / "google-whistle").glob("*.input.json"))
SYNTHEA = CORPUS / "csv" / "synthea"

pytestmark = [
    fuzz,
    pytest.mark.skipif(not PART10 or not DICOM_JSON, reason="shared corpus not present"),
]
FUZZ = settings(
    max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# Where a Part 10 file's data set starts: the 128-byte preamble and "DICM".
DATASET_START = 132
SPECIAL_BYTES = [b"\x00", b"\xff", b"\\", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"DICM"]


def valid_bundle(bundle: dict[str, Any]) -> None:
    """Every entry validates as its R4 resource type: the write path would accept it."""
    orjson.dumps(bundle)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


@st.composite
def mutated_part10(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(PART10)).read_bytes())
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(DATASET_START, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip":
            data[at : at + 1] = bytes([draw(st.integers(0, 255))])
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(SPECIAL_BYTES))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


def mapped_or_refused(study_results: Callable[[], list[StudyResources]]) -> None:
    """The results validate as a transaction Bundle, or the mapper refused with a reason."""
    try:
        results = study_results()
    except FhirError as error:
        assert error.to_outcome()["issue"][0]["diagnostics"]
        return
    if results:
        valid_bundle(transaction_bundle(results))


@FUZZ
@given(mutated_part10())
def test_a_damaged_part10_file_maps_or_is_refused_with_a_reason(data: bytes) -> None:
    mapped_or_refused(lambda: [map_part10(data)])


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@st.composite
def mutated_dicom_json(draw: st.DrawFn) -> bytes:
    document = orjson.loads(draw(st.sampled_from(DICOM_JSON)).read_bytes())
    datasets = document if isinstance(document, list) else [document]
    for _ in range(draw(st.integers(1, 4))):
        dataset = draw(st.sampled_from(datasets))
        if not isinstance(dataset, dict) or not dataset:
            continue
        tag = draw(st.sampled_from(sorted(dataset)))
        where = draw(st.sampled_from(["element", "vr", "Value", "first value"]))
        element = dataset[tag]
        if where == "element" or not isinstance(element, dict):
            dataset[tag] = draw(JSON_VALUES)
        elif where == "vr":
            element["vr"] = draw(st.sampled_from(["DA", "TM", "DT", "PN", "SQ", "IS", "XX", ""]))
        elif where == "Value":
            element["Value"] = draw(JSON_VALUES)
        elif isinstance(element.get("Value"), list) and element["Value"]:
            element["Value"][0] = draw(JSON_VALUES)
    return orjson.dumps(document)


@FUZZ
@given(mutated_dicom_json())
def test_damaged_dicom_json_maps_or_is_refused_with_a_reason(data: bytes) -> None:
    mapped_or_refused(lambda: map_dicom_json(data))


CELLS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "0", "-1", "1e309", "NaN", "2024-02-30", "2024-13-01T25:61Z"]),
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)?", fullmatch=True),
    st.from_regex(r"-?[0-9]{1,12}(\.[0-9]{0,12})?", fullmatch=True),
)


def csv_text(header: list[str], rows: list[list[str]]) -> list[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().splitlines(keepends=True)


def row_outcomes(map_name: str, lines: list[str]) -> None:
    """Each data row becomes a valid entry, a rejection naming its line, or a duplicate."""
    try:
        results = list(iter_rows(lines, load_map(map_name)))
    except FhirError as error:
        assert error.to_outcome()["issue"][0]["diagnostics"]
        return
    for result in results:
        if result.entry is not None:
            resource = result.entry["resource"]
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        elif result.rejection is not None:
            assert result.rejection.line == result.line >= 2
            assert result.rejection.reason
        else:
            assert result.duplicate_of is not None


def corpus_header(name: str) -> list[str]:
    with (SYNTHEA / name).open(newline="") as fh:
        return next(csv.reader(fh))


@FUZZ
@given(st.lists(st.lists(CELLS, min_size=0, max_size=10), min_size=1, max_size=6))
def test_lab_rows_of_any_text_map_or_are_rejected_by_line(rows: list[list[str]]) -> None:
    header = ["patient_id", "loinc", "value", "unit", "effective", "status", "display"]
    row_outcomes("lab-results", csv_text([*header, "specimen_id"], rows))


@pytest.mark.skipif(not SYNTHEA.exists(), reason="shared corpus not present")
@FUZZ
@given(st.data())
def test_synthea_rows_with_damaged_cells_map_or_are_rejected_by_line(data: st.DataObject) -> None:
    for map_name, file_name in (
        ("synthea-patients", "patients.csv"),
        ("synthea-observations", "observations_excerpt.csv"),
    ):
        header = corpus_header(file_name)
        with (SYNTHEA / file_name).open(newline="") as fh:
            sample = [row for _, row in zip(range(5), csv.DictReader(fh), strict=False)]
        rows = []
        for source in sample:
            row = [source.get(column, "") for column in header]
            for _ in range(data.draw(st.integers(0, 3))):
                row[data.draw(st.integers(0, len(row) - 1))] = data.draw(CELLS)
            rows.append(row)
        row_outcomes(map_name, csv_text(header, rows))


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes_as_a_lab_file_map_or_are_refused(payload: bytes) -> None:
    lines = io.BytesIO(b"patient_id,loinc,value,unit,effective\n" + payload)
    try:
        results = list(iter_rows(lines, load_map("lab-results")))
    except FhirError as error:
        assert error.to_outcome()["issue"][0]["diagnostics"]
        return
    for result in results:
        assert result.entry is not None or result.rejection is not None or result.duplicate_of
