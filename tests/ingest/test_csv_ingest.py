"""CSV ingestion through CsvIngestor on the real database: stored bytes, chunked writes, row-level
rejections kept and re-processable, idempotent re-uploads, unit conversion, quality findings."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from app.ingest.csv_ingest import blocks_of
from app.ingest.writes import current_docs
from app.store.raw import RawStore
from mappers.csv import ORIGINAL_QUANTITY_URL, available_maps, compile_map
from mappers.csv.values import deterministic_id
from tests.ingest.conftest import CORPUS, Wiring
from tests.ingest.feeds import CSV_SOURCE, feeds

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from csv_ingest import generate_lab_csv, patient_ids

PATIENTS_CSV = CORPUS / "csv" / "synthea" / "patients.csv"
OBSERVATIONS_CSV = CORPUS / "csv" / "synthea" / "observations_excerpt.csv"
LAB_HEADER = "patient_id,loinc,value,unit,effective,status,display,specimen_id\n"


def lab_id(patient: str, loinc: str, effective: str, specimen: str = "") -> str:
    return deterministic_id("lab-result", [patient, loinc, effective, specimen])


async def add_patients(wiring: Wiring, *ids: str) -> None:
    for patient_id in ids:
        await wiring.interactions.update(
            "Patient", patient_id, {"resourceType": "Patient", "id": patient_id}
        )


async def test_synthea_patients_are_stored_byte_for_byte_and_mapped(wiring: Wiring) -> None:
    data = PATIENTS_CSV.read_bytes()
    report = await feeds(wiring, chunk_rows=5).csv.ingest_stream(
        blocks_of(data, 1000), map_name=None, source=CSV_SOURCE
    )
    rows = data.count(b"\n") - 1  # a header line, then one line per patient
    assert (report.map_name, report.status) == ("synthea-patients", "mapped")
    assert report.rows_read == rows == report.created
    payload = await wiring.raw.get(report.payload)
    assert payload is not None and payload.data == data and payload.kind == "csv"
    first_id = data.split(b"\n")[1].split(b",")[0].decode()
    patient = await wiring.current(f"Patient/{deterministic_id('synthea-patient', [first_id])}")
    assert patient is not None
    assert {"system": "https://github.com/synthetichealth/synthea", "value": first_id} in patient[
        "identifier"
    ]
    # One Provenance per chunk of 5 rows, each naming the payload as its source.
    assert len(report.provenance) == -(-rows // 5)
    provenance = await wiring.current(report.provenance[0].split("/_history")[0])
    assert provenance is not None
    assert provenance["entity"][0]["what"]["reference"] == f"Binary/{report.payload}"
    assert len(provenance["target"]) == 5


async def test_reupload_creates_no_duplicates_or_versions(wiring: Wiring) -> None:
    ingest = feeds(wiring).csv
    data = PATIENTS_CSV.read_bytes()
    first = await ingest.ingest_stream(blocks_of(data), map_name=None, source=CSV_SOURCE)
    again = await ingest.ingest_stream(blocks_of(data), map_name=None, source=CSV_SOURCE)
    assert again.duplicate and again.payload == first.payload
    # The same rows in another file (CRLF line endings): new payload, nothing rewritten.
    crlf = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    third = await ingest.ingest_stream(blocks_of(crlf), map_name=None, source=CSV_SOURCE)
    assert third.payload != first.payload
    assert (third.created, third.updated, third.unchanged) == (0, 0, first.created)
    assert third.provenance == []
    assert await wiring.count("Patient") == first.created
    assert await wiring.store.count_history({"type": "Patient"}) == first.created


async def test_duplicate_rows_within_a_file_make_one_resource(wiring: Wiring) -> None:
    await add_patients(wiring, "p1")
    row = "p1,2345-7,95,mg/dL,2024-03-01,final,,\n"
    body = (LAB_HEADER + row + row).encode()
    report = await feeds(wiring).csv.ingest_stream(
        blocks_of(body), map_name="lab-results", source=CSV_SOURCE
    )
    assert (report.rows_read, report.created, report.duplicates_skipped) == (2, 1, 1)
    assert await wiring.count("Observation") == 1


async def test_rejected_rows_have_line_column_reason_and_are_kept(wiring: Wiring) -> None:
    await add_patients(wiring, "p1")
    lines = [
        "p1,2345-7,95,mg/dL,2024-03-01,final,,a",  # line 2: fine
        "bad id!,2345-7,95,mg/dL,2024-03-01,final,,b",  # 3: invalid patient id
        ",2345-7,95,mg/dL,2024-03-01,final,,c",  # 4: missing patient id
        "p1,2345-7,95,mg/dL,2024-02-30,final,,d",  # 5: not a calendar date
        "p1,2345-7,ninety,mg/dL,2024-03-01,final,,e",  # 6: not a number
        "p1,9999-9,95,mg/dL,2024-03-01,final,,f",  # 7: unknown LOINC code
        "p1,2345-7,95,furlong,2024-03-01,final,,g",  # 8: not a UCUM unit
        "p1,2345-7,95,kg,2024-03-01,final,,h",  # 9: incompatible unit
        "nobody,2345-7,95,mg/dL,2024-03-01,final,,i",  # 10: no such patient
    ]
    body = (LAB_HEADER + "\n".join(lines) + "\n").encode()
    report = await feeds(wiring, chunk_rows=4).csv.ingest_stream(
        blocks_of(body, 17), map_name="lab-results", source=CSV_SOURCE
    )
    assert report.status == "partial"
    assert (report.rows_read, report.created, report.rows_rejected) == (9, 1, 8)
    by_line = {r.line: r for r in report.rejections}
    expected_columns = {
        3: "patient_id",
        4: "patient_id",
        5: "effective",
        6: "value",
        7: "loinc",
        8: "unit",
        9: "unit",
        10: "patient_id",
    }
    assert {line: r.column for line, r in by_line.items()} == expected_columns
    assert "does not exist" in by_line[10].reason
    assert "unknown code" in by_line[7].reason
    # Kept with the payload, row text included, findable afterwards.
    kept = await wiring.raw.rejections(report.payload)
    assert [r.line for r in kept] == sorted(expected_columns)
    assert kept[0].row == "bad id!,2345-7,95,mg/dL,2024-03-01,final,,b"
    listed = await wiring.raw.list_payloads(("partial",), kinds=["csv"])
    assert [p.id for p in listed] == [report.payload]


async def test_reprocess_after_the_map_is_fixed(
    wiring: Wiring, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_patients(wiring, "p1", "p2")
    body = (
        LAB_HEADER
        + "p1,2345-7,95,mg/dL,2024-03-01,final,,\n"
        + "p2,1742-6,31,U/L,2024-03-01,final,,\n"  # ALT: not in the shipped map's lookup
    ).encode()
    ingest = feeds(wiring).csv
    report = await ingest.ingest_stream(blocks_of(body), map_name="lab-results", source=CSV_SOURCE)
    assert report.rows_rejected == 1 and report.rejections[0].column == "loinc"

    import yaml

    from mappers.csv.spec import MAPS_DIR

    fixed = yaml.safe_load((MAPS_DIR / "lab-results.yaml").read_text(encoding="utf-8"))
    fixed["lookups"]["loinc"]["1742-6"] = {"system": "http://loinc.org", "code": "1742-6"}
    monkeypatch.setitem(available_maps(), "lab-results", compile_map(fixed))

    again = await ingest.reprocess(report.payload)
    assert again is not None
    assert (again.status, again.rows_rejected, again.created, again.unchanged) == (
        "mapped",
        0,
        1,
        1,
    )
    assert await wiring.raw.rejections(report.payload) == []
    alt = await wiring.current(f"Observation/{lab_id('p2', '1742-6', '2024-03-01')}")
    assert alt is not None and alt["valueQuantity"]["value"] == 31


async def test_units_are_converted_with_the_original_kept(wiring: Wiring) -> None:
    await add_patients(wiring, "p1")
    body = (LAB_HEADER + "p1,2345-7,5.0,mmol/L,2024-03-01,final,,\n").encode()
    await feeds(wiring).csv.ingest_stream(
        blocks_of(body), map_name="lab-results", source=CSV_SOURCE
    )
    observation = await wiring.current(f"Observation/{lab_id('p1', '2345-7', '2024-03-01')}")
    assert observation is not None
    quantity = observation["valueQuantity"]
    # Glucose: 1 mmol/L = 18.016 mg/dL (molar mass 180.16 g/mol).
    assert quantity["code"] == "mg/dL"
    assert quantity["value"] == pytest.approx(5.0 * 18.016, rel=1e-5)
    (original,) = quantity["extension"]
    assert original["url"] == ORIGINAL_QUANTITY_URL
    assert original["valueQuantity"] == {
        "value": 5.0,
        "unit": "mmol/L",
        "system": "http://unitsofmeasure.org",
        "code": "mmol/L",
    }


async def test_quoted_fields_spanning_lines_survive_tiny_blocks(wiring: Wiring) -> None:
    await add_patients(wiring, "p1")
    body = (
        LAB_HEADER
        + 'p1,2345-7,95,mg/dL,2024-03-01,final,"fasting,\nsecond ""line""",\n'
        + "p1,2345-7,96,mg/dL,2024-03-02,final,,\n"
    ).encode()
    report = await feeds(wiring).csv.ingest_stream(
        blocks_of(body, 3), map_name="lab-results", source=CSV_SOURCE
    )
    assert (report.rows_read, report.created) == (2, 2)
    observation = await wiring.current(f"Observation/{lab_id('p1', '2345-7', '2024-03-01')}")
    assert observation is not None
    assert observation["code"]["text"] == 'fasting,\nsecond "line"'


