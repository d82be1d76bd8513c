"""The whole HL7 v2 corpus through ingestion into the real database, one fresh database per
message (the corpus reuses control ids across files, which would otherwise be duplicates).

- Every message ends mapped (AA) or answered AE/AR with a reason, and a failure is stored with
  its OperationOutcome; none is refused by the store's own validation.
- For the FHIR-Converter samples with an expected output, what is STORED (the versions this
  message wrote) matches on the clinically meaningful fields. The comparison and the list of
  deliberate differences are those of tests/mappers/test_hl7v2_corpus.py, applied here to
  the stored resources instead of the mapper's Bundle.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from app.store.client import EmbeddedServer
from mappers.hl7v2 import split_batch
from tests.ingest.conftest import CORPUS, HL7V2, wire
from tests.ingest.ingest_helpers import parse_ack

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = CORPUS / "expected" / "fhir-converter"


def _load_mapper_corpus_test() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mapper_corpus_parity", ROOT / "tests" / "mappers" / "test_hl7v2_corpus.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


parity = _load_mapper_corpus_test()


def _messages() -> Iterator[tuple[str, bytes]]:
    for path in sorted(HL7V2.rglob("*")):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        chunks = [raw] if path.parent.name == "BadInputs" else (split_batch(raw) or [raw])
        for i, chunk in enumerate(chunks):
            yield f"{path.relative_to(HL7V2)}#{i}", chunk


ALL = list(_messages())


def _header_control_id(raw: bytes) -> str:
    text = raw.lstrip(b"\xef\xbb\xbf").decode("latin-1")
    start = text.find("MSH")
    line = text[start:].replace("\r\n", "\r").replace("\n", "\r").split("\r", 1)[0]
    fields = line.split(line[3]) if len(line) > 3 else []
    return fields[9].split("^")[0] if len(fields) > 9 else ""


async def _stored(wiring: Any, versioned: list[str]) -> dict[str, Any]:
    """The versions a message wrote, as a Bundle-shaped dict for the parity comparator."""
    entries = []
    for ref in versioned:
        kind, resource_id, _, vid = ref.split("/")
        doc = await wiring.store.read_version(kind, resource_id, int(vid))
        assert doc is not None, ref
        entries.append({"resource": doc["resource"]})
    return {"resourceType": "Bundle", "entry": entries}


def _compare_clinical_fields(name: str, raw: bytes, mine: dict[str, Any]) -> None:
    """The assertions of the mapper parity test, on the stored resources."""
    theirs = json.loads((EXPECTED / f"{name}-expected.json").read_text())
    by_type, allowed, instant = parity._by_type, parity._allowed, parity._instant
    if not allowed(name, "patient"):
        patient, expected = by_type(mine, "Patient")[0], by_type(theirs, "Patient")[0]
        assert patient.get("birthDate") == expected.get("birthDate")
        assert patient.get("gender") == expected.get("gender")
        ours = [i["value"] for i in patient["identifier"]]
        assert set(ours) <= {i["value"] for i in expected.get("identifier", [])}
        assert expected["identifier"][0]["value"] in ours
        for ours_name, their_name in zip(
            patient.get("name", []), expected.get("name", []), strict=False
        ):
            assert ours_name.get("family") == their_name.get("family")
            given = ours_name.get("given", [])
            assert their_name.get("given", [])[: len(given)] == given
    encounters, expected_encounters = by_type(mine, "Encounter"), by_type(theirs, "Encounter")
    if not allowed(name, "encounter"):
        assert len(encounters) == len(expected_encounters)
    for ours_enc, their_enc in zip(encounters, expected_encounters, strict=False):
        assert ours_enc["class"]["code"] == their_enc["class"]["code"]
        if not allowed(name, "encounter-period"):
            for bound in ("start", "end"):
                assert instant(ours_enc.get("period", {}).get(bound)) == instant(
                    their_enc.get("period", {}).get(bound)
                )
    parity._compare_observations(
        name, raw, by_type(mine, "Observation"), by_type(theirs, "Observation")
    )


async def test_every_corpus_message_is_stored_and_answered(database: EmbeddedServer) -> None:
    parity_names = set(parity.PARITY)
    compared = 0
    failures: list[str] = []
    for label, raw in ALL:
        wiring = await wire(database.uri)
        try:
            result = await wiring.ingestor.ingest(raw, transport="http", peer="test")
            ack = parse_ack(result.ack)
            assert ack.control_id == _header_control_id(raw), label
            assert result.raw_id is not None, label
            stored = await wiring.raw.get(result.raw_id)
            assert stored is not None and stored.data == raw, label  # byte for byte
            assert stored.status == result.status, label
            assert stored.ack == result.ack, label
            if result.status == "mapped":
                assert ack.code == "AA", label
                assert stored.provenance is not None and stored.resources, label
            else:
                assert result.status in ("failed", "rejected"), (label, result.status)
                assert ack.code == ("AR" if result.status == "rejected" else "AE"), label
                assert ack.reasons and ack.reasons[0], label
                assert stored.outcome is not None, label
                diagnostics = stored.outcome["issue"][0]["diagnostics"]
                assert "mapped resource was refused" not in diagnostics, (label, diagnostics)
                failures.append(label)
            path_name = Path(label.split("#")[0]).stem
            if label.startswith("fhir-converter/") and path_name in parity_names:
                assert result.status == "mapped", label
                _compare_clinical_fields(path_name, raw, await _stored(wiring, stored.resources))
                compared += 1
        finally:
            await wiring.database.client.drop_database(wiring.database.db.name)
            await wiring.database.close()
    assert compared == len(parity_names) >= 25
    # Guard against a regression that turns real messages into errors wholesale.
    assert len(ALL) - len(failures) >= 50, failures
