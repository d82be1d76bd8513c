"""A writer finds the head of the chain while other writers append to it (journal.read_head).

The head is found by a galloping then binary search over which seqs are journaled. Blocks that
other writers append during the search can make it end inside a block, on a seq that is no
block's last; the head must still be a real block's (last, hash), never a failure that fails
the commit (and with it every access waiting on it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient, monitoring

from app.audit.chain import CHECKPOINTS, GENESIS, JOURNAL, link
from app.audit.journal import MAX_BLOCK_EVENTS, block_of, read_head
from app.store.client import EmbeddedServer
from tests.audit.test_log import one_event

Doc = dict[str, Any]


def _blocks(first: int, last: int, head_hash: str) -> Doc:
    events = [one_event(n) for n in range(first, last + 1)]
    return block_of(link(events, first - 1, head_hash, batch="b", writer="other"))


class _AppendAfterProbe(monitoring.CommandListener):
    """Another writer appends `block` as soon as the probe for `seq` has answered."""

    def __init__(self, sync: MongoClient[Doc], database: str, seq: int, block: Doc) -> None:
        self.sync, self.database, self.block = sync, database, block
        self.probe = {"last": {"$gte": seq, "$lt": seq + MAX_BLOCK_EVENTS}}
        self.request: int | None = None
        self.appended = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("filter") == self.probe:
            self.request = event.request_id

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.request_id == self.request and not self.appended:
            self.appended = True
            self.sync[self.database][JOURNAL].insert_one(self.block)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


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
    listener = _AppendAfterProbe(sync, name, 128, second)
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        database.uri, tz_aware=True, tzinfo=UTC, event_listeners=[listener]
    )
    try:
        head = await read_head(client[name][JOURNAL], client[name][CHECKPOINTS])
    finally:
        await client.close()
    assert listener.appended
    # Either real head will do: a writer that chains after the older one collides with the
    # newer block's _id and reads the head again.
    assert head in {(100, first["hash"]), (140, second["hash"])}
