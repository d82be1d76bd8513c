"""Versioned writes: the current collection per type plus the insert-only `history`.

Every write runs inside one MongoDB multi-document transaction. A version is claimed by a
compare-and-swap on `vid`, so two concurrent writers of one resource can never both produce
the same version: the loser sees a write conflict (or a vid mismatch) and is retried or
answered 409/412 by the caller.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

from app.store.bodies import loaded, stored_body
from app.store.cache import CurrentCache
from app.store.write_clock import WriteClock

Doc = dict[str, Any]
T = TypeVar("T")
log = logging.getLogger("hestia.store")

HISTORY = "history"
# What a read of a current version needs: the body, its version, and what access checks use.
CURRENT_FIELDS = {"resource": 1, "vid": 1, "updated": 1, "deleted": 1, "compartments": 1}
# Guard documents that serialise conditional creates on the same criteria (see claim_guard).
GUARDS = "conditional_guards"
TRANSACTION_RETRIES = 8


class VersionConflict(Exception):
    """Another writer changed the resource first (optimistic concurrency lost)."""


class StoreUnavailable(Exception):
    """The database could not be reached or refused the operation."""


@dataclass(frozen=True)
class Version:
    resource_type: str
    id: str
    vid: int
    updated: datetime
    resource: Doc | None
    method: str = "PUT"
    # The patient compartments stored with a current version (None when not read from there).
    compartments: tuple[str, ...] | None = None

    @property
    def deleted(self) -> bool:
        return self.resource is None


@dataclass
class WriteSpec:
    """What to write: a new version (or a delete when `resource` is None)."""

    resource_type: str
    id: str
    resource: Doc | None
    method: str
    search_keys: Doc = field(default_factory=dict)
    compartments: Sequence[str] = ()
    raw: Sequence[str] = ()


def now_utc() -> datetime:
    current = datetime.now(UTC)
    return current.replace(microsecond=current.microsecond // 1000 * 1000)


def instant(value: datetime) -> str:
    """FHIR instant in UTC with millisecond precision, as served in meta.lastUpdated (and as
    audit events record and hash their times)."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds")[:23] + "Z"


def _is_transient(exc: PyMongoError) -> bool:
    if exc.has_error_label("TransientTransactionError"):
        return True
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors", [])
        return bool(errors) and all(e.get("code") in (112, 244, 251) for e in errors)
    return isinstance(exc, OperationFailure) and exc.code in (112, 244, 251)


