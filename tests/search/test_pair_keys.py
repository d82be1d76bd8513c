"""Pair keys (fhir/search/pairs.py): a patient's resources with a code, from one index.

A search that uses them must return exactly what the same search returns without them, on
every form a patient or a code can be searched by; the database must serve them from the pair
index; and a store written before they existed must get them by the backfill
(store/pair_keys.py), with searches not relying on them until it is complete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from app.fhir.search.compile import compile_query
from app.fhir.search.execute import SearchEngine
from app.fhir.search.pairs import PAIR_FIELD, digest, pair_types, patient_is_subject
from app.fhir.search.parameters import registry
from app.fhir.search.parse import parse
from app.fhir.search.plan import split, with_pair_condition
from app.store.changes import ChangeFeed
from app.store.client import EmbeddedServer
from app.store.pair_keys import LACKING_THE_KEY, STATE, PairKeys
from app.store.versions import Store
from tests.conftest import hestia_status
from tests.search.conftest import (
    BASE,
    LOINC,
    SearchWorld,
    match_ids,
    new_world,
    parse_items,
    plan_stages,
)

JsonDict = dict[str, Any]
SNOMED = "http://snomed.info/sct"


def _obs(oid: str, subject: str, codings: list[JsonDict], date: str) -> JsonDict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": codings},
        "subject": {"reference": subject},
        "effectiveDateTime": date,
    }


def _loinc(code: str) -> JsonDict:
    return {"system": LOINC, "code": code}


RESOURCES: list[JsonDict] = [
    {"resourceType": "Patient", "id": "p1"},
    {"resourceType": "Patient", "id": "p2"},
    {"resourceType": "Group", "id": "p1", "type": "person", "actual": True},
    _obs("o1", "Patient/p1", [_loinc("2339-0")], "2021-03-01"),
    _obs("o2", "Patient/p1", [_loinc("2339-0")], "2023-05-01"),
    _obs("o3", "Patient/p1", [_loinc("4548-4")], "2023-06-01"),
    _obs("o4", "Patient/p2", [_loinc("2339-0")], "2023-07-01"),
    # Two codings: found by either code, and by the system alone.
    _obs("o5", "Patient/p2", [_loinc("4548-4"), {"system": SNOMED, "code": "43396009"}], "2022"),
    # A code without a system: `|code` and `code` find it, `system|code` does not.
    _obs("o6", "Patient/p1", [{"code": "2339-0"}], "2023-01-01"),
    # A Group with the same id as a patient: `patient=` never finds it, `subject=` does.
    _obs("o7", "Group/p1", [_loinc("2339-0")], "2023-02-01"),
    {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": SNOMED, "code": "44054006"}]},
    },
]

QUERIES = [
    ("Observation", "patient=p1&code=2339-0"),
    ("Observation", "patient=Patient/p1&code=http://loinc.org|2339-0"),
    ("Observation", "patient=p1&code=|2339-0"),
    ("Observation", "patient=p1&code=http://loinc.org|"),
    ("Observation", "patient=p1,p2&code=2339-0,4548-4"),
    ("Observation", "patient=p2&code=http://snomed.info/sct|43396009"),
    ("Observation", "patient=p1&code=2339-0&date=ge2023-01-01"),
    ("Observation", "patient=p1&code=2339-0&code=http://loinc.org|2339-0"),
    ("Observation", "patient:Patient=p1&code=2339-0"),
    ("Observation", "subject=p1&code=2339-0"),
    ("Observation", "subject=Patient/p1&code=2339-0"),
    ("Observation", "subject:Patient=p1&code=http://loinc.org|2339-0"),
    ("Observation", "subject=Group/p1&code=2339-0"),
    ("Observation", "subject=Patient/p1,Group/p1&code=2339-0"),
    ("Observation", "patient=p1&code:not=2339-0"),
    ("Observation", "patient.name=x&code=2339-0"),
    ("Observation", "patient=nobody&code=2339-0"),
    ("Condition", "patient=p1&code=44054006"),
    ("Condition", "patient=p2&code=44054006"),
]


@pytest.fixture(scope="module")
async def world(mongo: AsyncMongoClient[JsonDict]) -> SearchWorld:
    world = await new_world(mongo, ["Patient", "Group", "Observation", "Condition"])
    for resource in RESOURCES:
        await world.put(resource)
    return world


async def _ids(engine: SearchEngine, resource_type: str, query: str) -> list[str]:
    bundle = await engine.search(
        resource_type, parse_items(query), base_url=BASE, page_size=50, max_page_size=500
    )
    return match_ids(bundle)


def test_types_with_a_patient_and_a_code_have_pair_keys() -> None:
    assert {"Observation", "Condition", "Procedure", "MedicationRequest"} <= pair_types()
    assert "Patient" not in pair_types() and "Encounter" not in pair_types()


async def test_stored_pairs_are_every_patient_key_with_every_code_key(world: SearchWorld) -> None:
    doc = await world.store.current("Observation").find_one({"_id": "o5"})
    assert doc is not None
    keys = doc["s"]
    expected = {digest(p, c) for p in keys["patient"] for c in keys["code"]}
    assert set(keys["patient+code"]) == expected
    assert len(expected) == len(keys["patient"]) * len(keys["code"]) == 2 * 6


@pytest.mark.parametrize(("resource_type", "query"), QUERIES)
async def test_searches_find_the_same_with_and_without_pair_keys(
    world: SearchWorld, resource_type: str, query: str
) -> None:
    plain = SearchEngine(world.store, cursor_secret=b"test-secret")
    assert world.engine.pair_keys_ready(resource_type)
    assert await _ids(world.engine, resource_type, query) == await _ids(plain, resource_type, query)


async def test_the_expected_results(world: SearchWorld) -> None:
    """The equality above is only worth something if the plain searches are right."""
    engine = world.engine
    assert await _ids(engine, "Observation", "patient=p1&code=2339-0") == ["o1", "o2", "o6"]
    assert await _ids(engine, "Observation", "patient=p1&code=http://loinc.org|2339-0") == [
        "o1",
        "o2",
    ]
    assert await _ids(engine, "Observation", "patient=p2&code=43396009") == ["o5"]
    assert await _ids(engine, "Observation", "subject=p1&code=2339-0") == ["o1", "o2", "o6", "o7"]
    assert await _ids(engine, "Observation", "patient=p1&code=2339-0&date=ge2023-01-01") == [
        "o2",
        "o6",
    ]


def _flat(resource_type: str, query: str) -> JsonDict:
    parsed = parse(resource_type, parse_items(query), registry(), True)
    node = with_pair_condition(compile_query(parsed, now_ms=0), resource_type)
    selective = {PAIR_FIELD, "s.patient", "s.subject", "compartments", "s.identifier"}
    return split(node, tail={"deleted": False}, selective=selective).flat


def test_the_pair_condition_leads_the_filter_and_the_originals_stay() -> None:
    flat = _flat("Observation", "patient=p1&code=2339-0,4548-4&date=ge2023")
    assert next(iter(flat)) == PAIR_FIELD
    assert flat[PAIR_FIELD] == {"$in": sorted({digest("p1", "2339-0"), digest("p1", "4548-4")})}
    assert flat["s.patient"] == "p1"
    assert flat["s.code"] == {"$in": ["2339-0", "4548-4"]}
    assert "s.date:hi" in flat


def test_a_subject_naming_patients_is_a_patient() -> None:
    flat = _flat("Observation", "subject=Patient/p1&code=2339-0")
    assert next(iter(flat)) == PAIR_FIELD
    assert flat[PAIR_FIELD] == digest("Patient/p1", "2339-0")
    assert flat["s.subject"] == "Patient/p1"
    # A bare id or a Group may not be a patient.
    assert PAIR_FIELD not in _flat("Observation", "subject=p1&code=2339-0")
    assert PAIR_FIELD not in _flat("Observation", "subject=Patient/p1,Group/g&code=2339-0")
    # Where `patient` is not `subject` restricted to Patients, nothing is assumed.
    assert patient_is_subject("Observation") and patient_is_subject("Task")
    assert not patient_is_subject("AllergyIntolerance")


def test_no_pair_condition_without_equalities_on_both() -> None:
    for query in ("patient=p1", "code=2339-0", "patient=p1&code:not=2339-0", "code=x&subject=p1"):
        assert PAIR_FIELD not in _flat("Observation", query), query
    assert PAIR_FIELD not in _flat("Observation", "patient:missing=true&code=2339-0")


async def test_the_pair_index_serves_the_search(world: SearchWorld) -> None:
    flt = {PAIR_FIELD: digest("p1", "2339-0"), "deleted": False}
    plan = await world.store.current("Observation").find(flt).explain()
    assert ("IXSCAN", f"{PAIR_FIELD}+deleted+_id") in plan_stages(plan)


async def test_an_older_store_is_backfilled_and_used_only_once_complete(
    mongo: AsyncMongoClient[JsonDict],
) -> None:
    world = await new_world(mongo, ["Patient", "Group", "Observation", "Condition"])
    for resource in RESOURCES:
        await world.put(resource)
    # What a store written before pair keys looks like: no keys, no record of completion.
    for resource_type in ("Observation", "Condition"):
        await world.store.current(resource_type).update_many({}, {"$unset": {PAIR_FIELD: ""}})
    await world.store.db[STATE].delete_many({})

    opened = PairKeys(world.store)
    await opened.open(["Patient", "Group", "Observation", "Condition"], backfill=False)
    assert not opened.ready("Observation") and not opened.ready("Condition")
    engine = SearchEngine(world.store, cursor_secret=b"k", pair_keys_ready=opened.ready)
    # Not complete: the search does not rely on the missing keys.
    assert await _ids(engine, "Observation", "patient=p1&code=2339-0") == ["o1", "o2", "o6"]
    # An engine told they are complete does, and finds nothing: searches really read the key.
    trusting = SearchEngine(world.store, cursor_secret=b"k", pair_keys_ready=lambda _: True)
    assert await _ids(trusting, "Observation", "patient=p1&code=2339-0") == []

    backfill = PairKeys(world.store)
    await backfill.open(["Patient", "Group", "Observation", "Condition"])
    await backfill.wait()
    assert backfill.ready("Observation") and backfill.ready("Condition")
    # o1..o6 and c1; o7's subject is a Group, so it has no patient key and no pairs.
    assert backfill.backfilled == 7
    lacking = await world.store.current("Observation").count_documents(
        {"s.patient": {"$exists": True}, PAIR_FIELD: {"$exists": False}}
    )
    assert lacking == 0
    engine = SearchEngine(world.store, cursor_secret=b"k", pair_keys_ready=backfill.ready)
    for resource_type, query in QUERIES:
        plain = SearchEngine(world.store, cursor_secret=b"k")
        assert await _ids(engine, resource_type, query) == await _ids(plain, resource_type, query)

    # Recorded: the next start-up trusts the record and has nothing to do.
    again = PairKeys(world.store)
    await again.open(["Observation", "Condition"])
    assert again.ready("Observation") and again._task is None


# -- an older instance writing during a rolling upgrade ----------------------------------------


async def _following(
    mongo: AsyncMongoClient[JsonDict],
) -> tuple[SearchWorld, PairKeys, ChangeFeed]:
    """A store whose Observations all have their keys, and a server's PairKeys on its feed."""
    world = await new_world(mongo, ["Patient", "Group", "Observation", "Condition"])
    for resource in RESOURCES:
        await world.put(resource)
    keys = PairKeys(world.store)
    await keys.open(["Patient", "Group", "Observation", "Condition"])
    await keys.wait()
    feed = ChangeFeed(world.store.db, idle_pause=0.01)
    keys.follow(feed)
    assert not keys.ready("Observation")  # the feed is not running yet
    assert await feed.start()
    assert keys.ready("Observation") and keys.ready("Condition")
    return world, keys, feed


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_an_older_instances_write_stops_the_keys_use_until_backfilled(
    mongo: AsyncMongoClient[JsonDict],
) -> None:
    world, keys, feed = await _following(mongo)
    try:
        # What an instance without pair keys writes: the document of a new Observation of p1
        # with code 2339-0, everything but the key.
        written = await world.put(_obs("o-old", "Patient/p1", [_loinc("2339-0")], "2024-01-01"))
        current = world.store.current("Observation")
        document = await current.find_one({"_id": written["id"]})
        assert document is not None
        await current.delete_one({"_id": written["id"]})
        as_new_code_writes_it = document["s"].pop("patient+code")
        await current.insert_one(document)

        await _until(lambda: keys.stale_writes == 1)
        await keys.wait()
        assert keys.ready("Observation") and keys.ready("Condition")
        stored = await current.find_one({"_id": "o-old"}, {PAIR_FIELD: 1})
        assert stored is not None and stored["s"]["patient+code"] == as_new_code_writes_it
        engine = SearchEngine(world.store, cursor_secret=b"k", pair_keys_ready=keys.ready)
        found = await _ids(engine, "Observation", "patient=p1&code=2339-0")
        assert found == ["o-old", "o1", "o2", "o6"]
        # The record said "not complete" meanwhile, for instances starting then.
        state = await world.store.db[STATE].find_one({"_id": "Observation"})
        assert state is not None and state["stale_writes"] == 1 and state["complete"] is True
    finally:
        await feed.stop()


