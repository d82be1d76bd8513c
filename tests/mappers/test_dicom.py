"""DICOM → Patient / ImagingStudy / Endpoint.

Oracles: Google's Whistle DICOM→FHIR R4 expected outputs (corpus/expected/google-whistle-
dicom), the dicom-server metadata.csv counts and the pydicom sample files' known content.

Deliberate differences from the Google outputs (checked as such below):
- We add id, subject (R4 requires it), endpoint, modality, and Patient references.
- Issuer of accession/specimen with a UUID universal id becomes "urn:uuid:<id>"
  (Google writes "UUID:<id>", which is not a URI scheme anyone resolves).
- Study-level lists that repeat per instance (reasonCode) are de-duplicated; Google
  concatenates them per instance. basedOn and note are not produced.
- bodySite/laterality carry a display from our table; codes are compared.
- series.modality is 1..1 in R4: when the dataset has no Modality we write "OT" (Other),
  where Google leaves it out, and the study-level modality list then holds OT.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient
from pydicom.dataset import Dataset

from app.fhir.outcome import BadRequest, Unprocessable, UnsupportedMediaType
from mappers.dicom import (
    map_datasets,
    map_dicom_json,
    map_part10,
    merge_imaging_study,
    transaction_bundle,
)

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
WHISTLE_IN = CORPUS / "dicom" / "google-whistle"
WHISTLE_OUT = CORPUS / "expected" / "google-whistle-dicom"
PYDICOM = CORPUS / "dicom" / "pydicom"
WADO = "https://pacs.example.org/dicomweb"

pytestmark = pytest.mark.skipif(not CORPUS.exists(), reason="shared corpus not present")

OTHER_MODALITY = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "OT"}
CASES = sorted(p.name.removesuffix(".input.json") for p in WHISTLE_IN.glob("*.input.json"))


def _validate(resources: Any) -> None:
    Patient.model_validate(resources.patient)
    ImagingStudy.model_validate(resources.imaging_study)
    if resources.endpoint is not None:
        Endpoint.model_validate(resources.endpoint)


def _codes(concept: dict[str, Any] | None) -> tuple[str, str] | None:
    return None if concept is None else (concept.get("system", ""), concept["code"])


def _unique(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _fix_uuid_issuer(identifier: dict[str, Any]) -> dict[str, Any]:
    system = identifier.get("system", "")
    if system.startswith("UUID:"):
        return {**identifier, "system": "urn:uuid:" + system.removeprefix("UUID:")}
    return identifier


def test_all_eight_google_pairs_are_present() -> None:
    assert len(CASES) == 8


@pytest.mark.parametrize("case", CASES)
def test_google_whistle_pair_matches_field_by_field(case: str) -> None:
    expected = json.loads((WHISTLE_OUT / f"{case}.output.json").read_text())
    results = map_dicom_json((WHISTLE_IN / f"{case}.input.json").read_bytes(), wado_base_url=WADO)
    assert len(results) == 1
    _validate(results[0])
    got = results[0].imaging_study

    assert got["status"] == expected["status"]
    assert got["identifier"] == [_fix_uuid_issuer(i) for i in expected["identifier"]]
    assert got["numberOfSeries"] == expected["numberOfSeries"]
    assert got["numberOfInstances"] == expected["numberOfInstances"]
    for key in ("description", "started", "referrer", "location", "procedureCode", "interpreter"):
        assert got.get(key) == expected.get(key), key
    assert got.get("reasonCode") == (
        _unique(expected["reasonCode"]) or None if "reasonCode" in expected else None
    )
    if "modality" in expected:
        assert got["modality"] == expected["modality"]

    assert len(got["series"]) == len(expected["series"])
    for got_s, exp_s in zip(got["series"], expected["series"], strict=True):
        for key in ("uid", "number", "description", "started", "numberOfInstances"):
            assert got_s.get(key) == exp_s.get(key), key
        assert got_s["modality"] == exp_s.get("modality", OTHER_MODALITY)
        assert _codes(got_s.get("bodySite")) == _codes(exp_s.get("bodySite"))
        assert _codes(got_s.get("laterality")) == _codes(exp_s.get("laterality"))
        expected_specimens = [
            {"identifier": _fix_uuid_issuer(s["identifier"])} for s in exp_s.get("specimen", [])
        ]
        assert got_s.get("specimen", []) == expected_specimens
        assert got_s["instance"] == exp_s["instance"]


def test_google_dicom_sample_subject_points_to_patient_with_issuer() -> None:
    (result,) = map_dicom_json((WHISTLE_IN / "dicom.input.json").read_bytes())
    patient = result.patient
    assert patient["identifier"] == [{"system": "SomeHospital", "value": "SomeID"}]
    assert patient["name"] == [{"family": "First", "given": ["Last"]}]
    assert result.imaging_study["subject"]["reference"] == f"Patient/{patient['id']}"


def _metadata_csv_datasets() -> list[Dataset]:
    datasets = []
    with (CORPUS / "dicom" / "dicom-server" / "dicom-metadata.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            ds = Dataset()
            for keyword in (
                "SOPClassUID", "SOPInstanceUID", "StudyDate", "StudyTime", "Modality",
                "PatientName", "PatientID", "PatientSex", "StudyInstanceUID",
                "SeriesInstanceUID", "SeriesNumber", "InstanceNumber",
            ):  # fmt: skip
                if row[keyword]:
                    setattr(ds, keyword, row[keyword])
            datasets.append(ds)
    return datasets


def test_dicom_server_metadata_gives_two_series_three_instances() -> None:
    results = map_datasets(_metadata_csv_datasets())
    assert len(results) == 1
    study = results[0].imaging_study
    ImagingStudy.model_validate(study)
    assert study["numberOfSeries"] == 2
    assert study["numberOfInstances"] == 3


def test_merge_is_independent_of_arrival_order_and_upload_split() -> None:
    datasets = _metadata_csv_datasets()
    studies = [map_datasets([ds])[0].imaging_study for ds in datasets]
    forward = None
    for study in studies:
        forward = merge_imaging_study(forward, study)
    backward = None
    for study in reversed(studies):
        backward = merge_imaging_study(backward, study)
    assert forward == backward
    assert forward is not None and forward["numberOfInstances"] == 3
    # Re-uploading a file already merged is a no-op.
    assert merge_imaging_study(forward, studies[0]) == forward


def test_merging_different_studies_is_refused() -> None:
    ct = map_part10((PYDICOM / "CT_small.dcm").read_bytes()).imaging_study
    mr = map_part10((PYDICOM / "MR_small.dcm").read_bytes()).imaging_study
    with pytest.raises(Unprocessable):
        merge_imaging_study(ct, mr)


def test_dicomdir_tests_one_patient_two_studies() -> None:
    files = sorted((PYDICOM / "dicomdirtests" / "77654033").glob("*/*"))
    results = [map_part10(f.read_bytes(), wado_base_url=WADO) for f in files]
    for r in results:
        _validate(r)
    assert len({r.patient["id"] for r in results}) == 1
    merged: dict[str, dict[str, Any]] = {}
    for r in results:
        sid = r.imaging_study["id"]
        merged[sid] = merge_imaging_study(merged.get(sid), r.imaging_study)
    assert len(merged) == 2
    shapes = sorted(
        (s["modality"][0]["code"], s["numberOfSeries"], s["numberOfInstances"])
        for s in merged.values()
    )
    assert shapes == [("CR", 3, 3), ("CT", 1, 4)]
    for study in merged.values():
        accession = [i for i in study["identifier"] if i.get("type")]
        assert [a["value"] for a in accession] == ["2"]
    patient = results[0].patient
    assert patient["identifier"] == [{"value": "77654033"}]
    assert patient["name"] == [{"family": "Doe", "given": ["Archibald"]}]


def test_french_charset_name_is_decoded() -> None:
    result = map_part10((PYDICOM / "chrFren.dcm").read_bytes())
    _validate(result)
    assert result.patient["name"] == [{"family": "Buc", "given": ["Jérôme"]}]


def test_japanese_iso2022_name_is_decoded() -> None:
    result = map_part10((PYDICOM / "chrJapMulti.dcm").read_bytes())
    _validate(result)
    assert result.patient["name"] == [{"family": "やまだ", "given": ["たろう"]}]
    assert result.patient["gender"] == "male"
    series = result.imaging_study["series"][0]
    assert series["bodySite"]["code"] == "43799004"  # CHEST


def test_ct_small_study_fields() -> None:
    result = map_part10((PYDICOM / "CT_small.dcm").read_bytes(), wado_base_url=WADO)
    _validate(result)
    study = result.imaging_study
    assert study["identifier"][0] == {
        "system": "urn:dicom:uid",
        "value": "urn:oid:1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
    }
    # StudyDate 20040119, StudyTime 072730, TimezoneOffsetFromUTC -0500 in the file
    assert study["started"] == "2004-01-19T07:27:30-05:00"
    assert study["modality"] == [
        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}
    ]
    assert result.endpoint is not None and result.endpoint["address"] == WADO
    assert study["endpoint"] == [{"reference": f"Endpoint/{result.endpoint['id']}"}]
    assert result.patient["gender"] == "other"  # PatientSex "O"


def test_ids_are_deterministic() -> None:
    data = (PYDICOM / "CT_small.dcm").read_bytes()
    assert map_part10(data).imaging_study["id"] == map_part10(data).imaging_study["id"]
    assert map_part10(data).patient["id"] == map_part10(data).patient["id"]


def test_transaction_bundle_is_valid_and_uses_put() -> None:
    results = [
        map_part10((PYDICOM / name).read_bytes(), wado_base_url=WADO)
        for name in ("CT_small.dcm", "MR_small.dcm")
    ]
    bundle = transaction_bundle(results)
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    urls = [e["request"]["url"] for e in bundle["entry"]]
    assert all(e["request"]["method"] == "PUT" for e in bundle["entry"])
    assert len(urls) == len(set(urls))  # the shared Endpoint appears once
    assert sum(u.startswith("Endpoint/") for u in urls) == 1


def test_not_dicom_is_unsupported_media_type() -> None:
    with pytest.raises(UnsupportedMediaType):
        map_part10(b"MSH|^~\\&|not dicom")


def test_corrupt_part10_is_bad_request() -> None:
    # Preamble and DICM, then a (0002,0000) UL element whose 4-byte value has 3 bytes.
    data = b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\x00" * 3
    with pytest.raises(BadRequest):
        map_part10(data)


def test_dataset_without_date_timezone_keeps_date_only() -> None:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2", "1.2.3", "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.StudyDate, ds.StudyTime = "20010101", "101010"
    (result,) = map_datasets([ds])
    assert result.imaging_study["started"] == "2001-01-01"


def test_dicomdir_without_study_uid_is_unprocessable() -> None:
    with pytest.raises(Unprocessable) as info:
        map_part10((PYDICOM / "dicomdirtests" / "DICOMDIR").read_bytes())
    assert info.value.status == 422
    assert "StudyInstanceUID" in info.value.diagnostics


# Building these datasets is what pydicom warns about: the invalid UIDs are the point.
IGNORE_INVALID_UID = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
IGNORE_LONG_UID = pytest.mark.filterwarnings("ignore:The value length")


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("SOPInstanceUID", "\x00.3.6.1.4.1.5962.1.1.0.1"),  # found by test_mapper_fuzz.py
        ("SeriesInstanceUID", "1.2.3 4"),
        ("StudyInstanceUID", "1." + "2" * 70),
        ("SOPClassUID", "CT Image Storage"),
    ],
)
@IGNORE_INVALID_UID
@IGNORE_LONG_UID
def test_a_uid_that_is_not_digits_and_dots_is_unprocessable(keyword: str, value: str) -> None:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2", "1.2.3", "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    setattr(ds, keyword, value)
    with pytest.raises(Unprocessable) as info:
        map_datasets([ds])
    assert info.value.status == 422
    assert f"{keyword} " in info.value.diagnostics and "is not a UID" in info.value.diagnostics


@IGNORE_INVALID_UID
def test_uids_with_leading_zero_components_are_kept_as_devices_write_them() -> None:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.0840.01", "1.2.0840.01.2"
    ds.SOPInstanceUID, ds.SOPClassUID = "1.2.0840.01.2.3", "1.2.840.10008.5.1.4.1.1.7"
    (result,) = map_datasets([ds])
    ImagingStudy.model_validate(result.imaging_study)
    assert result.imaging_study["series"][0]["uid"] == "1.2.0840.01.2"


def test_a_value_pydicom_cannot_decode_is_a_bad_request_naming_its_tag() -> None:
    # Found by test_mapper_fuzz.py: pydicom decodes values when first read, so an unknown VR
    # raised NotImplementedError from inside the mapper instead of a 400.
    data = (PYDICOM / "CT_small.dcm").read_bytes()
    modality = b"\x08\x00\x60\x00CS"
    assert data.count(modality) == 1
    with pytest.raises(BadRequest) as info:
        map_part10(data.replace(modality, b"\x08\x00\x60\x00C\x00"))
    assert "Unknown Value Representation" in info.value.diagnostics
    assert "(0008,0060)" in info.value.diagnostics


def test_dicom_json_value_of_the_wrong_kind_is_a_bad_request() -> None:
    # Found by test_mapper_fuzz.py: a sequence item given as false raised AttributeError.
    dataset = {
        "0020000D": {"vr": "UI", "Value": ["1.2"]},
        "0020000E": {"vr": "UI", "Value": ["1.2.3"]},
        "00080018": {"vr": "UI", "Value": ["1.2.3.4"]},
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]},
        "00081032": {"vr": "SQ", "Value": [False]},
    }
    with pytest.raises(BadRequest) as info:
        map_dicom_json(json.dumps(dataset))
    assert "invalid DICOM JSON item 0" in info.value.diagnostics


@pytest.mark.parametrize("number", ["-1", "99999999999"])
def test_a_series_or_instance_number_no_unsigned_int_holds_is_left_out(number: str) -> None:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2", "1.2.3", "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SeriesNumber, ds.InstanceNumber = number, number
    (result,) = map_datasets([ds])
    ImagingStudy.model_validate(result.imaging_study)
    (series,) = result.imaging_study["series"]
    assert "number" not in series and "number" not in series["instance"][0]


def test_invalid_dicom_json_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        map_dicom_json(b"{not json")
