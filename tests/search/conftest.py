"""Executor fixtures: a store on the session's embedded database, one database per module.

Resources are written through `Interactions`, the real write path, so their index keys and
compartments are exactly what production stores.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from app.fhir.interactions import Interactions
from app.fhir.search.execute import SearchEngine
from app.store.client import EmbeddedServer
from app.store.indexes import ensure_search_indexes
from app.store.pair_keys import PairKeys
from app.store.versions import Store

JsonDict = dict[str, Any]
BASE = "http://test.example/fhir"


@dataclass
class SearchWorld:
    store: Store
    engine: SearchEngine
    interactions: Interactions

    async def put(self, resource: JsonDict) -> JsonDict:
        result = await self.interactions.update(resource["resourceType"], resource["id"], resource)
        assert result.version is not None and result.version.resource is not None
        return result.version.resource

    async def search(
        self, resource_type: str | None, query: str | list[tuple[str, str]], **options: Any
    ) -> JsonDict:
        items = parse_items(query) if isinstance(query, str) else query
        options.setdefault("base_url", BASE)
        options.setdefault("page_size", 50)
        options.setdefault("max_page_size", 500)
        return await self.engine.search(resource_type, items, **options)

    async def ids(self, resource_type: str | None, query: str, **options: Any) -> list[str]:
        """Ids of the match entries ('Type/id' for system and multi-type searches)."""
        bundle = await self.search(resource_type, query, **options)
        return match_ids(bundle, typed=resource_type is None)


def plan_stages(plan: JsonDict) -> list[tuple[str | None, str | None]]:
    """(stage, index name) of every stage of an explain's winning plan, outermost first."""
    stages = []
    stage = plan["queryPlanner"]["winningPlan"]
    while stage:
        stages.append((stage.get("stage"), stage.get("indexName")))
        stage = stage.get("inputStage")
    return stages


def parse_items(query: str) -> list[tuple[str, str]]:
    """Query string → pairs; values are taken literally (tests write them already decoded)."""
    items: list[tuple[str, str]] = []
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            items.append((name, value))
    return items


def match_ids(bundle: JsonDict, *, typed: bool = False) -> list[str]:
    out = []
    for entry in bundle.get("entry", []):
        if entry["search"]["mode"] == "match":
            resource = entry["resource"]
            out.append(f"{resource['resourceType']}/{resource['id']}" if typed else resource["id"])
    return out


def entries(bundle: JsonDict, mode: str) -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    ]


@pytest.fixture(scope="session")
async def mongo(database: EmbeddedServer) -> AsyncIterator[AsyncMongoClient[JsonDict]]:
    client: AsyncMongoClient[JsonDict] = AsyncMongoClient(database.uri, tz_aware=True, tzinfo=UTC)
    yield client
    await client.close()


async def new_world(mongo: AsyncMongoClient[JsonDict], types: list[str]) -> SearchWorld:
    store = Store(mongo[f"search_{uuid.uuid4().hex[:12]}"])
    await ensure_search_indexes(store, types)
    pair_keys = PairKeys(store)
    await pair_keys.open(types)  # a new database: every pair type is complete at once
    engine = SearchEngine(store, cursor_secret=b"test-secret", pair_keys_ready=pair_keys.ready)
    return SearchWorld(store, engine, Interactions(store, engine.match_ids))


UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def _obs(oid: str, subject: str | None, code: str, **extra: Any) -> JsonDict:
    coding: JsonDict = {"system": LOINC, "code": code}
    display = extra.pop("display", None)
    if display:
        coding["display"] = display
    resource: JsonDict = {
        "resourceType": "Observation",
        "id": oid,
        "status": extra.pop("status", "final"),
        "code": {"coding": [coding]},
    }
    if subject:
        resource["subject"] = {"reference": subject}
    category = extra.pop("category", None)
    if category:
        resource["category"] = [{"coding": [{"system": CATEGORY, "code": category}]}]
    resource.update(extra)
    return resource


def _qty(value: float, code: str) -> JsonDict:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


