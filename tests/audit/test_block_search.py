"""Auditors' searches answered from the block index (app/audit/search.py): exact per event,
though the database picks whole blocks, in the order asked for, page after page.

Expected answers are computed here from the journaled events themselves, not from the index.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from app.audit.block_index import event_keys
from app.audit.chain import BLOCK_INDEX, GENESIS, JOURNAL, PATIENT_INDEX, link, search_keys
from app.audit.events import AuditFacts, AuditSource, build_events, event_patients
from app.audit.journal import block_of
from app.audit.log import AuditLog
from app.audit.projection import AuditIndex
from app.audit.search import AuditSearchEngine, block_filter
from app.audit.verify import verify_chain
from app.store.versions import Store
from tests.audit.conftest import Db, index_all, stored

SOURCE = AuditSource("hestia-test")
BASE = "http://hestia.test/fhir"
PATIENTS = [f"p{n}" for n in range(6)]


def access(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Varied accesses: reads, searches over several patients, failures, users, tokens."""
    kind = rng.choice(["read", "search-type", "create", "token", "ingest"])
    status = rng.choice([200, 200, 201, 401, 403, 404, 500])
    patients = rng.sample(PATIENTS, rng.randint(0, 3))
    facts = AuditFacts(
        kind,
        resource_type=None if kind in ("token", "ingest") else "Observation",
        resource_id=None if kind != "read" else f"o{n}",
        version_id="1" if kind == "read" else None,
        patients=[f"Patient/{p}" for p in patients],
        query="code=1234" if kind == "search-type" else None,
        client_id=rng.choice([None, "app-a", "app-b"]),
        fhir_user=rng.choice([None, "Practitioner/d1"]),
        jti=rng.choice([None, f"jti-{n}"]),
        peer=rng.choice(["10.0.0.1", "10.0.0.2", "host.example"]),
        status=status,
        details=[("message", f"m{n}")] if kind == "ingest" else [],
    )
    return build_events(facts, SOURCE)


async def append_varied(log: AuditLog, count: int, seed: int = 3) -> None:
    """`count` accesses, some at once (so blocks hold several events), some one by one."""
    rng = random.Random(seed)
    n = 0
    while n < count:
        group = min(rng.choice([1, 1, 5, 12]), count - n)
        await asyncio.gather(*(log.append_all(access(n + i, rng)) for i in range(group)))
        n += group


def engine(db: Db) -> AuditSearchEngine:
    return AuditSearchEngine(
        Store(db),
        AuditIndex(db),
    )


