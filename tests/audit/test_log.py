"""The hash-chained log on the real database: group commit, ordering, tamper detection, outage."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import zlib
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import httpx
import orjson
import pytest
from bson import Binary
from pymongo import AsyncMongoClient

from app.api.audit_events import index_for_auditors
from app.audit import journal
from app.audit.block_index import indexed_events
from app.audit.chain import BLOCK_INDEX, GENESIS, JOURNAL, digest, link, seq_key
from app.audit.events import AuditFacts, AuditSource, build_events
from app.audit.journal import (
    MAX_BLOCK_EVENTS,
    block_of,
    events_of,
    inflated,
    packed,
    stored_events,
)
from app.audit.log import AuditLog, AuditUnavailable
from app.audit.projection import AuditIndex
from app.audit.verify import verify_chain
from app.fhir.outcome import FhirError
from app.store.client import EmbeddedServer, free_port
from tests.audit.app_under_test import build_app
from tests.audit.conftest import (
    Db,
    index_all,
    index_documents,
    stored,
    tamper_index,
    tamper_journal,
)

SOURCE = AuditSource("hestia-test")


def one_event(n: int) -> dict[str, Any]:
    [event] = build_events(
        AuditFacts("read", resource_type="Patient", resource_id=f"p{n}", status=200), SOURCE
    )
    return event


async def append_many(log: AuditLog, count: int, start: int = 0) -> list[int]:
    results = await asyncio.gather(*(log.append(one_event(start + n)) for n in range(count)))
    return list(results)


async def test_stored_documents_form_a_sha256_chain_from_genesis(
    audit_log: AuditLog, audit_db: Db
) -> None:
    for n in range(3):
        await audit_log.append(one_event(n))
    docs = await stored(audit_db)
    assert [int(d["_id"]) for d in docs] == [1, 2, 3]
    assert docs[0]["prev"] == GENESIS
    for before, after in itertools.pairwise(docs):
        assert after["prev"] == before["hash"]
    for doc in docs:
        # Independently: SHA-256 of the sorted-key JSON of everything but the hash itself.
        body = {k: v for k, v in doc.items() if k != "hash"}
        body["recorded"] = doc["recorded"].strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        body["written"] = doc["written"].strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        expected = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        assert doc["hash"] == expected


async def test_concurrent_appends_share_insert_batches(audit_db: Db) -> None:
    log = AuditLog(window=0.005)
    await log.start(audit_db)
    try:
        seqs = await append_many(log, 60)
    finally:
        await log.stop()
    docs = await stored(audit_db)
    assert sorted(seqs) == list(range(1, 61))
    batches = {d["batch"] for d in docs}
    # 60 events written by far fewer insert_many calls: each batch id is one insert.
    assert len(batches) <= 10
    assert (await verify_chain(audit_db)).ok


async def test_sequential_appends_each_get_their_own_batch(
    audit_log: AuditLog, audit_db: Db
) -> None:
    for n in range(4):
        await audit_log.append(one_event(n))
    assert len({d["batch"] for d in await stored(audit_db)}) == 4


async def test_concurrent_http_requests_are_group_committed(
    http: httpx.AsyncClient, audit_db: Db
) -> None:
    responses = await asyncio.gather(*(http.get(f"/fhir/Patient/p{n}") for n in range(40)))
    assert all(r.status_code == 200 for r in responses)
    docs = await stored(audit_db)
    assert len(docs) == 40
    assert len({d["batch"] for d in docs}) < 20


@contextlib.asynccontextmanager
async def writers(
    database: EmbeddedServer, audit_db: Db, count: int, window: float
) -> AsyncIterator[list[AuditLog]]:
    """`count` writers, each with its own client: app processes appending to one chain."""
    clients = [
        AsyncMongoClient[dict[str, Any]](database.uri, tz_aware=True, tzinfo=UTC)
        for _ in range(count)
    ]
    logs = [AuditLog(window=window) for _ in clients]
    try:
        for log, client in zip(logs, clients, strict=True):
            await log.start(client[audit_db.name])
        yield logs
    finally:
        for log in logs:
            await log.stop()
        for client in clients:
            await client.close()


async def test_two_writers_on_separate_connections_keep_one_total_order(
    database: EmbeddedServer, audit_db: Db
) -> None:
    # Two writers with their own clients stand for two app processes behind a load balancer.
    async with writers(database, audit_db, 2, window=0.001) as logs:
        for round_ in range(5):
            await asyncio.gather(
                append_many(logs[0], 20, 1000 * round_), append_many(logs[1], 20, 500 + round_)
            )
    docs = await stored(audit_db)
    assert [int(d["_id"]) for d in docs] == list(range(1, 201))
    assert {d["writer"] for d in docs} == {logs[0].writer_id, logs[1].writer_id}
    report = await verify_chain(audit_db)
    assert report.ok, report.summary()
    assert report.checked == 200


async def test_four_contended_writers_all_append_in_one_total_order(
    database: EmbeddedServer, audit_db: Db
) -> None:
    # Four app processes, each with 16 requests waiting, race for every next seq; the losers
    # re-read the head and retry (spread out, see AuditLog._insert_block) until they land.
    async with writers(database, audit_db, 4, window=0) as logs:
        for round_ in range(4):
            await asyncio.gather(
                *(append_many(log, 16, 1000 * n + 100 * round_) for n, log in enumerate(logs))
            )
    docs = await stored(audit_db)
    assert [int(d["_id"]) for d in docs] == list(range(1, 257))
    assert sum(log.stats.conflicts for log in logs) > 0  # they did race
    report = await verify_chain(audit_db)
    assert report.ok, report.summary()


async def test_a_writer_behind_the_head_rechains_after_the_other_writer(
    database: EmbeddedServer, audit_db: Db
) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        database.uri, tz_aware=True, tzinfo=UTC
    )
    first, second = AuditLog(window=0), AuditLog(window=0)
    await first.start(audit_db)
    await second.start(client[audit_db.name])
    try:
        assert await first.append(one_event(1)) == 1
        assert await second.append(one_event(2)) == 2
        # `first` still believes seq 1 is the head: its insert of seq 2 collides, then re-chains.
        assert await first.append(one_event(3)) == 3
    finally:
        await first.stop()
        await second.stop()
        await client.close()
    assert first.stats.conflicts == 1
    assert (await verify_chain(audit_db)).ok


async def test_verify_reports_ok_with_the_head(audit_log: AuditLog, audit_db: Db) -> None:
    await append_many(audit_log, 5)
    report = await verify_chain(audit_db)
    docs = await stored(audit_db)
    assert report.ok
    assert (report.first_seq, report.last_seq, report.checked) == (1, 5, 5)
    assert report.head_hash == docs[-1]["hash"]


async def _chain_of(log: AuditLog, count: int) -> None:
    for n in range(count):
        await log.append(one_event(n))


async def test_modified_event_is_the_first_broken_link(audit_log: AuditLog, audit_db: Db) -> None:
    await _chain_of(audit_log, 6)

    def rewrite(event: dict[str, Any]) -> None:
        event["resource"]["outcome"], event["resource"]["action"] = "0", "U"

    await tamper_journal(audit_db, 4, rewrite)
    report = await verify_chain(audit_db)
    assert not report.ok
    assert report.broken_seq == 4
    assert "modified" in (report.reason or "")


async def test_modified_event_with_recomputed_hash_breaks_the_next_link(
    audit_log: AuditLog, audit_db: Db
) -> None:
    await _chain_of(audit_log, 6)
    block = await audit_db[JOURNAL].find_one({"_id": seq_key(3)})
    assert block is not None and block["last"] == 3
    # The intruder rewrites event 3 and recomputes its hash, and the block's, consistently.
    [event] = events_of(block)
    event["resource"]["agent"][0]["who"] = {"display": "someone else"}
    event["hash"] = digest(event)
    [stored] = stored_events(block)
    stored.update(resource=event["resource"], hash=event["hash"])
    block["events"] = packed([stored])
    block["hash"] = event["hash"]
    await audit_db[JOURNAL].replace_one({"_id": block["_id"]}, block)
    report = await verify_chain(audit_db)
    assert not report.ok
    assert report.broken_seq == 4
    assert "prev hash" in (report.reason or "")


@pytest.mark.parametrize(
    "damage",
    [
        Binary(b"[{not json"),
        Binary(b'{"a": 1}'),
        {"not": "a list"},
        [1, 2],
        Binary(zlib.compress(b"[{not json")),
        Binary(zlib.compress(b'[{"_id": "1"}]')[:-6]),  # the stream cut short
        Binary(zlib.compress(b'[{"_id": "1"}]') + b"more"),  # bytes after the stream
        Binary(b"x\x9cnot a zlib stream"),
    ],
)
async def test_a_block_whose_events_cannot_be_decoded_is_reported(
    audit_log: AuditLog, audit_db: Db, damage: Any
) -> None:
    await _chain_of(audit_log, 4)
    await audit_db[JOURNAL].update_one({"_id": seq_key(3)}, {"$set": {"events": damage}})
    report = await verify_chain(audit_db)
    assert not report.ok
    assert report.broken_seq == 3
    assert "cannot be read" in (report.reason or "")


async def test_auditors_get_an_outcome_naming_the_damage_not_a_partial_answer(
    audit_log: AuditLog, audit_db: Db
) -> None:
    await _chain_of(audit_log, 2)
    await audit_db[JOURNAL].update_one(
        {"_id": seq_key(2)}, {"$set": {"events": Binary(b"[{not json")}}
    )
    with pytest.raises(FhirError) as refused:
        await index_for_auditors(AuditIndex(audit_db))
    assert refused.value.status == 500
    assert refused.value.code == "exception"
    assert "hestia audit verify" in refused.value.diagnostics


async def test_blocks_store_their_events_compressed(audit_log: AuditLog, audit_db: Db) -> None:
    # One append of 8 events is one block: what it stores is a zlib stream of their JSON.
    await audit_log.append_all([one_event(n) for n in range(8)])
    [block] = [block async for block in audit_db[JOURNAL].find({})]
    raw = bytes(block["events"])
    text = zlib.decompress(raw)
    assert text[:1] == b"[" and raw[:1] != b"["
    assert [event["_id"] for event in orjson.loads(text)] == [seq_key(n) for n in range(1, 9)]
    assert len(raw) * 5 < len(text)


async def test_a_block_inflating_past_the_limit_is_unreadable(
    audit_log: AuditLog, audit_db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    await append_many(audit_log, 4)
    monkeypatch.setattr(journal, "MAX_EVENTS_BYTES", 200)
    report = await verify_chain(audit_db)
    assert (report.ok, report.broken_seq) == (False, 1)
    assert "cannot be read" in (report.reason or "")


async def test_index_documents_written_uncompressed_still_verify_and_are_read(
    audit_log: AuditLog, audit_db: Db
) -> None:
    await append_many(audit_log, 12)
    assert await index_all(audit_db) == 12
    async for document in audit_db[BLOCK_INDEX].find({}):
        plain = Binary(zlib.decompress(document["events"]))
        await audit_db[BLOCK_INDEX].update_one(
            {"_id": document["_id"]}, {"$set": {"events": plain}}
        )
    report = await verify_chain(audit_db)
    assert report.ok and report.checked == 12
    entries = [e for d in await index_documents(audit_db) for e in indexed_events(d)]
    assert [e.seq for e in entries] == list(range(1, 13))


def _nested(block: dict[str, Any], documents: list[dict[str, Any]]) -> Any:
    # Before events were packed into one value.
    return [
        {k: v for k, v in d.items() if k not in ("batch", "writer", "written")} for d in documents
    ]


def _uncompressed(block: dict[str, Any], documents: list[dict[str, Any]]) -> Any:
    # Before packed events were compressed: their JSON as it is.
    return Binary(zlib.decompress(block["events"]))


@pytest.mark.parametrize("older_format", [_nested, _uncompressed])
async def test_blocks_written_in_older_formats_still_verify_and_index(
    audit_db: Db, older_format: Any
) -> None:
    # A chain written by an older version must still verify, and be read by the search index
    # and by new writers.
    documents = link([one_event(n) for n in range(3)], 0, GENESIS, batch="old:1", writer="old")
    block = block_of(documents)
    block["events"] = older_format(block, documents)
    await audit_db[JOURNAL].insert_one(block)
    log = AuditLog()
    await log.start(audit_db)
    try:
        assert await log.append(one_event(9)) == 4
    finally:
        await log.stop()
    report = await verify_chain(audit_db)
    assert report.ok and report.checked == 4
    assert await index_all(audit_db) == 4


async def test_deleted_event_is_reported(audit_log: AuditLog, audit_db: Db) -> None:
    await _chain_of(audit_log, 6)
    await audit_db[JOURNAL].delete_one({"_id": seq_key(2)})
    report = await verify_chain(audit_db)
    assert not report.ok
    assert report.broken_seq == 2
    assert "missing" in (report.reason or "")


async def test_reordered_events_are_reported(audit_log: AuditLog, audit_db: Db) -> None:
    await _chain_of(audit_log, 6)
    journal = audit_db[JOURNAL]
    third, fourth = (
        await journal.find_one({"_id": seq_key(3)}),
        await journal.find_one({"_id": seq_key(4)}),
    )
    assert third is not None and fourth is not None
    await journal.replace_one({"_id": seq_key(3)}, {k: v for k, v in fourth.items() if k != "_id"})
    await journal.replace_one({"_id": seq_key(4)}, {k: v for k, v in third.items() if k != "_id"})
    report = await verify_chain(audit_db)
    assert not report.ok
    assert report.broken_seq == 3


# The search index is what auditors query: changing it would hide or invent accesses.


async def test_search_index_holds_every_journaled_event_with_its_hash(
    audit_log: AuditLog, audit_db: Db
) -> None:
    await append_many(audit_log, 25)
    assert await index_all(audit_db) == 25
    journal = await stored(audit_db)
    documents = await index_documents(audit_db)
    blocks = [block async for block in audit_db[JOURNAL].find({}).sort("_id", 1)]
    assert [d["_id"] for d in documents] == [b["_id"] for b in blocks]
    entries = [entry for d in documents for entry in orjson.loads(inflated(d["events"]))]
    assert [seq_key(e[0]) for e in entries] == [e["_id"] for e in journal]
    assert [e[1] for e in entries] == [e["hash"] for e in journal]
    # Derived from the event itself: the patient it concerns and its search keys; the block's
    # are the union of its events'.
    assert sorted(e[2][0] for e in entries) == sorted(f"Patient/p{n}" for n in range(25))
    for document in documents:
        own = [e for e in entries if document["first"] <= e[0] <= document["last"]]
        assert sorted(document["compartments"]) == sorted({c for e in own for c in e[2]})
        assert set(document["s"]["patient"]) == {v for e in own for v in e[3]["patient"]}
    assert await index_all(audit_db) == 0
    assert (await verify_chain(audit_db)).ok


async def test_event_changed_in_the_search_index_is_reported(
    audit_log: AuditLog, audit_db: Db
) -> None:
    await _chain_of(audit_log, 6)
    await index_all(audit_db)

    def change_outcome(entry: list[Any]) -> None:
        entry[3]["outcome"] = ["8"]

    await tamper_index(audit_db, 4, change_outcome)
    report = await verify_chain(audit_db)
    assert (report.ok, report.broken_seq) == (False, 4)
    assert "search keys" in (report.reason or "")


async def test_event_hidden_from_searches_is_reported(audit_log: AuditLog, audit_db: Db) -> None:
    await _chain_of(audit_log, 6)
    await index_all(audit_db)

    # Dropping the patient's keys would hide the access from "who read this patient's data".
    def hide(entry: list[Any]) -> None:
        entry[2:] = [[], {}]

    await tamper_index(audit_db, 3, hide)
    report = await verify_chain(audit_db)
    assert (report.ok, report.broken_seq) == (False, 3)
    assert "search keys" in (report.reason or "")


async def test_event_deleted_from_the_search_index_is_reported(
    audit_log: AuditLog, audit_db: Db
) -> None:
    await _chain_of(audit_log, 6)
    await index_all(audit_db)
    await audit_db[BLOCK_INDEX].delete_one({"_id": seq_key(2)})
    report = await verify_chain(audit_db)
    assert (report.ok, report.broken_seq) == (False, 2)
    assert "missing from the search index" in (report.reason or "")


async def test_event_forged_into_the_search_index_is_reported(
    audit_log: AuditLog, audit_db: Db
) -> None:
    await _chain_of(audit_log, 3)
    await index_all(audit_db)
    forged = await audit_db[BLOCK_INDEX].find_one({"_id": seq_key(3)})
    assert forged is not None
    forged.update(_id=seq_key(4), first=4, last=4)
    await audit_db[BLOCK_INDEX].insert_one(forged)
    report = await verify_chain(audit_db)
    assert (report.ok, report.broken_seq) == (False, 4)
    assert "not in the journal" in (report.reason or "")


async def test_appends_continue_the_chain_after_a_restart(audit_db: Db) -> None:
    for _ in range(2):
        log = AuditLog(window=0)
        await log.start(audit_db)
        await _chain_of(log, 3)
        await log.stop()
    report = await verify_chain(audit_db)
    assert report.ok and report.checked == 6


async def test_unreachable_store_refuses_to_start() -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        serverSelectionTimeoutMS=300,
    )
    try:
        with pytest.raises(AuditUnavailable):
            await AuditLog().start(client["hestia_audit"])
    finally:
        await client.close()


async def test_store_going_down_fails_requests_closed_with_503() -> None:
    server = EmbeddedServer.start(":memory:")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        server.uri, tz_aware=True, tzinfo=UTC, serverSelectionTimeoutMS=500
    )
    log = AuditLog(window=0.001, timeout=3)
    await log.start(client["hestia_audit"])
    transport = httpx.ASGITransport(app=build_app(log), raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            assert (await http.get("/fhir/Patient/p1")).status_code == 200
            await asyncio.to_thread(server.stop)
            response = await http.get("/fhir/Patient/p1")
            assert response.status_code == 503
            body = response.json()
            assert body["resourceType"] == "OperationOutcome"
            assert body["issue"][0]["code"] == "transient"
            # The resource the route produced was never sent.
            assert "Patient" not in response.text.replace("OperationOutcome", "")
            denied = await http.get("/fhir/Patient/p1", headers={"x-deny": "1"})
            assert denied.status_code == 503
    finally:
        await log.stop()
        await client.close()
        server.stop()


async def test_stopped_log_fails_closed(audit_db: Db) -> None:
    log = AuditLog()
    await log.start(audit_db)
    await log.stop()
    with pytest.raises(AuditUnavailable):
        await log.append(one_event(0))
    transport = httpx.ASGITransport(app=build_app(log), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/fhir/metadata")).status_code == 503


async def test_a_commit_larger_than_a_block_is_split_into_consecutive_blocks(
    audit_log: AuditLog, audit_db: Db
) -> None:
    seqs = await audit_log.append_all([one_event(n) for n in range(MAX_BLOCK_EVENTS * 2 + 7)])
    assert seqs == list(range(1, MAX_BLOCK_EVENTS * 2 + 8))
    sizes = [len(stored_events(b)) async for b in audit_db[JOURNAL].find({}).sort("last", 1)]
    assert sizes == [MAX_BLOCK_EVENTS, MAX_BLOCK_EVENTS, 7]
    assert (await verify_chain(audit_db)).ok


async def test_a_new_writer_finds_the_head_among_many_blocks_of_any_size(audit_db: Db) -> None:
    first = AuditLog(window=0)
    await first.start(audit_db)
    try:
        for size in (1, 3, 17, 1, 250, 2, 499, 64, 1, 1):
            await first.append_all([one_event(n) for n in range(size)])
    finally:
        await first.stop()
    head = sum((1, 3, 17, 1, 250, 2, 499, 64, 1, 1))
    # A fresh writer (another process, a restart) knows nothing and must chain after `head`.
    second = AuditLog(window=0)
    await second.start(audit_db)
    try:
        assert await second.append(one_event(0)) == head + 1
    finally:
        await second.stop()
    report = await verify_chain(audit_db)
    assert report.ok and report.checked == head + 1
    # The search index finds where it stands the same way, from nothing.
    assert await index_all(audit_db) == head + 1
    assert await index_all(audit_db) == 0