CLINIC: list[JsonDict] = [
    {
        "resourceType": "Organization",
        "id": "org-acme",
        "name": "Acme Health",
        "identifier": [{"system": "http://npi", "value": "111"}],
    },
    {"resourceType": "Organization", "id": "org-beta", "name": "Beta Clinic"},
    {
        "resourceType": "Practitioner",
        "id": "pr-1",
        "name": [{"family": "House", "given": ["Gregory"]}],
    },
    {
        "resourceType": "Patient",
        "id": "pat-smith",
        "active": True,
        "gender": "male",
        "birthDate": "1970-05-01",
        "name": [{"family": "Smith", "given": ["John"]}],
        "managingOrganization": {"reference": "Organization/org-acme"},
        "generalPractitioner": [{"reference": "Practitioner/pr-1"}],
        "identifier": [
            {
                "system": "http://hosp/mrn",
                "value": "MRN1",
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ]
                },
            }
        ],
        "telecom": [{"system": "phone", "value": "555-0100"}],
        "meta": {
            "tag": [{"system": "http://tags", "code": "vip"}],
            "profile": ["http://example.org/fhir/StructureDefinition/patient-a"],
            "security": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
            ],
            "source": "http://source.example/ehr1",
        },
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">John Smith, heart patient</div>',
        },
    },
    {
        "resourceType": "Patient",
        "id": "pat-smythe",
        "gender": "female",
        "birthDate": "1985-03-02",
        "name": [{"family": "Smythe", "given": ["Émile"]}],
        "managingOrganization": {"reference": "Organization/org-acme"},
    },
    {
        "resourceType": "Patient",
        "id": "pat-jones",
        "gender": "female",
        "birthDate": "1990-12-24",
        "name": [{"family": "Jones", "given": ["Mary"]}],
        "managingOrganization": {"reference": "Organization/org-beta"},
    },
    {
        "resourceType": "Patient",
        "id": "pat-regex",
        "gender": "other",
        "birthDate": "2001-01-01",
        "name": [{"family": "a.*b(c", "given": ["x|y,z"]}],
    },
    {"resourceType": "Patient", "id": "pat-nobirth", "name": [{"family": "Nobody"}]},
    {
        "resourceType": "Encounter",
        "id": "enc-1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/pat-smith"},
        "period": {"start": "2013-01-14T09:00:00Z", "end": "2013-01-14T11:00:00Z"},
    },
    {
        "resourceType": "Encounter",
        "id": "enc-2",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/pat-jones"},
    },
    _obs(
        "obs-glucose-1",
        "Patient/pat-smith",
        "2339-0",
        display="Glucose",
        category="laboratory",
        effectiveDateTime="2013-01-14T10:00:00Z",
        valueQuantity=_qty(100, "mg/dL"),
        encounter={"reference": "Encounter/enc-1"},
        performer=[{"reference": "Practitioner/pr-1"}],
    ),
    _obs(
        "obs-glucose-2",
        "Patient/pat-smith",
        "2339-0",
        display="Glucose",
        category="laboratory",
        effectiveDateTime="2014-06-01",
        valueQuantity=_qty(1.2, "g/L"),
    ),
    _obs(
        "obs-glucose-3",
        "Patient/pat-jones",
        "2339-0",
        display="Glucose",
        category="laboratory",
        effectivePeriod={"start": "2012-12-20", "end": "2013-02-01"},
        valueQuantity=_qty(90, "mg/dL"),
        encounter={"reference": "Encounter/enc-2"},
    ),
    _obs(
        "obs-bp",
        "Patient/pat-smith",
        "85354-9",
        display="Blood pressure panel",
        category="vital-signs",
        effectiveDateTime="2013-01-14",
        component=[
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": _qty(120, "mm[Hg]"),
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": _qty(80, "mm[Hg]"),
            },
        ],
    ),
    _obs(
        "obs-weight",
        "Patient/pat-smythe",
        "29463-7",
        display="Body weight",
        category="vital-signs",
        status="preliminary",
        effectiveDateTime="2013",
        valueQuantity=_qty(70, "kg"),
    ),
    _obs(
        "obs-a1c",
        "Patient/pat-jones",
        "4548-4",
        display="Hemoglobin A1c",
        effectiveDateTime="2013-01-15T00:00:00Z",
        valueString="high",
    ),
    _obs("obs-orphan", None, "2339-0", display="Glucose", effectiveDateTime="2015-02-02"),
    _obs(
        "obs-abs",
        "http://other.example/fhir/Patient/ext-9",
        "2339-0",
        effectiveDateTime="2016-01-01",
    ),
    {
        **_obs("obs-ident", None, "2339-0", effectiveDateTime="2016-02-01"),
        "subject": {"identifier": {"system": "http://hosp/mrn", "value": "MRN1"}},
    },
    {
        "resourceType": "Condition",
        "id": "cond-1",
        "subject": {"reference": "Patient/pat-smith"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        "onsetDateTime": "2010-03-01",
    },
    {
        "resourceType": "Condition",
        "id": "cond-2",
        "subject": {"reference": "Patient/pat-jones"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
    },
    {
        "resourceType": "List",
        "id": "list-1",
        "status": "current",
        "mode": "working",
        "entry": [
            {"item": {"reference": "Patient/pat-smith"}},
            {"item": {"reference": "Patient/pat-jones"}},
        ],
    },
    {
        "resourceType": "ValueSet",
        "id": "vs-1",
        "status": "active",
        "url": "http://example.org/fhir/ValueSet/labs/glucose",
    },
    {
        "resourceType": "ValueSet",
        "id": "vs-2",
        "status": "active",
        "url": "http://example.org/fhir/ValueSet/vitals",
    },
]
CLINIC_TYPES = sorted({r["resourceType"] for r in CLINIC})


@pytest.fixture(scope="module")
async def clinic(mongo: AsyncMongoClient[JsonDict]) -> SearchWorld:
    world = await new_world(mongo, CLINIC_TYPES)
    for resource in CLINIC:
        await world.put(resource)
    return world
