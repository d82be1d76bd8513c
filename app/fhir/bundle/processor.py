"""batch and transaction Bundles (R4 http.html#transaction).

A transaction runs every write entry inside ONE MongoDB transaction (Store.run_transaction),
so it commits whole or not at all, history included. A retried attempt starts from scratch:
targets, conditional matches and references are resolved again, while the ids given to new
resources were chosen once beforehand (Entry.new_id), so a retry writes the same ids.

GET entries run after the writes have committed and report their own status: they cannot undo
a committed transaction, and they see its writes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from typing import Any

from app.fhir.bundle.entries import PROCESSING_ORDER, Entry, parse_entry
from app.fhir.bundle.references import (
    conditional_parts,
    is_placeholder,
    iter_references,
    rewrite,
)
from app.fhir.interactions import Criteria, Interactions, Result, UnitOfWork, version_from_doc
from app.fhir.outcome import (
    BadRequest,
    Conflict,
    FhirError,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    information,
)
from app.store.versions import Version, VersionConflict, WriteBatch, instant

JsonDict = dict[str, Any]
Searcher = Callable[[str, Criteria], Awaitable[JsonDict]]
# Authorises one entry before anything is written; raises to refuse it.
EntryGuard = Callable[[Entry], Awaitable[None]]


@dataclass
class BundleOutcome:
    """The response Bundle plus every version written while producing it.

    `written` lists (type, id, vid) of each stored version, in processing order: for a
    transaction all of them (one commit), for a batch those of the entries that succeeded.
    Ingestion builds its Provenance from it.
    """

    bundle: JsonDict
    written: list[Version] = field(default_factory=list)


@dataclass
class _Context:
    base_url: str
    prefer_return: str
    raw_ids: Sequence[str]
    guard: EntryGuard | None = None


@dataclass
class _Target:
    id: str | None
    matched: Result | None = None


@dataclass
class _Applied:
    results: dict[int, Result]
    mapping: dict[str, str]


def tagged(error: FhirError, entry: Entry | int) -> FhirError:
    """Name the entry in every issue: `Bundle.entry[3]` first in issue.expression."""
    where = entry.where if isinstance(entry, Entry) else f"Bundle.entry[{entry}]"
    issues: list[JsonDict] = []
    for item in error.issues:
        expressions = list(item.get("expression") or [])
        if expressions and str(expressions[0]).startswith("Bundle.entry["):
            return error
        issues.append(
            {
                **item,
                "diagnostics": f"{where}: {item.get('diagnostics', '')}",
                "expression": [where, *expressions],
            }
        )
    error.issues = issues
    error.diagnostics = f"{where}: {error.diagnostics}"
    return error


def status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def error_entry(error: FhirError) -> JsonDict:
    return {"response": {"status": status_text(error.status), "outcome": error.to_outcome()}}


class BundleProcessor:
    """Processes batch and transaction Bundles posted to the base URL.

    `search(type, criteria)` answers GET entries with a query (a searchset Bundle); without
    it such entries fail with 400.
    """

    def __init__(self, interactions: Interactions, search: Searcher | None = None) -> None:
        self.interactions = interactions
        self.store = interactions.store
        self.search = search

    async def process(
        self,
        bundle: JsonDict,
        *,
        base_url: str,
        prefer_return: str = "minimal",
        raw_ids: Sequence[str] = (),
        max_entries: int,
        guard: EntryGuard | None = None,
    ) -> JsonDict:
        """The batch-response or transaction-response Bundle (raises FhirError when a
        transaction fails, naming the failed entry in issue.expression)."""
        outcome = await self.process_with_versions(
            bundle,
            base_url=base_url,
            prefer_return=prefer_return,
            raw_ids=raw_ids,
            max_entries=max_entries,
            guard=guard,
        )
        return outcome.bundle

    async def process_with_versions(
        self,
        bundle: JsonDict,
        *,
        base_url: str,
        prefer_return: str = "minimal",
        raw_ids: Sequence[str] = (),
        max_entries: int,
        guard: EntryGuard | None = None,
    ) -> BundleOutcome:
        """`guard(entry)` is awaited for every entry before anything is written: it raises
        (e.g. Forbidden) to refuse the entry, which fails a transaction and marks a batch
        entry."""
        kind, raw_entries = self._check_bundle(bundle, max_entries)
        ctx = _Context(base_url.rstrip("/"), prefer_return.lower(), tuple(raw_ids), guard)
        if kind == "transaction":
            return await self._transaction(raw_entries, ctx)
        return await self._batch(raw_entries, ctx)

    # Bundle-level checks

    def _check_bundle(self, bundle: Any, max_entries: int) -> tuple[str, list[Any]]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise BadRequest("The body must be a Bundle resource", expression=["resourceType"])
        kind = bundle.get("type")
        if kind not in ("batch", "transaction"):
            raise BadRequest(
                f"Bundle.type is '{str(kind)[:40]}': only 'batch' and 'transaction' Bundles are "
                "processed here; to store a Bundle as a resource, POST it to [base]/Bundle",
                expression=["Bundle.type"],
            )
        entries = bundle.get("entry", [])
        if not isinstance(entries, list):
            raise BadRequest("Bundle.entry must be an array", expression=["Bundle.entry"])
        if len(entries) > max_entries:
            raise PayloadTooLarge(
                f"The Bundle has {len(entries)} entries; this server accepts at most "
                f"{max_entries} per Bundle",
                expression=["Bundle.entry"],
            )
        return str(kind), entries

    def _parse(self, index: int, raw: Any, ctx: _Context) -> Entry:
        try:
            return parse_entry(index, raw, ctx.base_url, self.interactions)
        except FhirError as error:
            raise tagged(error, index) from None

    # transaction

    async def _transaction(self, raw_entries: list[Any], ctx: _Context) -> BundleOutcome:
        entries = [self._parse(i, raw, ctx) for i, raw in enumerate(raw_entries)]
        self._check_full_urls(entries)
        if ctx.guard is not None:
            for entry in entries:
                try:
                    await ctx.guard(entry)
                except FhirError as error:
                    raise tagged(error, entry) from None
        ordered = sorted(entries, key=lambda e: (PROCESSING_ORDER[e.method], e.index))
        writes = [e for e in ordered if e.writes]

        async def attempt(session: Any) -> tuple[_Applied, list[Version]]:
            uow = UnitOfWork(session, WriteBatch(self.store), ctx.raw_ids)
            applied = await self._apply(uow, writes, {}, {})
            return applied, await uow.flush()

        try:
            applied, written = await self.store.run_transaction(attempt)
        except VersionConflict:
            raise Conflict(
                "The transaction kept conflicting with concurrent writes; retry it"
            ) from None
        responses: dict[int, JsonDict] = {
            index: self._write_entry(result, ctx) for index, result in applied.results.items()
        }
        for entry in ordered:
            if not entry.writes:
                responses[entry.index] = await self._get_or_error(entry, ctx)
        return BundleOutcome(self._response("transaction-response", entries, responses), written)

    def _check_full_urls(self, entries: list[Entry]) -> None:
        seen: dict[str, int] = {}
        for entry in entries:
            if entry.full_url is None:
                continue
            if entry.full_url in seen:
                raise tagged(
                    BadRequest(
                        f"fullUrl '{entry.full_url[:100]}' is also the fullUrl of "
                        f"Bundle.entry[{seen[entry.full_url]}]"
                    ),
                    entry,
                )
            seen[entry.full_url] = entry.index

    # batch

    async def _batch(self, raw_entries: list[Any], ctx: _Context) -> BundleOutcome:
        parsed: list[Entry] = []
        responses: dict[int, JsonDict] = {}
        url_owner: dict[str, int] = {}
        for index, raw in enumerate(raw_entries):
            full_url = raw.get("fullUrl") if isinstance(raw, dict) else None
            if isinstance(full_url, str):
                url_owner.setdefault(full_url, index)
            try:
                entry = self._parse(index, raw, ctx)
                if ctx.guard is not None:
                    try:
                        await ctx.guard(entry)
                    except FhirError as error:
                        raise tagged(error, entry) from None
                parsed.append(entry)
            except FhirError as error:
                responses[index] = error_entry(error)
        ordered = sorted(parsed, key=lambda e: (PROCESSING_ORDER[e.method], e.index))
        # References between batch entries resolve to entries already stored (R4 expects
        # none; Synthea-style "batch" bundles have them, and a dangling one is worse).
        known: dict[str, str] = {}
        written: list[Version] = []
        for entry in ordered:
            if not entry.writes:
                responses[entry.index] = await self._get_or_error(entry, ctx)
                continue
            try:
                applied, versions = await self._batch_entry(entry, ctx, known, url_owner)
            except FhirError as error:
                responses[entry.index] = error_entry(tagged(error, entry))
                continue
            known.update(applied.mapping)
            written.extend(versions)
            responses[entry.index] = self._write_entry(applied.results[entry.index], ctx)
        count = len(raw_entries)
        bundle: JsonDict = {
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [responses[i] for i in range(count)],
        }
        return BundleOutcome(bundle, written)

    async def _batch_entry(
        self, entry: Entry, ctx: _Context, known: dict[str, str], url_owner: dict[str, int]
    ) -> tuple[_Applied, list[Version]]:
        async def attempt(session: Any) -> tuple[_Applied, list[Version]]:
            uow = UnitOfWork(session, WriteBatch(self.store), ctx.raw_ids)
            applied = await self._apply(uow, [entry], dict(known), url_owner)
            return applied, await uow.flush()

        try:
            return await self.store.run_transaction(attempt)
        except VersionConflict:
            raise Conflict("The entry kept conflicting with concurrent writes; retry") from None

    # Shared: resolve targets, resolve references, write

    async def _apply(
        self,
        uow: UnitOfWork,
        writes: list[Entry],
        mapping: dict[str, str],
        url_owner: dict[str, int],
    ) -> _Applied:
        targets: dict[int, _Target] = {}
        claimed: dict[tuple[str, str], int] = {}
        added: dict[str, str] = {}
        for entry in writes:
            try:
                target = await self._target(uow, entry)
            except FhirError as error:
                raise tagged(error, entry) from None
            targets[entry.index] = target
            if target.id is None:
                continue
            key = (entry.resource_type, target.id)
            if key in claimed:
                raise tagged(
                    BadRequest(
                        f"This entry and Bundle.entry[{claimed[key]}] both resolve to "
                        f"{key[0]}/{key[1]}; a Bundle may change a resource only once"
                    ),
                    entry,
                )
            claimed[key] = entry.index
            added.update(self._aliases(entry, target.id))
        mapping.update(added)
        conditional = await self._conditional_references(writes, targets, mapping, url_owner)

        def replace(reference: str) -> str | None:
            return mapping.get(reference) or conditional.get(reference)

        results: dict[int, Result] = {}
        for entry in writes:
            try:
                results[entry.index] = await self._write(uow, entry, targets[entry.index], replace)
            except FhirError as error:
                raise tagged(error, entry) from None
        return _Applied(results, added)

    async def _target(self, uow: UnitOfWork, entry: Entry) -> _Target:
        ix = self.interactions
        rtype = entry.resource_type
        if entry.method == "DELETE":
            if entry.resource_id is not None:
                return _Target(entry.resource_id)
            assert entry.criteria is not None
            return _Target(await ix.conditional_delete_target(rtype, entry.criteria))
        if entry.method == "POST":
            if entry.if_none_exist is None:
                return _Target(entry.new_id)
            matches = await ix.match_for_write(uow, rtype, entry.if_none_exist)
            if len(matches) > 1:
                raise PreconditionFailed(f"ifNoneExist matched {len(matches)} {rtype} resources")
            if not matches:
                return _Target(entry.new_id)
            doc = await self.store.read_current(rtype, matches[0], uow.session)
            if doc is None or doc.get("deleted"):
                raise VersionConflict(f"{rtype}/{matches[0]} appeared concurrently")
            version = version_from_doc(rtype, {**doc, "id": matches[0]})
            return _Target(matches[0], Result(200, version))
        if entry.method == "PUT":
            if entry.resource_id is not None:
                return _Target(entry.resource_id)
            assert entry.criteria is not None and entry.resource is not None
            found = await ix.conditional_target(uow, rtype, entry.criteria, entry.resource)
            if found is not None:
                return _Target(found)
            return _Target(str(entry.resource.get("id") or entry.new_id))
        if entry.resource_id is not None:
            return _Target(entry.resource_id)
        assert entry.criteria is not None
        return _Target(await ix.conditional_patch_target(rtype, entry.criteria))

    @staticmethod
    def _aliases(entry: Entry, resource_id: str) -> dict[str, str]:
        """The strings other entries may use to refer to this entry's resource."""
        relative = f"{entry.resource_type}/{resource_id}"
        if entry.full_url is None or entry.method == "DELETE":
            return {}
        out = {entry.full_url: relative}
        parts = entry.full_url.rstrip("/").split("/")
        if (
            entry.method == "POST"
            and "://" in entry.full_url
            and len(parts) >= 2
            and parts[-2] == entry.resource_type
        ):
            # A POSTed entry with fullUrl base/Type/old: `Type/old` means this resource too.
            out[f"{parts[-2]}/{parts[-1]}"] = relative
        return out

    async def _conditional_references(
        self,
        writes: list[Entry],
        targets: dict[int, _Target],
        mapping: dict[str, str],
        url_owner: dict[str, int],
    ) -> dict[str, str]:
        resolved: dict[str, str] = {}
        for entry in writes:
            if entry.resource is None or targets[entry.index].matched is not None:
                continue
            for reference in iter_references(entry.resource):
                if reference in mapping or reference in resolved:
                    continue
                try:
                    found = await self._resolve_reference(reference, url_owner)
                except FhirError as error:
                    raise tagged(error, entry) from None
                if found is not None:
                    resolved[reference] = found
        return resolved

    async def _resolve_reference(self, reference: str, url_owner: dict[str, int]) -> str | None:
        if is_placeholder(reference):
            owner = url_owner.get(reference)
            if owner is not None:
                raise BadRequest(
                    f"The reference {reference[:100]} points to Bundle.entry[{owner}], which "
                    "was not stored (it failed or is processed later)"
                )
            raise BadRequest(
                f"The reference {reference[:100]} matches no entry's fullUrl in this Bundle"
            )
        parts = conditional_parts(reference)
        if parts is None:
            return None
        rtype, criteria = parts
        matches = await self.interactions.matcher(rtype, criteria)
        if not matches:
            raise NotFound(f"The conditional reference {reference[:120]} matches no resource")
        if len(matches) > 1:
            raise PreconditionFailed(
                f"The conditional reference {reference[:120]} matches {len(matches)} resources; "
                "it must match exactly one"
            )
        return f"{rtype}/{matches[0]}"

    async def _write(
        self,
        uow: UnitOfWork,
        entry: Entry,
        target: _Target,
        replace: Callable[[str], str | None],
    ) -> Result:
        ix = self.interactions
        rtype = entry.resource_type
        if target.matched is not None:
            return target.matched
        if entry.method == "DELETE":
            if target.id is None:
                return Result(204)
            return await ix.delete_in(uow, rtype, target.id, if_match=entry.if_match)
        if entry.method == "PATCH":
            assert target.id is not None and entry.patch is not None
            return await ix.patch_in(
                uow,
                rtype,
                target.id,
                entry.patch,
                if_match=entry.if_match,
                transform=lambda body: rewrite(body, replace),
            )
        assert target.id is not None and entry.resource is not None
        resource = rewrite(entry.resource, replace)
        if entry.method == "POST":
            return await ix.create_in(uow, rtype, resource, resource_id=target.id)
        return await ix.update_in(
            uow,
            rtype,
            target.id,
            {**resource, "id": target.id},
            if_match=entry.if_match,
            if_none_match_any=entry.if_none_match == "*",
        )

    # GET entries

    async def _get_or_error(self, entry: Entry, ctx: _Context) -> JsonDict:
        try:
            return await self._get(entry, ctx)
        except FhirError as error:
            return error_entry(tagged(error, entry))

    async def _get(self, entry: Entry, ctx: _Context) -> JsonDict:
        ix = self.interactions
        rtype = entry.resource_type
        if entry.resource_id is None:
            if self.search is None:
                raise BadRequest("Searches inside a Bundle are not available on this server")
            found = await self.search(rtype, entry.criteria or [])
            return {"resource": found, "response": {"status": "200 OK"}}
        if entry.vid is not None:
            version = await ix.vread(rtype, entry.resource_id, entry.vid)
        else:
            version = await ix.read(rtype, entry.resource_id)
        response = self._version_response(version, ctx)
        if self._not_modified(entry, version):
            return {"response": {**response, "status": status_text(304)}}
        out: JsonDict = {"fullUrl": f"{ctx.base_url}/{rtype}/{version.id}"}
        if entry.method == "GET":
            out["resource"] = version.resource
        out["response"] = {**response, "status": "200 OK"}
        return out

    @staticmethod
    def _not_modified(entry: Entry, version: Version) -> bool:
        tag = entry.if_none_match
        if tag is not None and tag in (f'W/"{version.vid}"', f'"{version.vid}"', "*"):
            return True
        since: datetime | None = entry.if_modified_since
        return since is not None and version.updated <= since

    # Response

    def _version_response(self, version: Version, ctx: _Context) -> JsonDict:
        return {
            "location": f"{ctx.base_url}/{version.resource_type}/{version.id}/_history/"
            f"{version.vid}",
            "etag": f'W/"{version.vid}"',
            "lastModified": instant(version.updated),
        }

    def _write_entry(self, result: Result, ctx: _Context) -> JsonDict:
        version = result.version
        out: JsonDict = {}
        response: JsonDict = {"status": status_text(result.status)}
        if version is not None:
            out["fullUrl"] = f"{ctx.base_url}/{version.resource_type}/{version.id}"
            response.update(self._version_response(version, ctx))
            if ctx.prefer_return == "representation" and version.resource is not None:
                out["resource"] = version.resource
        if ctx.prefer_return == "operationoutcome":
            response["outcome"] = information(status_text(result.status))
        out["response"] = response
        return out

    @staticmethod
    def _response(kind: str, entries: list[Entry], responses: dict[int, JsonDict]) -> JsonDict:
        return {
            "resourceType": "Bundle",
            "type": kind,
            "entry": [responses[entry.index] for entry in entries],
        }
