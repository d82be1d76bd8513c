"""DICOM ingestion through DicomIngestor on the real database: studies merged in storage across
files and uploads in any order, character sets, errors kept, header-only storage, and Google's
Whistle pairs checked field by field after a round trip through Part 10 files and the store."""

from __future__ import annotations

import asyncio
import io
import json
import random
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from app.ingest.dicom_ingest import pixel_data_offset
from mappers.dicom import read_dicom_json
from mappers.dicom.mapping import deterministic_id
from tests.ingest.conftest import CORPUS, Wiring
from tests.ingest.feeds import CSV_SOURCE, WADO, feeds

PYDICOM = CORPUS / "dicom" / "pydicom"
DICOMDIR_TESTS = PYDICOM / "dicomdirtests"
WHISTLE_IN = CORPUS / "dicom" / "google-whistle"
WHISTLE_OUT = CORPUS / "expected" / "google-whistle-dicom"
CASES = sorted(p.name.removesuffix(".input.json") for p in WHISTLE_IN.glob("*.input.json"))
OTHER_MODALITY = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "OT"}


def part10(ds: Dataset) -> bytes:
    """A dataset (e.g. from DICOM JSON) as a Part 10 file."""
    for tag in [t for t in list(ds.keys()) if t.group == 2]:
        del ds[tag]  # DICOM JSON may carry file meta elements in the dataset itself
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def study_of(data: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return f"ImagingStudy/{deterministic_id('ImagingStudy', str(ds.StudyInstanceUID))}"


def _unique(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _uuid_issuer(identifier: dict[str, Any]) -> dict[str, Any]:
    # Deliberate difference (see tests/mappers/test_dicom.py): "UUID:x" → "urn:uuid:x".
    system = identifier.get("system", "")
    if system.startswith("UUID:"):
        return {**identifier, "system": "urn:uuid:" + system.removeprefix("UUID:")}
    return identifier


def _codes(concept: dict[str, Any] | None) -> tuple[str, str] | None:
    return None if concept is None else (concept.get("system", ""), concept["code"])


@pytest.mark.parametrize("case", CASES)
async def test_whistle_pair_matches_after_storage(wiring: Wiring, case: str) -> None:
    """Each instance is sent as its own Part 10 upload, in reverse order; the ImagingStudy
    read back from the store is compared with Google's expected output field by field."""
    expected = json.loads((WHISTLE_OUT / f"{case}.output.json").read_text())
    datasets = read_dicom_json((WHISTLE_IN / f"{case}.input.json").read_bytes())
    service = feeds(wiring)
    studies = set()
    for ds in reversed(datasets):
        results = await service.dicom.ingest_files([("x.dcm", part10(ds))], source=CSV_SOURCE)
        assert [r.status for r in results] == ["mapped"], results[0].outcome
        studies.add(results[0].study)
    (study_ref,) = studies
    got = await wiring.current(str(study_ref))
    assert got is not None

    assert got["status"] == expected["status"]
    assert sorted(json.dumps(i, sort_keys=True) for i in got["identifier"]) == sorted(
        json.dumps(_uuid_issuer(i), sort_keys=True) for i in expected["identifier"]
    )
    assert got["numberOfSeries"] == expected["numberOfSeries"]
    assert got["numberOfInstances"] == expected["numberOfInstances"]
    for key in ("description", "started", "referrer", "location", "procedureCode"):
        assert got.get(key) == expected.get(key), key
    # Lists gathered per instance are unioned as files arrive (order: arrival).
    for key in ("interpreter", "reasonCode"):
        got_items = sorted(json.dumps(x, sort_keys=True) for x in got.get(key, []))
        want = sorted(json.dumps(x, sort_keys=True) for x in _unique(expected.get(key, [])))
        assert got_items == want, key
    assert got["endpoint"] == [{"reference": f"Endpoint/{deterministic_id('Endpoint', WADO)}"}]
    assert len(got["series"]) == len(expected["series"])
    expected_series = sorted(expected["series"], key=lambda s: (s.get("number", 2**31), s["uid"]))
    for got_s, exp_s in zip(got["series"], expected_series, strict=True):
        for key in ("uid", "number", "description", "started", "numberOfInstances"):
            assert got_s.get(key) == exp_s.get(key), key
        assert got_s["modality"] == exp_s.get("modality", OTHER_MODALITY)
        assert _codes(got_s.get("bodySite")) == _codes(exp_s.get("bodySite"))
        assert _codes(got_s.get("laterality")) == _codes(exp_s.get("laterality"))
        want_specimens = [
            {"identifier": _uuid_issuer(s["identifier"])} for s in exp_s.get("specimen", [])
        ]
        assert sorted(json.dumps(s, sort_keys=True) for s in got_s.get("specimen", [])) == sorted(
            json.dumps(s, sort_keys=True) for s in want_specimens
        )
        by_uid = {i["uid"]: i for i in got_s["instance"]}
        assert by_uid == {i["uid"]: i for i in exp_s["instance"]}


def _dicomdir_files() -> list[Path]:
    return sorted(p for p in DICOMDIR_TESTS.rglob("*") if p.is_file())


async def test_two_studies_merge_across_uploads_in_any_order(wiring: Wiring) -> None:
    files = [(str(p), p.read_bytes()) for p in _dicomdir_files()]
    random.Random(4).shuffle(files)
    service = feeds(wiring)
    first = await service.dicom.ingest_files(files[:4], source=CSV_SOURCE)
    second = await service.dicom.ingest_files(files[4:], source=CSV_SOURCE)
    results = first + second
    # DICOMDIR is the media's index, not an instance: skipped.
    assert len(results) == len(files) - 1
    assert {r.status for r in results} == {"mapped"}
    studies = {r.study for r in results}
    assert len(studies) == 2
    shapes = set()
    for ref in studies:
        study = await wiring.current(str(ref))
        assert study is not None
        shapes.add(
            (
                study["numberOfSeries"],
                study["numberOfInstances"],
                tuple(s["numberOfInstances"] for s in study["series"]),
            )
        )
        assert {
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                ]
            },
            "value": "2",
        } in study["identifier"]
    # SOURCES.md: CR 3 series x 1 instance; CT 1 series x 4 instances.
    assert shapes == {(3, 3, (1, 1, 1)), (1, 4, (4,))}
    assert await wiring.count("Patient") == 1
    assert await wiring.count("ImagingStudy") == 2