async def test_a_write_without_the_key_is_not_trusted_from_the_moment_it_is_seen(
    mongo: AsyncMongoClient[JsonDict],
) -> None:
    _, keys, feed = await _following(mongo)
    try:
        older = {"_id": "x", "s": {"patient": ["Patient/p9"], "code": [f"{LOINC}|1-8"]}}
        keys.on_change("Observation", "insert", "x", older)
        # At once, before the backfill has run: the search reads the patient or code index.
        assert not keys.ready("Observation") and keys.ready("Condition")
        await keys.wait()
        assert keys.ready("Observation")
        # Written with the key, or with nothing to pair, or of another type: nothing to do.
        newer = {"_id": "y", "s": {**older["s"], "patient+code": ["d"]}}
        keys.on_change("Observation", "replace", "y", newer)
        keys.on_change("Observation", "insert", "z", {"_id": "z", "s": {"code": ["c"]}})
        keys.on_change("Patient", "insert", "p", {"_id": "p", "s": older["s"]})
        assert keys.ready("Observation") and keys.stale_writes == 1
    finally:
        await feed.stop()


class CompletionRecords(monitoring.CommandListener):
    """Calls `hook` when the first update recording Observation complete is sent, and counts
    those updates."""

    def __init__(self) -> None:
        self.hook: Callable[[], None] | None = None
        self.sent = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name != "update" or event.command.get("update") != STATE:
            return
        for update in event.command.get("updates", []):
            complete = update.get("u", {}).get("$set", {}).get("complete")
            if update.get("q", {}).get("_id") == "Observation" and complete is True:
                self.sent += 1
                hook, self.hook = self.hook, None
                if hook is not None:
                    hook()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_write_without_the_key_seen_while_completion_is_recorded_wins(
    mongo: AsyncMongoClient[JsonDict], database: EmbeddedServer
) -> None:
    """The backfill records a type complete with a database write. A write without the key
    seen while that write is in flight must leave the type untrusted until the next pass."""
    world = await new_world(mongo, ["Patient", "Group", "Observation", "Condition"])
    for resource in RESOURCES:
        await world.put(resource)
    await world.store.current("Observation").update_many({}, {"$unset": {PAIR_FIELD: ""}})
    await world.store.db[STATE].delete_many({})
    records = CompletionRecords()
    client: AsyncMongoClient[JsonDict] = AsyncMongoClient(database.uri, event_listeners=[records])
    keys = PairKeys(Store(client[world.store.db.name]))
    older = {"_id": "x", "s": {"patient": ["Patient/p9"], "code": [f"{LOINC}|1-8"]}}
    records.hook = lambda: keys.on_change("Observation", "insert", "x", older)
    trusted_too_early = False

    async def watch() -> None:
        nonlocal trusted_too_early
        while records.sent < 2:
            trusted_too_early |= records.sent == 1 and keys.ready("Observation")
            await asyncio.sleep(0)

    try:
        watcher = asyncio.ensure_future(watch())
        await keys.open(["Patient", "Group", "Observation", "Condition"])
        await keys.wait()
        await asyncio.wait_for(watcher, 10)
    finally:
        await client.close()
    assert records.sent == 2 and keys.stale_writes == 1
    assert not trusted_too_early
    assert keys.ready("Observation")