async def test_quality_findings_are_kept_on_the_payload(wiring: Wiring) -> None:
    header = PATIENTS_CSV.read_text(encoding="utf-8").splitlines()[0]
    columns = header.split(",")

    def row(**values: str) -> str:
        return ",".join(values.get(c, "") for c in columns)

    body = "\n".join(
        [
            header,
            row(Id="mrn-1", BIRTHDATE="1980-05-01", FIRST="Ann", LAST="Lee", GENDER="F", SSN="1"),
            row(Id="mrn-2", BIRTHDATE="1980-05-01", FIRST="Ann", LAST="Lee", GENDER="F", SSN="2"),
            row(Id="mrn-3", BIRTHDATE="1990-01-01", FIRST="Bo", LAST="Ek", GENDER="M"),
        ]
    )
    report = await feeds(wiring).csv.ingest_stream(
        blocks_of(body.encode()), map_name="synthea-patients", source=CSV_SOURCE
    )
    assert report.status == "mapped" and report.created == 3
    codes = report.finding_counts
    assert codes.get("duplicate") == 1  # mrn-2 written after mrn-1: one finding
    assert codes.get("required") == 1  # mrn-3 has no SSN (an expected identifier)
    payload = await wiring.raw.get(report.payload)
    assert payload is not None
    duplicate = next(f for f in payload.findings if f["code"] == "duplicate")
    first = deterministic_id("synthea-patient", ["mrn-1"])
    assert f"Patient/{first}" in duplicate["diagnostics"]