class Store:
    """`cache`, when given, serves reads of current versions outside transactions; this store
    invalidates what its own transactions wrote once they commit (read-your-writes), and the
    cache's change feed covers every other writer."""

    def __init__(
        self,
        db: AsyncDatabase[Doc],
        cache: CurrentCache | None = None,
        clock: WriteClock | None = None,
    ) -> None:
        self.db = db
        self.history = db[HISTORY]
        self.cache = cache
        self.clock = clock or WriteClock()
        # Keys written by each open transaction (by session), invalidated after its commit.
        self._written: dict[int, list[tuple[str, str]]] = {}

    def current(self, resource_type: str) -> Any:
        return self.db[resource_type]

    async def ensure_indexes(self, resource_types: Sequence[str]) -> None:
        await self.history.create_index(
            [("type", ASCENDING), ("id", ASCENDING), ("vid", DESCENDING)], name="instance"
        )
        await self.history.create_index(
            [("updated", DESCENDING), ("_id", DESCENDING)], name="system"
        )
        await self.history.create_index(
            [("type", ASCENDING), ("updated", DESCENDING), ("_id", DESCENDING)], name="type"
        )

    # Transactions

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncClientSession]:
        async with self.db.client.start_session() as session:
            yield session

    async def run_transaction(self, work: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
        """Run `work` in one transaction, retrying it whole on transient conflicts."""
        delay = 0.002
        for attempt in range(TRANSACTION_RETRIES):
            try:
                async with self.session() as session:
                    await session.start_transaction()
                    try:
                        result = await work(session)
                    except BaseException:
                        self._written.pop(id(session), None)
                        if session.in_transaction:
                            await session.abort_transaction()
                        raise
                    try:
                        await self._commit(session)
                    finally:
                        # After a failed commit the outcome is unknown: invalidating is safe.
                        self._invalidate_written(session)
                    await self.persist_clock()
                    return result
            except VersionConflict:
                # `work` re-reads the current state on each attempt, so a lost race is retried.
                if attempt == TRANSACTION_RETRIES - 1:
                    raise
            except PyMongoError as exc:
                if not _is_transient(exc):
                    raise
                if attempt == TRANSACTION_RETRIES - 1:
                    raise VersionConflict("The resource was changed concurrently") from exc
            # Jitter: writers that collided once must not retry in lockstep and collide again.
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.2)
        raise VersionConflict("The resource was changed concurrently")

    async def persist_clock(self) -> None:
        try:
            await self.clock.persist(self.db)
        except PyMongoError:
            # The write itself committed; a lagging clock only makes a history page slower.
            log.warning("the write clock could not be stored")

    async def _commit(self, session: AsyncClientSession) -> None:
        while True:
            try:
                await session.commit_transaction()
                return
            except PyMongoError as exc:
                if exc.has_error_label("UnknownTransactionCommitResult"):
                    continue
                raise

    def note_written(self, session: AsyncClientSession, keys: list[tuple[str, str]]) -> None:
        if self.cache is not None:
            self._written.setdefault(id(session), []).extend(keys)

    def _invalidate_written(self, session: AsyncClientSession) -> None:
        keys = self._written.pop(id(session), ())
        if self.cache is not None:
            for resource_type, resource_id in keys:
                self.cache.invalidate(resource_type, resource_id)

    # Reads

    async def read_current(
        self, resource_type: str, resource_id: str, session: AsyncClientSession | None = None
    ) -> Doc | None:
        """The current-collection document (callers must not modify it: it may be cached)."""
        cache = self.cache if session is None else None
        if cache is not None:
            cached = cache.get(resource_type, resource_id)
            if cached is not None:
                return cached
            began = cache.epoch()
        doc: Doc | None = await self.current(resource_type).find_one(
            {"_id": resource_id}, CURRENT_FIELDS, session=session
        )
        if doc is None:
            return None
        loaded(doc)
        if cache is not None:
            cache.put(resource_type, resource_id, doc, began)
        return doc

    async def read_current_many(
        self, resource_type: str, resource_ids: Sequence[str], session: AsyncClientSession
    ) -> dict[str, Doc]:
        """The current-collection documents of `resource_ids` (deleted ones included), read in
        the caller's transaction with one query; ids never stored are absent."""
        if not resource_ids:
            return {}
        docs = (
            await self.current(resource_type)
            .find(
                {"_id": {"$in": list(dict.fromkeys(resource_ids))}},
                CURRENT_FIELDS,
                session=session,
            )
            .to_list(None)
        )
        return {str(doc["_id"]): loaded(doc) for doc in docs}

    async def read_version(
        self,
        resource_type: str,
        resource_id: str,
        vid: int,
        session: AsyncClientSession | None = None,
    ) -> Doc | None:
        doc: Doc | None = await self.history.find_one(
            {"_id": history_id(resource_type, resource_id, vid)}, session=session
        )
        return None if doc is None else loaded(doc)

    # Writes

    async def write(
        self,
        session: AsyncClientSession,
        spec: WriteSpec,
        expected_vid: int | None,
        updated: datetime,
        make_resource: Callable[[int], Doc | None],
    ) -> Version:
        """Write the next version of `spec`'s resource.

        `expected_vid` is the version the caller based its change on (None: the resource did
        not exist). `make_resource(vid)` returns the body to store for the new version number,
        so meta.versionId is always the version actually claimed.
        """
        batch = WriteBatch(self)
        version = batch.add(spec, expected_vid, updated, make_resource)
        await batch.flush(session)
        return version

    async def claim_guard(self, session: AsyncClientSession, key: str) -> None:
        """Write the guard document `key` inside the caller's transaction.

        Snapshot isolation lets two transactions both search, both find nothing and both
        create. Writing one shared document first turns that race into a write conflict
        (WriteConflict 112, or a duplicate key on the first insert), so the loser is retried
        whole and its retry finds what the winner created. Works the same on MongoDB replica
        sets and on SecantusDB because it relies only on document-level write conflicts.
        """
        try:
            await self.db[GUARDS].update_one(
                {"_id": key}, {"$inc": {"n": 1}}, upsert=True, session=session
            )
        except DuplicateKeyError as exc:
            raise VersionConflict("A concurrent conditional write holds the guard") from exc

    # Queries

    async def find(
        self,
        resource_type: str,
        query: Doc,
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int = 0,
        projection: Doc | None = None,
        session: AsyncClientSession | None = None,
    ) -> list[Doc]:
        cursor = self.current(resource_type).find(query, projection, session=session)
        if sort:
            cursor = cursor.sort(list(sort))
        if limit:
            cursor = cursor.limit(limit)
        return [loaded(doc) async for doc in cursor]

    async def count(self, resource_type: str, query: Doc) -> int:
        return int(await self.current(resource_type).count_documents(query))

    async def find_history(
        self, query: Doc, *, limit: int, sort: Sequence[tuple[str, int]]
    ) -> list[Doc]:
        cursor = self.history.find(query).sort(list(sort)).limit(limit)
        return [loaded(doc) async for doc in cursor]

    async def count_history(self, query: Doc) -> int:
        return int(await self.history.count_documents(query))


