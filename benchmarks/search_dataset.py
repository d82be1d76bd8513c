"""A seeded clinical data set for the search benchmark, bulk-loaded in the server's stored shape.

Per patient: ENCOUNTERS encounters spread over ten years, CONDITIONS conditions and
OBSERVATIONS observations of a handful of LOINC codes (vital signs and labs), each in one of
the patient's encounters. 1,000 patients give 101,000 resources.

Loading skips HTTP but not the server's write code: every resource goes through
`model.with_meta`, `indexing.index_resource` (the same `s` keys and compartments the create
interaction computes) and `WriteBatch.add` (the same current and history documents), and is
flushed with `WriteBatch.flush` inside `Store.run_transaction`, as a Bundle transaction would.
Index extraction, the CPU-heavy part, runs in a process pool.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from app.fhir import model
from app.fhir.indexing import index_resource
from app.store.indexes import ensure_search_indexes
from app.store.store_format import FORMAT
from app.store.versions import Store, WriteBatch, WriteSpec, instant, now_utc

JsonDict = dict[str, Any]

ENCOUNTERS = 10
CONDITIONS = 5
OBSERVATIONS = 85
TYPES = ("Patient", "Encounter", "Condition", "Observation")
MARKER = "bench_search_dataset"

FAMILIES = [
    "Smith", "Smithson", "Smithers", "Jones", "Johnson", "Williams", "Brown", "Taylor", "Davies",
    "Evans", "Wilson", "Thomas", "Roberts", "Walker", "Wright", "Robinson", "Thompson", "White",
    "Hughes", "Edwards", "Green", "Hall", "Wood", "Harris", "Lewis", "Martin", "Jackson", "Clarke",
    "García", "Müller", "Nguyen", "Okafor", "Kowalski", "Dubois", "Rossi", "Silva", "Kim", "Chen",
]  # fmt: skip
GIVEN = ["Ana", "Ben", "Chloé", "Dmitri", "Eve", "Farah", "Goran", "Hana", "Ivan", "Jun"]
# (LOINC code, display, category, unit, typical value, spread, weight)
LOINC = [
    ("8867-4", "Heart rate", "vital-signs", "/min", 75, 15, 20),
    ("9279-1", "Respiratory rate", "vital-signs", "/min", 16, 3, 12),
    ("8310-5", "Body temperature", "vital-signs", "Cel", 36.8, 0.5, 12),
    ("29463-7", "Body weight", "vital-signs", "kg", 75, 15, 12),
    ("8302-2", "Body height", "vital-signs", "cm", 170, 10, 6),
    ("39156-5", "Body mass index", "vital-signs", "kg/m2", 26, 4, 6),
    ("2339-0", "Glucose [Mass/volume] in Blood", "laboratory", "mg/dL", 100, 20, 10),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "laboratory", "%", 5.8, 0.8, 7),
]
SNOMED = [
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195967001", "Asthma"),
    ("55822004", "Hyperlipidemia"),
    ("40055000", "Chronic sinusitis"),
    ("15777000", "Prediabetes"),
]
START = datetime(2015, 1, 1, tzinfo=UTC)
SPAN_DAYS = 3650


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _when(day: int, rng: random.Random) -> str:
    moment = START + timedelta(days=day, minutes=rng.randint(7 * 60, 18 * 60))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _coding(system: str, code: str, display: str) -> JsonDict:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def patient_resources(number: int, seed: int) -> list[JsonDict]:
    """One patient and everything recorded about them (ids included, deterministic)."""
    rng = random.Random(seed * 1_000_003 + number)
    patient_id = _uuid(rng)
    family, given = rng.choice(FAMILIES), rng.choice(GIVEN)
    out: list[JsonDict] = [
        {
            "resourceType": "Patient",
            "id": patient_id,
            "identifier": [{"system": "urn:bench:mrn", "value": f"MRN{number:08d}"}],
            "active": True,
            "name": [{"use": "official", "family": family, "given": [given]}],
            "gender": rng.choice(["male", "female"]),
            "birthDate": f"{rng.randint(1935, 2010)}-{rng.randint(1, 12):02d}-"
            f"{rng.randint(1, 28):02d}",
            "address": [{"city": "Springfield", "postalCode": f"{rng.randint(10000, 99999)}"}],
        }
    ]
    subject = {"reference": f"Patient/{patient_id}"}
    visits: list[tuple[str, int]] = []
    for day in sorted(rng.sample(range(SPAN_DAYS), ENCOUNTERS)):
        encounter_id = _uuid(rng)
        visits.append((encounter_id, day))
        start = _when(day, rng)
        out.append(
            {
                "resourceType": "Encounter",
                "id": encounter_id,
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "type": [_coding("http://snomed.info/sct", "185349003", "Encounter for check up")],
                "subject": subject,
                "period": {"start": start, "end": start[:11] + "19:00:00Z"},
            }
        )
    for code, display in rng.sample(SNOMED, CONDITIONS):
        encounter_id, day = rng.choice(visits)
        out.append(
            {
                "resourceType": "Condition",
                "id": _uuid(rng),
                "clinicalStatus": _coding(
                    "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"
                ),
                "code": _coding("http://snomed.info/sct", code, display),
                "subject": subject,
                "encounter": {"reference": f"Encounter/{encounter_id}"},
                "onsetDateTime": _when(day, rng),
            }
        )
    weights = [entry[-1] for entry in LOINC]
    for _ in range(OBSERVATIONS):
        code, display, category, unit, mean, spread, _w = rng.choices(LOINC, weights)[0]
        encounter_id, day = rng.choice(visits)
        out.append(
            {
                "resourceType": "Observation",
                "id": _uuid(rng),
                "status": "final",
                "category": [
                    _coding(
                        "http://terminology.hl7.org/CodeSystem/observation-category",
                        category,
                        category,
                    )
                ],
                "code": _coding("http://loinc.org", code, display),
                "subject": subject,
                "encounter": {"reference": f"Encounter/{encounter_id}"},
                "effectiveDateTime": _when(day, rng),
                "issued": _when(day, rng)[:19] + ".000Z",
                "valueQuantity": {
                    "value": round(rng.gauss(mean, spread), 1),
                    "unit": unit,
                    "system": "http://unitsofmeasure.org",
                    "code": unit,
                },
            }
        )
    return out


@dataclass(frozen=True)
class Prepared:
    """A resource as the create interaction stages it: stored body, `s` keys, compartments."""

    resource_type: str
    id: str
    body: JsonDict
    keys: JsonDict
    compartments: list[str]
    updated: datetime


def prepare_patients(numbers: range, seed: int) -> list[Prepared]:
    out: list[Prepared] = []
    for number in numbers:
        for resource in patient_resources(number, seed):
            updated = now_utc()
            body = model.with_meta(resource, resource["id"], 1, instant(updated))
            keys, compartments = index_resource(body)
            out.append(
                Prepared(body["resourceType"], body["id"], body, keys, compartments, updated)
            )
    return out


def _chunks(patients: int, size: int) -> Iterator[range]:
    for start in range(0, patients, size):
        yield range(start, min(patients, start + size))


def _constant(body: JsonDict) -> Callable[[int], JsonDict]:
    return lambda _vid: body


async def _flush(store: Store, prepared: list[Prepared]) -> None:
    batch = WriteBatch(store)
    for item in prepared:
        spec = WriteSpec(
            item.resource_type, item.id, item.body, "POST", item.keys, item.compartments, ()
        )
        batch.add(spec, None, item.updated, _constant(item.body))
    await store.run_transaction(batch.flush)


@dataclass
class LoadReport:
    resources: int
    seconds: float
    index_seconds: float
    reused: bool


async def load(
    db: AsyncDatabase[JsonDict], patients: int, seed: int, *, processes: int = 2
) -> LoadReport:
    """Load the data set into `db` (skipped when this very data set is already there)."""
    store = Store(db)
    marker = await db["bench_meta"].find_one({"_id": MARKER})
    if marker is not None and marker.get("patients") == patients and marker.get("seed") == seed:
        if marker.get("format", 1) != FORMAT:
            # Still read (bodies of every format are), but not what this code would write.
            print(
                f"warning: this store was loaded in store format {marker.get('format', 1)}, "
                f"this code writes format {FORMAT}: load a new one to measure the current "
                "layout",
                file=sys.stderr,
            )
        # The index definitions may have changed since the store was loaded.
        await ensure_search_indexes(store, list(TYPES))
        return LoadReport(
            int(marker["resources"]), float(marker["seconds"]), float(marker["index"]), True
        )
    started = time.perf_counter()
    # Building the search indexes after the load is faster than maintaining them per insert
    # (measured: 1,490 resources/s plus the build, against 430/s with the indexes in place).
    await store.ensure_indexes(list(TYPES))
    total = 0
    with ProcessPoolExecutor(max_workers=processes) as pool:
        futures = [
            pool.submit(prepare_patients, numbers, seed) for numbers in _chunks(patients, 10)
        ]
        for future in futures:
            prepared = future.result()
            await _flush(store, prepared)
            total += len(prepared)
    building = time.perf_counter()
    await ensure_search_indexes(store, list(TYPES))
    index_seconds = time.perf_counter() - building
    seconds = time.perf_counter() - started
    await db["bench_meta"].replace_one(
        {"_id": MARKER},
        {
            "patients": patients,
            "seed": seed,
            "format": FORMAT,
            "resources": total,
            "seconds": seconds,
            "index": index_seconds,
        },
        upsert=True,
    )
    return LoadReport(total, seconds, index_seconds, False)