async def search_all(db: Db, items: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every page of a search, following its next links."""
    found: list[dict[str, Any]] = []
    search = engine(db)
    await index_all(db)  # as the API does before an auditor's search
    while True:
        bundle = await search.search(
            "AuditEvent", items, base_url=BASE, page_size=50, max_page_size=500, strict=True
        )
        found += [entry["resource"] for entry in bundle.get("entry", [])]
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            return found
        items = parse_qsl(urlsplit(following[0]).query)


def names(event: dict[str, Any], patient: str) -> bool:
    return f"Patient/{patient}" in event_patients(event)


@pytest.fixture
async def log(audit_db: Db) -> Any:
    log = AuditLog(window=0)
    await log.start(audit_db)
    yield log
    await log.stop()


async def test_event_keys_element_by_element_equal_the_whole_events() -> None:
    rng = random.Random(11)
    for n in range(200):
        for event in access(n, rng):
            resource = {**event, "id": str(n)}
            assert event_keys(resource) == {
                k: list(dict.fromkeys(v)) for k, v in search_keys(resource).items()
            }


@pytest.mark.parametrize("patient_index", [False, True], ids=["windows", "patient index"])
async def test_a_patients_events_are_found_exactly_among_blocks_of_many(
    audit_db: Db, patient_index: bool
) -> None:
    log = AuditLog(window=0, search_indexes=patient_index)
    await log.start(audit_db)
    await append_varied(log, 120)
    await log.stop()
    indexes = [index["name"] async for index in await audit_db[BLOCK_INDEX].list_indexes()]
    assert (PATIENT_INDEX in indexes) == patient_index
    events = [e["resource"] for e in await stored(audit_db)]
    blocks = await audit_db[JOURNAL].count_documents({})
    assert blocks < len(events)  # several events share blocks
    for patient in PATIENTS:
        found = await search_all(audit_db, [("patient", f"Patient/{patient}"), ("_count", "7")])
        expected = [e["id"] for e in events if names(e, patient)]
        assert [e["id"] for e in found] == expected
        assert expected
        newest_first = await search_all(
            audit_db, [("patient", f"Patient/{patient}"), ("_sort", "-date"), ("_count", "4")]
        )
        assert [e["id"] for e in newest_first] == expected[::-1]
    both = await search_all(audit_db, [("patient", "Patient/p1,Patient/p2"), ("_count", "5")])
    assert [e["id"] for e in both] == [e["id"] for e in events if names(e, "p1") or names(e, "p2")]


async def test_negations_and_several_parameters_are_matched_per_event(
    log: AuditLog, audit_db: Db
) -> None:
    await append_varied(log, 120, seed=5)
    events = [e["resource"] for e in await stored(audit_db)]
    found = await search_all(audit_db, [("patient", "Patient/p2"), ("outcome:not", "0")])
    expected = [e["id"] for e in events if names(e, "p2") and e["outcome"] != "0"]
    assert [e["id"] for e in found] == expected and expected
    found = await search_all(audit_db, [("subtype", "read"), ("address", "10.0.0.2")])
    expected = [
        e["id"]
        for e in events
        if e["subtype"][0]["code"] == "read"
        and any(a.get("network", {}).get("address") == "10.0.0.2" for a in e["agent"])
    ]
    assert [e["id"] for e in found] == expected and expected


async def test_date_ranges_and_both_date_orders_page_through_every_match(
    log: AuditLog, audit_db: Db
) -> None:
    await append_varied(log, 90, seed=7)
    events = [e["resource"] for e in await stored(audit_db)]
    middle = events[len(events) // 3]["recorded"]
    since = [e for e in events if e["recorded"] >= middle]
    newest_first = sorted(since, key=lambda e: (e["recorded"], int(e["id"])), reverse=True)
    found = await search_all(
        audit_db, [("date", f"ge{middle}"), ("_sort", "-date"), ("_count", "4")]
    )
    assert [e["id"] for e in found] == [e["id"] for e in newest_first]
    oldest_first = sorted(events, key=lambda e: (e["recorded"], int(e["id"])))
    found = await search_all(audit_db, [("_sort", "date"), ("_count", "9")])
    assert [e["id"] for e in found] == [e["id"] for e in oldest_first]


async def test_events_stamped_out_of_order_before_are_still_sorted_by_date(audit_db: Db) -> None:
    """A journal written before the writer kept `recorded` in chain order: blocks whose events
    were stamped a few milliseconds apart the other way round."""
    log = AuditLog(window=0)
    await log.start(audit_db)
    await log.stop()  # the journal's indexes
    now = datetime.now(UTC).replace(microsecond=0)
    rng = random.Random(2)
    head, head_hash = 0, GENESIS
    for _ in range(12):
        events = []
        for _ in range(rng.randint(1, 4)):
            when = now + timedelta(milliseconds=rng.randint(0, 40))
            facts = AuditFacts("read", resource_type="Patient", resource_id="p1", status=200)
            facts.recorded = when
            events += build_events(facts, SOURCE)
        documents = link(events, head, head_hash, batch="b", writer="old")
        await audit_db[JOURNAL].insert_one(block_of(documents))
        head, head_hash = int(documents[-1]["_id"]), documents[-1]["hash"]
    assert await index_all(audit_db) == head
    newest = await audit_db[BLOCK_INDEX].find_one({"last": head})
    assert newest is not None and newest["run"] > 1  # the index knows they are out of order
    events = [e["resource"] for e in await stored(audit_db)]
    newest_first = sorted(events, key=lambda e: (e["recorded"], int(e["id"])), reverse=True)
    assert newest_first != list(reversed(events))  # out of chain order indeed
    found = await search_all(audit_db, [("_sort", "-date"), ("_count", "5")])
    assert [e["id"] for e in found] == [e["id"] for e in newest_first]
    assert (await verify_chain(audit_db)).ok


async def test_catching_up_indexes_every_block_past_the_end_of_a_pass(
    log: AuditLog, audit_db: Db
) -> None:
    # Blocks of 7 events: the block of events 1499..1505 straddles the end of the first pass
    # (1,500 events), which must not end the catching up.
    rng = random.Random(1)
    for start in range(0, 2_100, 7):
        await log.append_all([e for n in range(start, start + 7) for e in access(n, rng)][:7])
    head = len(await stored(audit_db))
    assert head == 2_100
    assert await AuditIndex(audit_db).catch_up() == head
    assert await AuditIndex(audit_db).watermark() == head


async def test_total_and_count_only(log: AuditLog, audit_db: Db) -> None:
    await append_varied(log, 60, seed=9)
    events = [e["resource"] for e in await stored(audit_db)]
    expected = sum(1 for e in events if names(e, "p4"))
    await index_all(audit_db)
    bundle = await engine(audit_db).search(
        "AuditEvent",
        [("patient", "Patient/p4"), ("_summary", "count")],
        base_url=BASE,
        page_size=50,
        max_page_size=500,
    )
    assert bundle["total"] == expected and "entry" not in bundle


async def test_the_writer_records_no_event_before_the_one_it_follows(
    log: AuditLog, audit_db: Db
) -> None:
    later = datetime.now(UTC)
    for when in (later, later - timedelta(seconds=30), later + timedelta(milliseconds=5)):
        facts = AuditFacts("read", resource_type="Patient", resource_id="p1", status=200)
        facts.recorded = when
        await log.append_all(build_events(facts, SOURCE))
    events = await stored(audit_db)
    recorded = [e["recorded"] for e in events]
    assert recorded == sorted(recorded)
    assert recorded[1] == recorded[0]  # stamped 30 s earlier, recorded with its predecessor
    assert [e["resource"]["recorded"] for e in events][:2] == [
        events[0]["resource"]["recorded"]
    ] * 2
    assert (await verify_chain(audit_db)).ok


def test_blocks_are_picked_by_positive_conditions_only() -> None:
    flat = {
        "s.patient": "Patient/p1",
        "s.outcome": {"$nin": ["0"]},
        "s.date:lo": {"$gte": 5, "$ne": 7},
        "_id": {"$in": ["00000000000000000001"]},
        "deleted": False,
    }
    assert block_filter(flat) == {"s.patient": "Patient/p1", "s.date:lo": {"$gte": 5}}
    assert block_filter({"s.patient": {"$in": []}}) is None