async def test_implausible_value_is_a_finding_not_a_rejection(wiring: Wiring) -> None:
    await add_patients(wiring, "p1")
    body = (LAB_HEADER + "p1,2951-2,1400,mmol/L,2024-03-01,final,,\n").encode()  # sodium
    report = await feeds(wiring).csv.ingest_stream(
        blocks_of(body), map_name="lab-results", source=CSV_SOURCE
    )
    assert report.created == 1 and report.rows_rejected == 0
    assert report.finding_counts == {"value": 1}
    assert "plausible range" in report.findings[0]["diagnostics"]


async def test_large_upload_goes_to_gridfs_and_reads_back(wiring: Wiring) -> None:
    small_inline = RawStore(wiring.database.db, inline_limit=2048)
    service = feeds(wiring)
    service.csv.raw = small_inline
    data = PATIENTS_CSV.read_bytes()
    assert len(data) > 2048
    report = await service.csv.ingest_stream(blocks_of(data, 700), map_name=None, source=CSV_SOURCE)
    payload = await wiring.raw.get(report.payload)
    assert payload is not None and payload.in_gridfs and payload.data == b""
    assert await small_inline.read_all(payload) == data
    assert report.created == data.count(b"\n") - 1


async def test_synthea_observations_need_their_patients(wiring: Wiring) -> None:
    ingest = feeds(wiring).csv
    observations = OBSERVATIONS_CSV.read_bytes()
    before = await ingest.ingest_stream(blocks_of(observations), map_name=None, source=CSV_SOURCE)
    assert before.map_name == "synthea-observations"
    assert before.status == "failed" and before.created == 0
    assert all(r.column == "PATIENT" for r in before.rejections)
    await ingest.ingest_stream(
        blocks_of(PATIENTS_CSV.read_bytes()), map_name=None, source=CSV_SOURCE
    )
    after = await ingest.reprocess(before.payload)
    assert after is not None and after.status == "mapped"
    assert after.created == after.rows_read - after.duplicates_skipped


async def test_generated_lab_feed_of_2000_rows(wiring: Wiring) -> None:
    ids = patient_ids(50, 3)
    await add_patients(wiring, *ids)
    buffer = io.StringIO()
    bad = generate_lab_csv(buffer, 2000, ids, bad_every=100)
    report = await feeds(wiring).csv.ingest_stream(
        blocks_of(buffer.getvalue().encode(), 65536), map_name="lab-results", source=CSV_SOURCE
    )
    assert report.rows_read == 2000
    assert report.rows_rejected == bad == 20
    assert report.created == 2000 - bad
    assert await wiring.count("Observation") == 2000 - bad
    sample = await current_docs(
        wiring.interactions,
        _NoSession(),  # type: ignore[arg-type, unused-ignore]
        "Observation",
        [lab_id(ids[0], "2345-7", "2024-01-01T00:00:00Z", "S0")],
    )
    assert len(sample) == 1


class _NoSession:
    session = None
