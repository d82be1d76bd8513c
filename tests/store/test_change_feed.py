"""The change feed asks the server again only after a pause when a batch came back empty, so
writes to other databases on the same server (the audit log's, above all) do not cost it a
round trip each; changes to its own database still arrive."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.monitoring import CommandListener, CommandStartedEvent, CommandSucceededEvent

from app.store.changes import ChangeFeed
from app.store.client import EmbeddedServer

Doc = dict[str, Any]


class GetMoreCounter(CommandListener):
    def __init__(self) -> None:
        self.get_mores = 0

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name == "getMore":
            self.get_mores += 1

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


class Seen:
    def __init__(self) -> None:
        self.keys: list[Any] = []

    def on_change(self, collection: str, operation: str, key: Any, document: Doc | None) -> None:
        self.keys.append(key)

    def on_live(self, live: bool) -> None:
        pass


async def test_writes_elsewhere_do_not_make_the_feed_ask_again_at_once(
    database: EmbeddedServer,
) -> None:
    counter = GetMoreCounter()
    feed_client: AsyncMongoClient[Doc] = AsyncMongoClient(
        database.uri, tz_aware=True, tzinfo=UTC, event_listeners=[counter]
    )
    writer: AsyncMongoClient[Doc] = AsyncMongoClient(database.uri)
    name = f"feed_{uuid.uuid4().hex[:8]}"
    seen = Seen()
    feed = ChangeFeed(feed_client[name], idle_pause=0.05)
    feed.subscribe(seen)
    try:
        assert await feed.start()
        before = counter.get_mores
        elsewhere = writer[f"{name}_audit"]["journal"]
        for n in range(60):  # 60 commits in another database over about half a second
            await elsewhere.insert_one({"_id": n})
            await asyncio.sleep(0.008)
        asked = counter.get_mores - before
        # One getMore per commit without the pause; with it, about one per 50 ms.
        assert asked <= 25, asked

        await writer[name]["Patient"].insert_one({"_id": "p1"})
        for _ in range(200):
            if "p1" in seen.keys:
                break
            await asyncio.sleep(0.01)
        assert seen.keys == ["p1"]
    finally:
        await feed.stop()
        await feed_client.close()
        await writer.close()
