"""Realistic app searches on a generated population, checked against plain Python filters.

The generator is seeded and self-contained (no PySynthea dependency): patients with labs by
LOINC code and date, vital signs, conditions. Each search's expected ids come from filtering
the generated resources directly in Python.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from tests.search.conftest import CATEGORY, LOINC, UCUM, SearchWorld, entries, match_ids, new_world

pytestmark = pytest.mark.asyncio
JsonDict = dict[str, Any]

LABS = {"2339-0": "mg/dL", "2093-3": "mg/dL", "4548-4": "%"}
VITALS = {"8867-4": "/min", "29463-7": "kg"}
CONDITIONS = ["44054006", "38341003", "195967001"]


def generate(seed: int = 7, patients: int = 40) -> list[JsonDict]:
    rng = random.Random(seed)
    out: list[JsonDict] = []
    for p in range(patients):
        pid = f"gp{p:03d}"
        out.append(
            {
                "resourceType": "Patient",
                "id": pid,
                "gender": rng.choice(["male", "female"]),
                "birthDate": f"{rng.randint(1940, 2010)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
                "name": [
                    {
                        "family": rng.choice(["Smith", "Lee", "Garcia", "Smithers"]),
                        "given": [rng.choice(["Ann", "Bo", "Cy"])],
                    }
                ],
            }
        )
        for o in range(rng.randint(0, 12)):
            code, unit = rng.choice(list({**LABS, **VITALS}.items()))
            category = "laboratory" if code in LABS else "vital-signs"
            out.append(
                {
                    "resourceType": "Observation",
                    "id": f"{pid}-o{o}",
                    "status": "final",
                    "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
                    "code": {"coding": [{"system": LOINC, "code": code}]},
                    "subject": {"reference": f"Patient/{pid}"},
                    "effectiveDateTime": f"{rng.randint(2015, 2023)}-{rng.randint(1, 12):02d}-"
                    f"{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z",
                    "valueQuantity": {
                        "value": round(rng.uniform(1, 300), 1),
                        "unit": unit,
                        "system": UCUM,
                        "code": unit,
                    },
                }
            )
        for c in range(rng.randint(0, 2)):
            out.append(
                {
                    "resourceType": "Condition",
                    "id": f"{pid}-c{c}",
                    "subject": {"reference": f"Patient/{pid}"},
                    "code": {
                        "coding": [
                            {"system": "http://snomed.info/sct", "code": rng.choice(CONDITIONS)}
                        ]
                    },
                }
            )
    return out


DATA = generate()


def _of(kind: str) -> list[JsonDict]:
    return [r for r in DATA if r["resourceType"] == kind]


def _code(r: JsonDict) -> str:
    return str(r["code"]["coding"][0]["code"])


@pytest.fixture(scope="module")
async def population(mongo: AsyncMongoClient[JsonDict]) -> SearchWorld:
    world = await new_world(mongo, ["Patient", "Observation", "Condition"])
    for resource in DATA:
        await world.put(resource)
    return world


async def _all_pages(world: SearchWorld, resource_type: str, query: str) -> JsonDict:
    """Every match and include over all pages (following next links)."""
    from urllib.parse import parse_qsl, urlsplit

    bundle = await world.search(resource_type, query)
    found = {"match": match_ids(bundle), "include": entries(bundle, "include")}
    while url := next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None):
        bundle = await world.search(resource_type, parse_qsl(urlsplit(url).query))
        found["match"] += match_ids(bundle)
        found["include"] += entries(bundle, "include")
    return found


async def test_labs_of_a_patient_by_code_and_date(population: SearchWorld) -> None:
    for patient in [p["id"] for p in _of("Patient")][:10]:
        expected = sorted(
            o["id"]
            for o in _of("Observation")
            if o["subject"]["reference"] == f"Patient/{patient}"
            and _code(o) == "2339-0"
            and o["effectiveDateTime"] >= "2019"
        )
        query = f"patient={patient}&code={LOINC}|2339-0&date=ge2019&_count=3"
        found = await _all_pages(population, "Observation", query)
        assert sorted(found["match"]) == expected


async def test_vital_signs_by_category_sorted_by_date(population: SearchWorld) -> None:
    expected = sorted(
        (o for o in _of("Observation") if o["category"][0]["coding"][0]["code"] == "vital-signs"),
        key=lambda o: (o["effectiveDateTime"], o["id"]),
        reverse=True,
    )
    found = await _all_pages(population, "Observation", "category=vital-signs&_sort=-date&_count=7")
    # Descending by date; equal dates are ordered by id ascending.
    got = found["match"]
    dates = {o["id"]: o["effectiveDateTime"] for o in expected}
    assert sorted(got) == sorted(dates)
    assert [dates[i] for i in got] == sorted(dates.values(), reverse=True)


async def test_conditions_with_their_subjects(population: SearchWorld) -> None:
    found = await _all_pages(population, "Condition", "_include=Condition:subject&_count=5")
    conditions = _of("Condition")
    assert sorted(found["match"]) == sorted(c["id"] for c in conditions)
    subjects = {c["subject"]["reference"] for c in conditions}
    # Each page includes its own conditions' subjects, so a patient may repeat across pages.
    assert set(found["include"]) == subjects


async def test_patients_having_an_observation_code(population: SearchWorld) -> None:
    expected = sorted(
        {
            o["subject"]["reference"].split("/")[1]
            for o in _of("Observation")
            if _code(o) == "4548-4"
        }
    )
    found = await _all_pages(population, "Patient", "_has:Observation:patient:code=4548-4")
    assert sorted(found["match"]) == expected


async def test_name_prefix_and_quantity_range(population: SearchWorld) -> None:
    expected = sorted(p["id"] for p in _of("Patient") if p["name"][0]["family"].startswith("Smith"))
    assert (
        sorted((await _all_pages(population, "Patient", "name=smith&_count=4"))["match"])
        == expected
    )
    heavy = sorted(
        o["id"]
        for o in _of("Observation")
        if _code(o) == "29463-7" and o["valueQuantity"]["value"] > 150
    )
    query = f"code=29463-7&value-quantity=gt150|{UCUM}|kg&_count=6"
    assert sorted((await _all_pages(population, "Observation", query))["match"]) == heavy
