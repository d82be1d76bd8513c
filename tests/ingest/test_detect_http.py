"""The ingestion routes over HTTP, on the real app (create_app + lifespan): POST /ingest/csv,
POST /ingest/dicom (single, multipart, zip), POST /ingest with format detection, the payload
listing with findings, rejected rows, re-processing and Binary reads."""

from __future__ import annotations

import io
import zipfile

import httpx

from tests.ingest.conftest import CORPUS, Wiring

PATIENTS_CSV = CORPUS / "csv" / "synthea" / "patients.csv"
PYDICOM = CORPUS / "dicom" / "pydicom"
LAB_HEADER = "patient_id,loinc,value,unit,effective,status,display,specimen_id\n"
ADT = (
    b"MSH|^~\\&|REG|GHH|HESTIA|HESTIA|20240105101500||ADT^A04|D-1|P|2.5.1\r"
    b"EVN|A04|20240105101500\rPID|1||7001^^^GHH^MR||ROE^RICHARD||19700203|M\r"
)


async def test_csv_upload_reports_rows_and_lists_rejections(
    http: httpx.AsyncClient, wiring: Wiring
) -> None:
    await wiring.interactions.update("Patient", "p1", {"resourceType": "Patient", "id": "p1"})
    body = LAB_HEADER + "p1,2345-7,95,mg/dL,2024-03-01,final,,\np1,2345-7,x,mg/dL,2024-03-02,,,\n"
    response = await http.post(
        "/ingest/csv?map=lab-results", content=body, headers={"content-type": "text/csv"}
    )
    assert response.status_code == 200
    report = response.json()
    assert (report["status"], report["rowsRead"], report["resourcesCreated"]) == ("partial", 2, 1)
    assert (
        report["rejections"]
        == [{"line": 3, "column": "value", "reason": "'x' is not a number", "row": ""}]
        or report["rejections"][0]["line"] == 3
    )
    payload = report["payload"]
    listed = (await http.get("/ingest/payloads?status=partial")).json()["payloads"]
    assert [p["id"] for p in listed] == [payload]
    rows = (await http.get(f"/ingest/payloads/{payload}/rejections")).json()["rejections"]
    assert rows == [
        {
            "line": 3,
            "column": "value",
            "reason": "'x' is not a number",
            "row": "p1,2345-7,x,mg/dL,2024-03-02,,,",
        }
    ]
    again = await http.post(f"/ingest/$reprocess?payload={payload}")
    assert again.status_code == 200
    assert again.json()["reprocessed"][0]["resourcesUnchanged"] == 1
    binary = await http.get(f"/fhir/Binary/{payload}")
    assert binary.content == body.encode()


async def test_unknown_map_and_wrong_type_are_refused(http: httpx.AsyncClient) -> None:
    unknown = await http.post(
        "/ingest/csv?map=nope", content=LAB_HEADER, headers={"content-type": "text/csv"}
    )
    assert unknown.status_code == 400
    assert "unknown CSV map" in unknown.json()["issue"][0]["diagnostics"]
    wrong = await http.post("/ingest/csv", content=b"{}", headers={"content-type": "image/png"})
    assert wrong.status_code == 415


async def test_dicom_single_multipart_and_zip(http: httpx.AsyncClient, wiring: Wiring) -> None:
    ct = (PYDICOM / "CT_small.dcm").read_bytes()
    single = await http.post(
        "/ingest/dicom", content=ct, headers={"content-type": "application/dicom"}
    )
    assert single.status_code == 200
    (file_result,) = single.json()["files"]
    assert file_result["status"] == "mapped"
    cr = sorted((PYDICOM / "dicomdirtests" / "77654033").rglob("CR*/*"))
    multipart = await http.post(
        "/ingest/dicom", files=[("file", (p.name, p.read_bytes(), "application/dicom")) for p in cr]
    )
    assert multipart.status_code == 200 and len(multipart.json()["files"]) == 3
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted((PYDICOM / "dicomdirtests" / "77654033" / "CT2").iterdir()):
            archive.writestr(f"CT2/{path.name}", path.read_bytes())
        archive.writestr("DICOMDIR", (PYDICOM / "dicomdirtests" / "DICOMDIR").read_bytes())
    zipped = await http.post(
        "/ingest/dicom", content=buffer.getvalue(), headers={"content-type": "application/zip"}
    )
    assert zipped.status_code == 200
    studies = {f["study"] for f in zipped.json()["files"]}
    (study_ref,) = studies
    study = (await http.get(f"/fhir/{study_ref}")).json()
    assert study["numberOfInstances"] == 4
    assert await wiring.count("ImagingStudy") == 3


async def test_dicom_errors_are_operation_outcomes(http: httpx.AsyncClient) -> None:
    not_dicom = await http.post(
        "/ingest/dicom", content=b"x" * 300, headers={"content-type": "application/dicom"}
    )
    assert not_dicom.status_code == 415
    assert not_dicom.json()["resourceType"] == "OperationOutcome"
    assert not_dicom.headers["x-hestia-payload"]
    listed = (await http.get("/ingest/payloads?status=rejected&kind=dicom")).json()["payloads"]
    assert [p["id"] for p in listed] == [not_dicom.headers["x-hestia-payload"]]


async def test_autodetect_routes_each_format(http: httpx.AsyncClient, wiring: Wiring) -> None:
    plain = {"content-type": "application/octet-stream"}
    csv_response = await http.post("/ingest", content=PATIENTS_CSV.read_bytes(), headers=plain)
    assert csv_response.status_code == 200
    assert csv_response.json()["map"] == "synthea-patients"
    dicom = await http.post(
        "/ingest", content=(PYDICOM / "MR_small.dcm").read_bytes(), headers=plain
    )
    assert dicom.status_code == 200 and dicom.json()["files"][0]["status"] == "mapped"
    hl7 = await http.post("/ingest", content=ADT, headers=plain)
    assert hl7.status_code == 200 and b"MSA|AA|D-1" in hl7.content
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": "fhir-1", "gender": "female"},
                "request": {"method": "PUT", "url": "Patient/fhir-1"},
            }
        ],
    }
    fhir_response = await http.post("/ingest", json=bundle)
    assert fhir_response.status_code == 200
    assert fhir_response.json()["type"] == "transaction-response"
    assert await wiring.current("Patient/fhir-1") is not None
    unknown = await http.post("/ingest", content=b"\x00\x01 binary junk", headers=plain)
    assert unknown.status_code == 415
    assert "Cannot tell" in unknown.json()["issue"][0]["diagnostics"]


async def test_payload_listing_shows_findings(http: httpx.AsyncClient, wiring: Wiring) -> None:
    await wiring.interactions.update("Patient", "p9", {"resourceType": "Patient", "id": "p9"})
    body = LAB_HEADER + "p9,2951-2,1400,mmol/L,2024-03-01,final,,\n"
    response = await http.post(
        "/ingest/csv?map=lab-results", content=body, headers={"content-type": "text/csv"}
    )
    assert response.json()["status"] == "mapped"
    listed = (await http.get("/ingest/payloads?status=mapped&kind=csv")).json()["payloads"]
    (payload,) = listed
    issues = payload["findings"]["issue"]
    assert [i["code"] for i in issues] == ["value"]
    bad = await http.get("/ingest/payloads?status=bogus")
    assert bad.status_code == 400