class WriteBatch:
    """Versions staged in memory and written together: one `insert_many` per collection for
    new resources and one for history, instead of two round trips per resource.

    Staging computes the Version (vid, body) at once, so callers can answer before `flush`.
    A batch must not hold two versions of one resource (the Bundle layer refuses that).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.inserts: dict[str, list[Doc]] = {}
        self.replaces: list[tuple[str, int, Doc]] = []
        self.history: list[Doc] = []
        self.versions: list[Version] = []

    def add(
        self,
        spec: WriteSpec,
        expected_vid: int | None,
        updated: datetime,
        make_resource: Callable[[int], Doc | None],
    ) -> Version:
        vid = (expected_vid or 0) + 1
        resource = make_resource(vid)
        body = None if resource is None else stored_body(resource)
        doc: Doc = {
            "_id": spec.id,
            "resource": body,
            "vid": vid,
            "updated": updated,
            "deleted": resource is None,
            "s": spec.search_keys if resource is not None else {},
            "compartments": list(spec.compartments) if resource is not None else [],
            "raw": list(spec.raw),
        }
        if expected_vid is None:
            self.inserts.setdefault(spec.resource_type, []).append(doc)
        else:
            self.replaces.append((spec.resource_type, expected_vid, doc))
        self.history.append(
            {
                "_id": history_id(spec.resource_type, spec.id, vid),
                "type": spec.resource_type,
                "id": spec.id,
                "vid": vid,
                "updated": updated,
                "method": spec.method,
                "resource": body,
            }
        )
        version = Version(
            spec.resource_type,
            spec.id,
            vid,
            updated,
            resource,
            spec.method,
            tuple(doc["compartments"]),
        )
        self.versions.append(version)
        return version

    async def flush(self, session: AsyncClientSession) -> list[Version]:
        """Write everything staged, inside `session`'s transaction; return the versions."""
        self.store.note_written(session, [(v.resource_type, v.id) for v in self.versions])
        for resource_type, expected_vid, doc in self.replaces:
            result = await self.store.current(resource_type).replace_one(
                {"_id": doc["_id"], "vid": expected_vid}, doc, session=session
            )
            if result.matched_count != 1:
                raise VersionConflict(f"{resource_type}/{doc['_id']} changed concurrently")
        try:
            for resource_type, docs in self.inserts.items():
                await self.store.current(resource_type).insert_many(
                    docs, ordered=True, session=session
                )
        except BulkWriteError as exc:
            # A duplicate _id means another writer created the resource first.
            if any(e.get("code") == 11000 for e in exc.details.get("writeErrors", [])):
                raise VersionConflict("A resource was created concurrently") from exc
            raise
        except DuplicateKeyError as exc:
            raise VersionConflict("A resource was created concurrently") from exc
        if self.history:
            await self.store.history.insert_many(self.history, ordered=True, session=session)
        for version in self.versions:
            self.store.clock.note(version.resource_type, version.updated)
        written = self.versions
        self.inserts, self.replaces, self.history, self.versions = {}, [], [], []
        return written


def history_id(resource_type: str, resource_id: str, vid: int) -> str:
    return f"{resource_type}/{resource_id}/{vid}"


__all__ = [
    "GUARDS",
    "HISTORY",
    "Store",
    "StoreUnavailable",
    "Version",
    "VersionConflict",
    "WriteBatch",
    "WriteSpec",
    "history_id",
    "instant",
    "now_utc",
]
