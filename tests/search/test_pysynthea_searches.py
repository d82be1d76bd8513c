"""Realistic app searches over PySynthea patients loaded through the real server, each checked
against a plain Python filter over the same stored resources."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.store.client import EmbeddedServer
from tests.conftest import RunningServer, start_hestia, stop_hestia

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pysynthea"
LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
JSON = {"Content-Type": "application/fhir+json"}

Resource = dict[str, Any]


@pytest.fixture(scope="module")
def loaded(
    database: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, dict[str, list[Resource]]]]:
    """A server on its own database name, the bundles posted as transactions, and every
    stored resource of the searched types read back in full."""
    tmp = tmp_path_factory.mktemp("pysynthea")
    server: RunningServer = start_hestia(
        tmp,
        {"HESTIA_MONGODB_URI": database.uri, "HESTIA_DATABASE": "pysynthea_search"},
        name="pysynthea",
    )
    client = httpx.Client(base_url=server.fhir, timeout=120)
    try:
        for path in sorted(FIXTURES.glob("*.json.gz")):
            bundle = json.loads(gzip.decompress(path.read_bytes()))
            response = client.post(server.fhir, json=bundle, headers=JSON)
            assert response.status_code == 200, response.text[:500]
        stored = {t: read_all(client, t) for t in ("Patient", "Observation", "Condition")}
        yield client, stored
    finally:
        client.close()
        stop_hestia(server)


def read_all(client: httpx.Client, resource_type: str) -> list[Resource]:
    return [e["resource"] for e in pages(client, f"/{resource_type}", {"_count": "500"})]


def pages(client: httpx.Client, url: str, params: dict[str, str]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    response = client.get(url, params=params)
    while True:
        assert response.status_code == 200, response.text[:500]
        bundle = response.json()
        entries += bundle.get("entry", [])
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            return entries
        response = client.get(following[0])


def codes(concept: Resource | None, system: str) -> set[str]:
    return {c.get("code") for c in (concept or {}).get("coding", []) if c.get("system") == system}


def subject_of(resource: Resource) -> str:
    return str(resource.get("subject", {}).get("reference", ""))


def is_lab(observation: Resource) -> bool:
    return any("laboratory" in codes(c, CATEGORY) for c in observation.get("category", []))


def test_a_patients_labs_by_loinc_code_and_date(
    loaded: tuple[httpx.Client, dict[str, list[Resource]]],
) -> None:
    client, stored = loaded
    labs = [o for o in stored["Observation"] if is_lab(o) and o.get("effectiveDateTime")]
    assert labs, "the fixtures hold laboratory results"
    (patient, code), _ = Counter(
        (subject_of(o), c) for o in labs for c in codes(o["code"], LOINC)
    ).most_common(1)[0]
    dates = sorted(o["effectiveDateTime"] for o in labs if subject_of(o) == patient)
    since = dates[len(dates) // 2][:10]
    expected = {
        o["id"]
        for o in labs
        if subject_of(o) == patient
        and code in codes(o["code"], LOINC)
        and o["effectiveDateTime"][:10] >= since
    }
    found = pages(
        client,
        "/Observation",
        {"patient": patient, "code": f"{LOINC}|{code}", "date": f"ge{since}", "_count": "50"},
    )
    assert {e["resource"]["id"] for e in found} == expected
    assert expected


def test_vital_signs_by_category(loaded: tuple[httpx.Client, dict[str, list[Resource]]]) -> None:
    client, stored = loaded
    patient = f"Patient/{stored['Patient'][0]['id']}"
    expected = {
        o["id"]
        for o in stored["Observation"]
        if subject_of(o) == patient
        and any("vital-signs" in codes(c, CATEGORY) for c in o.get("category", []))
    }
    found = pages(
        client, "/Observation", {"patient": patient, "category": "vital-signs", "_count": "100"}
    )
    assert {e["resource"]["id"] for e in found} == expected
    assert expected


def test_conditions_with_their_subjects_included(
    loaded: tuple[httpx.Client, dict[str, list[Resource]]],
) -> None:
    client, stored = loaded
    found = pages(client, "/Condition", {"_include": "Condition:subject", "_count": "100"})
    matches = [e["resource"] for e in found if e["search"]["mode"] == "match"]
    included = {f"Patient/{e['resource']['id']}" for e in found if e["search"]["mode"] == "include"}
    assert {c["id"] for c in matches} == {c["id"] for c in stored["Condition"]}
    assert included == {subject_of(c) for c in stored["Condition"]}


def test_patients_having_an_observation_with_a_code(
    loaded: tuple[httpx.Client, dict[str, list[Resource]]],
) -> None:
    client, stored = loaded
    per_code = Counter(c for o in stored["Observation"] for c in codes(o["code"], LOINC))
    # A code some patients have and others do not, so the filter has something to exclude.
    having: dict[str, set[str]] = {}
    for code in per_code:
        having[code] = {
            subject_of(o) for o in stored["Observation"] if code in codes(o["code"], LOINC)
        }
    code = next(c for c, who in having.items() if 0 < len(who) < len(stored["Patient"]))
    found = pages(client, "/Patient", {"_has:Observation:patient:code": f"{LOINC}|{code}"})
    assert {f"Patient/{e['resource']['id']}" for e in found} == having[code]
