"""The host's audit relay: workers append through one writer, over a real Unix socket, into the
real embedded database."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from app.audit.events import AuditFacts, AuditSource, build_events
from app.audit.log import AuditLog, AuditUnavailable
from app.audit.relay import FrameParser, RelayClient, RelayServer, frame
from app.audit.verify import verify_chain
from tests.audit.conftest import Db, stored

SOURCE = AuditSource("http://relay.test/fhir")


def read_event(patient: str) -> dict[str, object]:
    facts = AuditFacts(
        "read",
        resource_type="Patient",
        resource_id=patient,
        version_id="1",
        patients=[f"Patient/{patient}"],
        peer="10.0.0.9",
        status=200,
    )
    [event] = build_events(facts, SOURCE)
    return event


def read_of(event: dict[str, Any]) -> str:
    """The version the event says was read."""
    return str(event["entity"][0]["what"]["reference"])


@asynccontextmanager
async def relay(audit_log: AuditLog, path: Path) -> AsyncIterator[RelayServer]:
    server = RelayServer(audit_log)
    await server.start(str(path))
    try:
        yield server
    finally:
        server.close()
        os.unlink(path)  # as the relay process does before it listens again


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "relay.sock"


async def test_two_workers_append_through_one_writer_without_racing(
    audit_log: AuditLog, audit_db: Db, socket_path: Path
) -> None:
    async with relay(audit_log, socket_path):
        workers = [RelayClient(str(socket_path)), RelayClient(str(socket_path))]
        for worker in workers:
            await worker.start()

        async def requests(worker: RelayClient, name: str) -> list[int]:
            seqs = await asyncio.gather(
                *(worker.append(read_event(f"{name}-{n}")) for n in range(40))
            )
            return list(seqs)

        first, second = await asyncio.gather(requests(workers[0], "a"), requests(workers[1], "b"))
        for worker in workers:
            await worker.stop()

    assert sorted(first + second) == list(range(1, 81))
    docs = await stored(audit_db)
    assert [int(d["_id"]) for d in docs] == list(range(1, 81))
    # One writer for the host: nobody lost a race for a seq.
    assert {d["writer"] for d in docs} == {audit_log.writer_id}
    assert audit_log.stats.conflicts == 0
    # Each worker got the seq of its own event back.
    by_seq = {int(d["_id"]): d["resource"] for d in docs}
    assert read_of(by_seq[first[0]]) == "Patient/a-0/_history/1"
    assert read_of(by_seq[second[-1]]) == "Patient/b-39/_history/1"
    report = await verify_chain(audit_db)
    assert report.ok, report.summary()


async def test_events_arrive_unchanged_but_for_their_seq(
    audit_log: AuditLog, audit_db: Db, socket_path: Path
) -> None:
    event = read_event("unchanged")
    async with relay(audit_log, socket_path):
        worker = RelayClient(str(socket_path))
        await worker.start()
        [seq] = await worker.append_all([event])
        await worker.stop()
    [doc] = await stored(audit_db)
    assert doc["resource"] == {**event, "id": str(seq)}


async def test_without_a_relay_appends_fail_closed_and_recover_when_it_returns(
    audit_log: AuditLog, audit_db: Db, socket_path: Path
) -> None:
    worker = RelayClient(str(socket_path), timeout=0.5)
    with pytest.raises(AuditUnavailable, match="unreachable"):
        await worker.start()  # a worker that cannot audit must not start serving
    with pytest.raises(AuditUnavailable):
        await worker.append(read_event("before"))

    async with relay(audit_log, socket_path):
        assert await worker.append(read_event("during")) == 1

    # The relay went away (a restart): the next append fails, and does not hang.
    with pytest.raises(AuditUnavailable):
        await asyncio.wait_for(worker.append(read_event("gone")), 5)

    async with relay(audit_log, socket_path):
        assert await worker.append(read_event("back")) == 2
    await worker.stop()
    assert [read_of(d["resource"]) for d in await stored(audit_db)] == [
        "Patient/during/_history/1",
        "Patient/back/_history/1",
    ]


async def test_a_request_waiting_when_the_relay_dies_is_refused(socket_path: Path) -> None:
    # A relay that accepts a request and then dies before committing it (a stand-in for the
    # relay process being killed): the worker must answer 503, not wait forever.
    received = asyncio.Event()

    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        received.set()
        writer.close()

    server = await asyncio.start_unix_server(dies, path=str(socket_path))
    worker = RelayClient(str(socket_path))
    await worker.start()
    with pytest.raises(AuditUnavailable, match="went away"):
        await asyncio.wait_for(worker.append(read_event("lost")), 5)
    assert received.is_set()
    server.close()
    await worker.stop()


async def test_a_relay_that_never_answers_is_given_up_on_after_the_timeout(
    socket_path: Path,
) -> None:
    # A relay stuck on its database: the worker answers 503 once its audit timeout passes,
    # and the requests waiting alongside fail with it.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_unix_server(silent, path=str(socket_path))
    worker = RelayClient(str(socket_path), timeout=0.1)  # waits 3 × 0.1 + 1 s
    await worker.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await asyncio.gather(
        *(worker.append(read_event(f"p{n}")) for n in range(3)), return_exceptions=True
    )
    waited = loop.time() - started
    assert all(isinstance(o, AuditUnavailable) and "in time" in str(o) for o in outcomes)
    assert worker.timeout <= waited < worker.timeout * 1.5
    server.close()
    await worker.stop()


async def test_a_relay_answers_a_refusal_as_audit_unavailable(
    audit_db: Db, socket_path: Path
) -> None:
    stopped = AuditLog()
    await stopped.start(audit_db)
    await stopped.stop()  # an audit log that cannot write
    async with relay(stopped, socket_path):
        worker = RelayClient(str(socket_path))
        await worker.start()
        with pytest.raises(AuditUnavailable, match="not running"):
            await worker.append(read_event("refused"))
        await worker.stop()


async def test_garbage_on_the_socket_drops_that_connection_only(
    audit_log: AuditLog, audit_db: Db, socket_path: Path
) -> None:
    async with relay(audit_log, socket_path):
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        writer.write(struct.pack("!I", 5) + b"nope!")
        assert await reader.read() == b""  # closed by the relay
        writer.close()
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        writer.write(frame(["not an id", []]))
        assert await reader.read() == b""
        writer.close()
        worker = RelayClient(str(socket_path))
        await worker.start()
        assert await worker.append(read_event("after-garbage")) == 1
        await worker.stop()
    assert len(await stored(audit_db)) == 1


async def test_events_the_chain_cannot_take_are_refused_alone(
    audit_log: AuditLog, audit_db: Db, socket_path: Path
) -> None:
    async with relay(audit_log, socket_path):
        worker = RelayClient(str(socket_path))
        await worker.start()
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        writer.write(frame([7, [42]]))  # not an event, sent beside a real one
        seq = await worker.append(read_event("beside"))
        assert FrameParser().feed(await reader.read(4096)) == [
            [7, None, "the relay takes AuditEvents only"]
        ]
        writer.close()
        # The real event was not refused with it, and the relay stays up.
        assert seq == 1
        assert await worker.append(read_event("after")) == 2
        await worker.stop()
    assert len(await stored(audit_db)) == 2
