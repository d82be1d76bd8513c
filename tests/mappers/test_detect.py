"""Format detection from the first bytes of real corpus files."""

from __future__ import annotations

from pathlib import Path

import pytest

from mappers.detect import detect

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
pytestmark = pytest.mark.skipif(not CORPUS.exists(), reason="shared corpus not present")


def head(path: Path, size: int = 4096) -> bytes:
    with path.open("rb") as fh:
        return fh.read(size)


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (CORPUS / "hl7v2" / "fhir-converter").glob("*.hl7"))
)
def test_every_fhir_converter_hl7_sample_is_hl7v2(name: str) -> None:
    # Includes files with a UTF-8 BOM and LF line ends (see SOURCES.md).
    assert detect(head(CORPUS / "hl7v2" / "fhir-converter" / name)).kind == "hl7v2"


def test_hl7_after_whitespace_and_mllp_start_block() -> None:
    assert detect(b"\r\n  MSH|^~\\&|A|B").kind == "hl7v2"
    assert detect(b"\x0bMSH|^~\\&|A|B").kind == "hl7v2"
    assert detect(b"BHS|^~\\&|A").kind == "hl7v2"
    assert detect(b"MSHX is not a segment").kind == "unknown"


@pytest.mark.parametrize(
    ("name", "expected_map"),
    [("patients.csv", "synthea-patients"), ("observations_excerpt.csv", "synthea-observations")],
)
def test_synthea_csv_is_detected_with_its_map(name: str, expected_map: str) -> None:
    found = detect(head(CORPUS / "csv" / "synthea" / name), "text/csv")
    assert (found.kind, found.csv_map) == ("csv", expected_map)


def test_generic_lab_feed_header_is_detected() -> None:
    found = detect(
        b"\xef\xbb\xbfpatient_id,loinc,value,unit,effective\r\np,2345-7,1,mg/dL,2024\r\n"
    )
    assert (found.kind, found.csv_map) == ("csv", "lab-results")


def test_unknown_csv_header_with_csv_content_type_is_csv_without_map() -> None:
    found = detect(b"a,b,c\n1,2,3\n", "text/csv; charset=utf-8")
    assert found.kind == "csv" and found.csv_map is None and not found.from_content


@pytest.mark.parametrize("name", ["CT_small.dcm", "chrFren.dcm", "dicomdirtests/77654033/CR1/6154"])
def test_part10_files_are_dicom(name: str) -> None:
    assert (
        detect(head(CORPUS / "dicom" / "pydicom" / name), "application/octet-stream").kind
        == "dicom"
    )


def test_google_dicom_json_is_dicom_json() -> None:
    found = detect(head(CORPUS / "dicom" / "google-whistle" / "dicom.input.json"))
    assert found.kind == "dicom-json"
    assert detect(b'[{"00080018": {"vr": "UI", "Value": ["1"]}}]').kind == "dicom-json"


def test_fhir_bundle_and_resource_json() -> None:
    bundle = next((CORPUS / "fhir" / "synthea-java").glob("*.json"))
    found = detect(head(bundle))
    assert (found.kind, found.resource_type) == ("fhir-bundle", "Bundle")
    found = detect(b'{\n  "resourceType": "Patient", "id": "x"}')
    assert (found.kind, found.resource_type) == ("fhir-resource", "Patient")


def test_cannot_tell_is_a_clear_unknown() -> None:
    found = detect(b"hello world", None)
    assert found.kind == "unknown" and not found.known
    assert "cannot tell" in found.reason
    assert detect(b"<Bundle xmlns='http://hl7.org/fhir'/>").kind == "unknown"


def test_content_type_is_only_a_fallback() -> None:
    # Bytes win over a wrong label; an unrecognisable body follows the label.
    assert detect(b"MSH|^~\\&|A", "application/dicom").kind == "hl7v2"
    found = detect(b"\x00\x01garbage", "application/dicom")
    assert found.kind == "dicom" and not found.from_content