async def test_the_keys_are_not_trusted_while_the_feed_is_down(
    mongo: AsyncMongoClient[JsonDict],
) -> None:
    world, keys, feed = await _following(mongo)
    try:
        await feed.stop()
        assert not keys.ready("Observation")
        # The check reads only what lacks the key, through the pair index. The embedded
        # server drives a filter by the index of its first indexed field (its explain of the
        # whole filter says COLLSCAN): that field is the key, and the index serves it alone.
        assert next(iter(LACKING_THE_KEY)) == PAIR_FIELD
        leading = {PAIR_FIELD: LACKING_THE_KEY[PAIR_FIELD]}
        plan = await world.store.current("Observation").find(leading).explain()
        assert ("IXSCAN", f"{PAIR_FIELD}+deleted+_id") in plan_stages(plan)
        # Written while nobody was watching: found by the check that follows the feed's return.
        current = world.store.current("Observation")
        before = await current.find_one({"_id": "o1"}, {PAIR_FIELD: 1})
        await current.update_one({"_id": "o1"}, {"$unset": {PAIR_FIELD: ""}})
        assert await feed.start()
        assert not keys.ready("Observation")
        await keys.wait()
        assert keys.ready("Observation") and keys.backfilled == 1
        assert await current.find_one({"_id": "o1"}, {PAIR_FIELD: 1}) == before
    finally:
        await feed.stop()


async def test_hestia_status_names_the_types_whose_keys_are_not_used_yet(
    mongo: AsyncMongoClient[JsonDict], database: EmbeddedServer, tmp_path: Path
) -> None:
    world = await new_world(mongo, ["Patient", "Group", "Observation", "Condition"])
    for resource in RESOURCES:
        await world.put(resource)
    state = world.store.db[STATE]
    await state.update_one({"_id": "Observation"}, {"$set": {"complete": False}})
    await state.update_one({"_id": "Condition"}, {"$set": {"complete": False, "stale_writes": 2}})

    async def status() -> str:
        return await hestia_status(database.uri, tmp_path, world.store.db.name)

    printed = await status()
    assert "pair keys of Observation: not used yet (backfill not complete;" in printed
    assert "pair keys of Condition: not used yet (2 write(s) by an older version seen;" in printed
    keys = PairKeys(world.store)
    await keys.open(["Patient", "Group", "Observation", "Condition"])
    await keys.wait()
    assert "pair keys" not in await status()
