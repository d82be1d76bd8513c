"""The write floor of the store: how many resources per second the database takes when Hestia's
own work (parsing, validation, index extraction, HTTP) costs nothing.

The resources of 100-entry Synthea-like Bundles are validated and indexed once, before timing.
The timed part is only `WriteBatch` (current + history inserts) in one transaction per Bundle,
from N concurrent writers, against an on-disk embedded SecantusDB. It runs side by side, in one
process and on one database per configuration:

- `bare`: only the history indexes;
- `indexed`: plus the search indexes `hestia serve` creates;
- `indexed+feed`: plus the change stream that keeps every server's read cache coherent.

Any ingestion path (transactions, HL7 v2, CSV) writes at most this fast on this machine.

    python -m benchmarks.store_floor [--bundles 40] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.fhir import model
from app.fhir.indexing import index_resource
from app.store.changes import ChangeFeed
from app.store.client import Database, EmbeddedServer
from app.store.indexes import ensure_search_indexes
from app.store.versions import Store, WriteBatch, WriteSpec, now_utc
from benchmarks.harness import process_cpu
from benchmarks.transaction_ingest import synthea_like_bundle

JsonDict = dict[str, Any]


def prepared_bundles(count: int, entries: int, seed: int) -> list[list[WriteSpec]]:
    """Validated, indexed resources, ready for WriteBatch (ids assigned, references left as
    generated: the database does not resolve them)."""
    rng = random.Random(seed)
    bundles = []
    for n in range(count):
        specs = []
        for i, entry in enumerate(synthea_like_bundle(rng, entries)["entry"]):
            resource = dict(entry["resource"])
            resource["id"] = f"b{n}-{i}"
            model.validate(resource)
            keys, compartments = index_resource(resource)
            specs.append(
                WriteSpec(resource["resourceType"], resource["id"], resource, "POST", keys,
                          compartments)
            )  # fmt: skip
        bundles.append(specs)
    return bundles


def _fixed(resource: JsonDict | None) -> Callable[[int], JsonDict | None]:
    return lambda _vid: resource


async def write_all(store: Store, bundles: list[list[WriteSpec]], clients: int) -> float:
    queue = list(reversed(bundles))

    async def writer() -> None:
        while queue:
            specs = queue.pop()

            async def work(session: Any, specs: list[WriteSpec] = specs) -> None:
                batch = WriteBatch(store)
                updated = now_utc()
                for spec in specs:
                    batch.add(spec, None, updated, _fixed(spec.resource))
                await batch.flush(session)

            await store.run_transaction(work)

    began = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(clients)))
    return time.perf_counter() - began


async def measure(label: str, args: argparse.Namespace, *, search: bool, feed: bool) -> None:
    bundles = prepared_bundles(args.bundles + 1, args.entries, args.seed)
    with tempfile.TemporaryDirectory(prefix="hestia-floor-") as tmp:
        server = EmbeddedServer.start(f"{tmp}/db")
        database = Database(server.uri, "floor")
        change_feed = ChangeFeed(database.db) if feed else None
        try:
            store = Store(database.db)
            await store.ensure_indexes([])
            if search:
                await ensure_search_indexes(store, sorted(model.STORABLE_TYPES))
            if change_feed is not None:
                await change_feed.start()
            await write_all(store, bundles[:1], 1)  # warm-up
            cpu = process_cpu(server.process.pid)
            elapsed = await write_all(store, bundles[1:], args.clients)
            await asyncio.sleep(0.2)  # let the change stream catch up before reading the CPU
            cpu = process_cpu(server.process.pid) - cpu
        finally:
            if change_feed is not None:
                with contextlib.suppress(Exception):
                    await change_feed.stop()
            await database.close()
            server.stop()
    resources = args.bundles * args.entries
    print(
        f"{label:13s} {resources / elapsed:7,.0f} resources/s   database CPU "
        f"{cpu / resources * 1000:.2f} ms/resource (one full core: "
        f"{resources / max(cpu, 1e-9):,.0f}/s)"
    )


async def run(args: argparse.Namespace) -> None:
    print(
        f"{args.bundles} transactions of {args.entries} resources, {args.clients} writers, "
        "on-disk SecantusDB"
    )
    for _ in range(args.rounds):
        await measure("bare", args, search=False, feed=False)
        await measure("indexed", args, search=True, feed=False)
        await measure("indexed+feed", args, search=True, feed=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=int, default=40)
    parser.add_argument("--entries", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the three configurations")
    parser.add_argument("--seed", type=int, default=11)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
