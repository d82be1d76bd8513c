"""Load N generated resources through the FHIR create interaction and report the rate.

python -m benchmarks.load_resources --count 5000 --clients 8
python -m benchmarks.load_resources --base http://127.0.0.1:8080/fhir   # an already running server
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import httpx

from benchmarks.harness import describe, running_hestia

JSON = {"Content-Type": "application/fhir+json"}
FAMILIES = ["Smith", "Jones", "García", "Müller", "Nguyen", "Okafor", "Kowalski", "Dubois"]
GIVEN = ["Ana", "Ben", "Chloé", "Dmitri", "Eve", "Farah", "Goran", "Hana"]


def generated_patient(n: int, rng: random.Random) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:bench:mrn", "value": f"MRN{n:08d}"}],
        "active": True,
        "name": [{"family": rng.choice(FAMILIES), "given": [rng.choice(GIVEN)]}],
        "gender": rng.choice(["male", "female", "other", "unknown"]),
        "birthDate": f"{rng.randint(1930, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "address": [{"city": "Springfield", "postalCode": f"{rng.randint(10000, 99999)}"}],
    }


def generated_observation(n: int, patient_id: str, rng: random.Random) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T10:00:00Z",
        "valueQuantity": {
            "value": rng.randint(40, 160),
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


async def load(
    base: str, count: int, clients: int, headers: dict[str, str] | None = None
) -> list[str]:
    """Create `count` resources (one Patient, then its Observations, in turn); return the ids.
    `headers` go with every request (an Authorization header, say)."""
    rng = random.Random(7)
    created: list[str] = []
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60, headers=headers) as http:

        async def worker() -> None:
            patient_id = ""
            while not queue.empty():
                n = queue.get_nowait()
                if n % 5 == 0 or not patient_id:
                    body = generated_patient(n, rng)
                else:
                    body = generated_observation(n, patient_id, rng)
                started = time.perf_counter()
                response = await http.post(f"/{body['resourceType']}", json=body, headers=JSON)
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()
                rid = response.headers["location"].split("/")[-3]
                if body["resourceType"] == "Patient":
                    patient_id = rid
                created.append(f"{body['resourceType']}/{rid}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    print(describe(f"create ({clients} clients)", latencies, elapsed, "resources"))
    return created


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--base", help="FHIR base URL of a running server (default: start one)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.base:
        asyncio.run(load(args.base, args.count, args.clients))
        return
    with running_hestia(workers=args.workers) as base:
        asyncio.run(load(base, args.count, args.clients))


if __name__ == "__main__":
    main()