async def test_concurrent_uploads_of_one_study_lose_no_instance(wiring: Wiring) -> None:
    files = sorted((DICOMDIR_TESTS / "77654033" / "CT2").iterdir())
    service = feeds(wiring)
    results = await asyncio.gather(
        *(service.dicom.ingest_file(p.read_bytes(), source=CSV_SOURCE, name=p.name) for p in files)
    )
    assert {r.status for r in results} == {"mapped"}
    study = await wiring.current(str(results[0].study))
    assert study is not None and study["numberOfInstances"] == len(files) == 4


async def test_reupload_of_a_file_changes_nothing(wiring: Wiring) -> None:
    data = (PYDICOM / "CT_small.dcm").read_bytes()
    service = feeds(wiring)
    first = await service.dicom.ingest_file(data, source=CSV_SOURCE)
    again = await service.dicom.ingest_file(data, source=CSV_SOURCE)
    assert again.duplicate and again.payload == first.payload
    study = await wiring.current(str(first.study))
    assert study is not None and study["meta"]["versionId"] == "1"


@pytest.mark.parametrize(
    ("name", "family", "given"),
    # chrJapMulti's name is written in the ISO 2022 IR 87 escape form of its character set
    # (ESC $ B ... in the bytes): only decoding by (0008,0005) gives these kana.
    [("chrFren.dcm", "Buc", "Jérôme"), ("chrJapMulti.dcm", "やまだ", "たろう")],
)
async def test_character_sets_come_out_right(
    wiring: Wiring, name: str, family: str, given: str
) -> None:
    data = (PYDICOM / name).read_bytes()
    result = await feeds(wiring).dicom.ingest_file(data, source=CSV_SOURCE)
    assert result.status == "mapped"
    study = await wiring.current(str(result.study))
    assert study is not None
    patient = await wiring.current(study["subject"]["reference"])
    assert patient is not None
    assert patient["name"] == [{"family": family, "given": [given]}]


async def test_not_dicom_is_415_and_kept(wiring: Wiring) -> None:
    result = await feeds(wiring).dicom.ingest_file(b"hello, not dicom" * 20, source=CSV_SOURCE)
    assert (result.status, result.http_status) == ("rejected", 415)
    assert result.outcome is not None and result.outcome["resourceType"] == "OperationOutcome"
    kept = await wiring.raw.get(str(result.payload))
    assert kept is not None and kept.data == b"hello, not dicom" * 20
    assert [p.id for p in await wiring.raw.list_payloads(("rejected",), kinds=["dicom"])] == [
        result.payload
    ]


async def test_no_study_instance_uid_is_422_and_reprocessable(wiring: Wiring) -> None:
    ds = pydicom.dcmread(PYDICOM / "CT_small.dcm")
    del ds.StudyInstanceUID
    service = feeds(wiring)
    result = await service.dicom.ingest_file(part10(ds), source=CSV_SOURCE)
    assert (result.status, result.http_status) == ("failed", 422)
    assert result.outcome is not None
    assert result.outcome["issue"][0]["expression"] == ["StudyInstanceUID"]
    again = await service.dicom.reprocess(str(result.payload))
    assert again is not None and again.http_status == 422


async def test_header_only_keeps_the_bytes_before_pixel_data(wiring: Wiring) -> None:
    data = (PYDICOM / "CT_small.dcm").read_bytes()
    offset = pixel_data_offset(data)
    assert data[offset : offset + 4] == b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
    service = feeds(wiring, keep="header")
    result = await service.dicom.ingest_file(data, source=CSV_SOURCE)
    kept = await wiring.raw.get(str(result.payload))
    assert kept is not None and kept.header_only
    assert kept.data == data[:offset]
    again = await service.dicom.reprocess(kept.id)
    assert again is not None and again.status == "mapped" and again.study == result.study


async def test_missing_patient_id_is_a_finding(wiring: Wiring) -> None:
    ds = pydicom.dcmread(PYDICOM / "MR_small.dcm")
    del ds.PatientID
    result = await feeds(wiring).dicom.ingest_file(part10(ds), source=CSV_SOURCE)
    assert result.status == "mapped"
    assert [f["code"] for f in result.findings] == ["required"]
    kept = await wiring.raw.get(str(result.payload))
    assert kept is not None and kept.findings == result.findings
