"""A writer finds the head of the chain while other writers append to it, or a purge deletes
its oldest blocks (journal.read_head).

The head is found by a galloping then binary search over which seqs are journaled, after the
latest checkpoint. Blocks that other writers append during the search can make it end inside a
block, on a seq that is no block's last; the head must still be a real block's (last, hash),
never a failure that fails the commit (and with it every access waiting on it). And a purge
that deletes blocks behind its new checkpoint must not make them look like the chain's end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient, monitoring

from app.audit.chain import CHECKPOINTS, GENESIS, JOURNAL, link, seq_key
from app.audit.journal import MAX_BLOCK_EVENTS, block_of, read_head
from app.store.client import EmbeddedServer
from tests.audit.test_log import one_event

Doc = dict[str, Any]


def _blocks(first: int, last: int, head_hash: str) -> Doc:
    events = [one_event(n) for n in range(first, last + 1)]
    return block_of(link(events, first - 1, head_hash, batch="b", writer="other"))


class _AfterCommand(monitoring.CommandListener):
    """Runs `act` once, as soon as the first find matching `chosen` has been answered: what
    another process does at that moment of the search."""

    def __init__(self, chosen: Callable[[Doc], bool], act: Callable[[], None]) -> None:
        self.chosen, self.act = chosen, act
        self.request: int | None = None
        self.done = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and self.request is None and self.chosen(event.command):
            self.request = event.request_id

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.request_id == self.request and not self.done:
            self.done = True
            self.act()

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def _head_with(database: EmbeddedServer, name: str, listener: _AfterCommand) -> Any:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        database.uri, tz_aware=True, tzinfo=UTC, event_listeners=[listener]
    )
    try:
        return await read_head(client[name][JOURNAL], client[name][CHECKPOINTS])
    finally:
        await client.close()


@pytest.fixture
def sync(database: EmbeddedServer) -> Iterator[MongoClient[Doc]]:
    client: MongoClient[Doc] = MongoClient(database.uri)
    yield client
    client.close()


async def test_blocks_appended_during_the_search_still_give_a_real_head(
    database: EmbeddedServer, sync: MongoClient[Doc]
) -> None:
    name = f"audit_head_{uuid.uuid4().hex[:8]}"
    first = _blocks(1, 100, GENESIS)
    sync[name][JOURNAL].insert_one(first)
    # Seqs 1..100 are journaled: the search gallops to 64 and finds 128 free. Right after that
    # probe another writer appends 101..140, so every later probe (96, 112 … 127) finds its
    # seq journaled and the search ends on 127, inside the new block.
    second = _blocks(101, 140, first["hash"])
    probe = {"last": {"$gte": 128, "$lt": 128 + MAX_BLOCK_EVENTS}}

    def another_writer_appends() -> None:
        sync[name][JOURNAL].insert_one(second)

    listener = _AfterCommand(lambda command: command.get("filter") == probe, another_writer_appends)
    head = await _head_with(database, name, listener)
    assert listener.done
    # Either real head will do: a writer that chains after the older one collides with the
    # newer block's _id and reads the head again.
    assert head in {(100, first["hash"]), (140, second["hash"])}


async def test_a_purge_during_the_search_does_not_make_deleted_blocks_the_end(
    database: EmbeddedServer, sync: MongoClient[Doc]
) -> None:
    name = f"audit_head_{uuid.uuid4().hex[:8]}"
    old = _blocks(1, 400, GENESIS)
    expired = _blocks(401, 800, old["hash"])
    newest = _blocks(801, 810, expired["hash"])  # the purge's own event, and what follows
    sync[name][JOURNAL].insert_many([old, expired, newest])

    def purge_through_800() -> None:
        # As retention.purge does: the checkpoint first, then the blocks behind it.
        sync[name][CHECKPOINTS].insert_one(
            {"_id": 800, "through_seq": 800, "anchor": expired["hash"]}
        )
        sync[name][JOURNAL].delete_many({"_id": {"$lte": seq_key(800)}})

    # Right after the writer has read the checkpoints (none yet), the purge runs: from
    # genesis, seq 1 is no longer journaled, so the chain would seem to end at 0, and a writer
    # chaining there would write a block 1 that nothing follows from.
    listener = _AfterCommand(lambda command: command.get("find") == CHECKPOINTS, purge_through_800)
    head = await _head_with(database, name, listener)
    assert listener.done
    assert head == (810, newest["hash"])
