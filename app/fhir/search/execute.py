"""The search executor: query items in, a complete FHIR searchset Bundle out.

`SearchEngine.search` parses (parse.py), compiles (compile.py), resolves chains and `_has` with
indexed queries of their own (no `$lookup`), splits the filter into what the database evaluates
and what the app re-checks (plan.py), pages by keyset (paging.py), adds `_include` /
`_revinclude` (include.py) and shapes `_summary` / `_elements` (summary.py).

Restrictions are applied to every query it runs, matches, includes and subqueries alike:
`deleted: False`, the compartment of a compartment search, and the patient scope.

`_total`: `accurate` counts on every page; `none` never counts; `estimate` counts on the first
page and carries that number in the paging cursor, so following pages cost no count. By default
a first page that holds every match reports their number and any other page none: Bundle.total
is optional in R4, and a count loads every match on the embedded server.

Pages in the default `_id` order over a filter one `(field, deleted, _id)` index serves are read
in bounded `_id` windows (windows.py), so a page loads about `_count` documents, not every match.

System search without `_type` searches every type that has stored resources (one indexed query
per such type and page); with `_type` only those types. A parameter that exists for some of the
types but not all is a 400: ignoring it would return every resource of the other types.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from app.fhir import model
from app.fhir.outcome import BadRequest, issue, outcome
from app.fhir.recent import Recent
from app.fhir.search import summary
from app.fhir.search.compile import (
    DATE_CEILING,
    DATE_FLOOR,
    LAST_UPDATED_KEY,
    POINT_KEYS,
    compile_query,
    resolve_subqueries,
    sort_spec,
)
from app.fhir.search.include import Includer, IncludeSpec, forward_fields, parse_includes
from app.fhir.search.key_windows import walk_key_windows
from app.fhir.search.paging import CURSOR_PARAM, Cursor, CursorCodec, query_id
from app.fhir.search.pairs import PAIR_FIELD, pair_types
from app.fhir.search.parameters import Registry, registry
from app.fhir.search.parse import RESULT_PARAMETERS, SearchQuery, parse
from app.fhir.search.plan import SortOrder, Split, field_values, split, with_pair_condition
from app.fhir.search.windows import WidthHints, read_windows
from app.store.bodies import load_body
from app.store.indexes import keyset_fields, updated_sorted_fields
from app.store.versions import Store, instant, now_utc

JsonDict = dict[str, Any]
Doc = dict[str, Any]

TOTAL_MODES = ("none", "estimate", "accurate")
# `_lastUpdated` keys are epoch milliseconds (compile.POINT_DATES), and the walk's open ends
# (DATE_FLOOR, DATE_CEILING) lie beyond what a datetime holds.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST_MS = (datetime(1, 1, 2, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)
_LAST_MS = (datetime(9999, 12, 30, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)
_NOT_IN_FINGERPRINT = frozenset({CURSOR_PARAM, "_count", "_format", "_pretty"})
_SUPPORTED_TYPES = frozenset(
    {"number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"}
)
_DOCUMENTATION = {
    "_text": "Plain word match on the narrative: every word of the value must occur",
    "_content": "Plain word match on the narrative and every string of the resource",
    "_list": "Resources referenced by the entries of List/[id]",
}


@dataclass
class TypeSearch:
    """One resource type's part of a search, compiled and split."""

    resource_type: str
    query: SearchQuery
    split: Split
    fields: set[str] = field(default_factory=set)  # s.* fields to fetch


@dataclass
class _Controls:
    count: int
    total: str | None
    summary: str | None
    elements: set[str] | None
    includes: list[IncludeSpec]


def _last(query: SearchQuery, name: str) -> str | None:
    values = query.result_values(name)
    return values[-1] if values else None


class SearchEngine:
    """Runs FHIR searches over the store (see the module docstring for the rules)."""

    def __init__(
        self,
        store: Store,
        *,
        cursor_secret: bytes | None = None,
        search_registry: Registry | None = None,
        pair_keys_ready: Callable[[str], bool] | None = None,
        hydrate: Callable[[list[Doc]], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        # Whether every stored document of a type has its pair key (store/pair_keys.py); a
        # search may only use the key then (pairs.py).
        self.pair_keys_ready = pair_keys_ready or (lambda _resource_type: False)
        # Fills in `resource` where a store keeps it elsewhere (the audit log: its journal).
        self.hydrate = hydrate
        self.registry = search_registry or registry()
        self.codec = CursorCodec(cursor_secret)
        self.known_types = model.STORABLE_TYPES
        self.width_hints = WidthHints()
        # For `_lastUpdated` orders (key_windows.py): documents per ms by query shape, and the
        # key a first page found at either end, by (type, upward): the oldest and newest key
        # then, which later writes can only move inwards (oldest) or past the write clock.
        self.key_densities: Recent[tuple[Any, ...], float] = Recent(256)
        self.key_ends: Recent[tuple[str, bool], int] = Recent(256)
        self._selective_fields: dict[str, frozenset[str]] = {}

    # --- public API ----------------------------------------------------------------------------

    async def search(
        self,
        resource_type: str | None,
        items: list[tuple[str, str]],
        *,
        base_url: str,
        page_size: int,
        max_page_size: int,
        strict: bool = False,
        compartment: tuple[str, str] | None = None,
        patient_scope: list[str] | None = None,
        entry_patients: dict[str, list[str]] | None = None,
    ) -> JsonDict:
        """The searchset Bundle. `entry_patients`, if given, receives each entry's fullUrl →
        the patient compartments stored with it (what an audit record names), so that the
        caller need not extract them again from the resources."""
        base_url = base_url.rstrip("/")
        cursor_text = next((v for k, v in reversed(items) if k == CURSOR_PARAM), None)
        types = await self._types(resource_type, items, compartment)
        self._check_common_parameters(types, items, resource_type is None)
        now_ms = int(time.time() * 1000)
        searches: list[TypeSearch] = []
        warnings: list[str] = []
        for rtype in types:
            query = parse(rtype, items, self.registry, strict)
            warnings += [w for w in query.warnings if w not in warnings]
            searches.append(await self._compile(rtype, query, now_ms, compartment, patient_scope))
        head = searches[0].query if searches else SearchQuery(resource_type or "Resource")
        controls = self._controls(head, types, page_size, max_page_size, strict, warnings)
        order = self._result_order(head, searches)
        for search in searches:
            if search.resource_type != head.resource_type:
                order_here = tuple(sort_spec(search.query, self.registry))
                if order_here != order.spec:
                    raise BadRequest(
                        "_sort must mean the same for every type searched", expression=["_sort"]
                    )
            search.fields |= order.fields | search.split.fields()
            search.fields |= forward_fields(
                controls.includes, self.registry, search.resource_type, first_round=True
            )
        fingerprint = query_id(
            [
                types,
                list(compartment) if compartment else None,
                sorted(patient_scope) if patient_scope is not None else None,
                [[k, v] for k, v in items if k not in _NOT_IN_FINGERPRINT],
            ]
        )
        cursor = (
            self.codec.decode(cursor_text, fingerprint, len(order.spec) + 2)
            if cursor_text
            else None
        )
        page, has_more = await self._page(searches, order, cursor, controls.count)
        total = await self._total(searches, controls, cursor, page, has_more)
        included: list[tuple[str, Doc]] = []
        if controls.includes and page:
            includer = Includer(
                self.registry, self._fetch_for_include(patient_scope), self.known_types, base_url
            )
            included, include_warnings = await includer.resolve(controls.includes, page)
            warnings += include_warnings
        if self.hydrate is not None:
            await self.hydrate([doc for _, doc in (*page, *included)])
        path = self._path(base_url, resource_type, compartment)
        links = self._links(
            path, items, order, cursor, page, has_more, controls, total, fingerprint
        )
        if entry_patients is not None:
            for rtype, doc in (*page, *included):
                if "compartments" in doc:
                    entry_patients[f"{base_url}/{rtype}/{doc['_id']}"] = doc["compartments"]
        return self._bundle(base_url, page, included, total, links, warnings, controls)

    async def match_ids(
        self, resource_type: str, items: list[tuple[str, str]], limit: int = 2
    ) -> list[str]:
        """Ids of current resources matching `items` (conditional create/update/delete).

        Strict: unknown parameters are a 400. Result parameters (`_count`, `_sort`…) are ignored.
        """
        model.check_type(resource_type)
        query = parse(resource_type, items, self.registry, strict=True)
        search = await self._compile(resource_type, query, int(time.time() * 1000), None, None)
        docs = await self._select(
            resource_type, search.split, search.split.fields(), limit, resource=False
        )
        return [str(d["_id"]) for d in docs]

    def search_parameters(self, resource_type: str) -> list[JsonDict]:
        """CapabilityStatement.rest.resource.searchParam entries for what really works."""
        out: list[JsonDict] = []
        for code, param in sorted(self.registry.for_type(resource_type).items()):
            if param.param_type not in _SUPPORTED_TYPES:
                continue
            if param.extractor is None and not param.is_text_search:
                continue
            entry: JsonDict = {"name": code, "definition": param.url, "type": param.param_type}
            if code in _DOCUMENTATION:
                entry["documentation"] = _DOCUMENTATION[code]
            out.append(entry)
        if self.registry.get("List", "item") is not None:
            out.append(
                {"name": "_list", "type": "special", "documentation": _DOCUMENTATION["_list"]}
            )
        return out

    # --- request shape -------------------------------------------------------------------------

    async def _types(
        self,
        resource_type: str | None,
        items: list[tuple[str, str]],
        compartment: tuple[str, str] | None,
    ) -> list[str]:
        if resource_type is not None:
            model.check_type(resource_type)
            if compartment is not None:
                self._compartment_params(compartment, resource_type)
            return [resource_type]
        named = [t.strip() for k, v in items if k == "_type" for t in v.split(",") if t.strip()]
        for name in named:
            if name not in self.known_types:
                raise BadRequest(
                    f"Unknown resource type '{name[:60]}' in _type", expression=["_type"]
                )
        if compartment is not None:
            members = set(self.registry.compartment_members(compartment[0]))
            if not members:
                raise BadRequest(f"'{compartment[0]}' is not a compartment")
            candidates = sorted(members & self.known_types)
            if named:
                candidates = [t for t in candidates if t in named]
        else:
            candidates = sorted(dict.fromkeys(named))
        if candidates:
            return candidates
        if named:
            return []
        stored = set(await self.store.db.list_collection_names())
        return sorted(stored & self.known_types)

    def _check_common_parameters(
        self, types: list[str], items: list[tuple[str, str]], system: bool
    ) -> None:
        if not system or len(types) < 2:
            return
        for name, _ in items:
            code = name.split(":", 1)[0].split(".", 1)[0]
            if code in RESULT_PARAMETERS or code in ("_has", "_list"):
                continue
            known = [t for t in types if self.registry.get(t, code) is not None]
            if known and len(known) != len(types):
                missing = sorted(set(types) - set(known))[:5]
                raise BadRequest(
                    f"Search parameter '{code[:60]}' is not defined for {', '.join(missing)}; "
                    "a system search may only use parameters common to every type in _type",
                    expression=[name[:80]],
                )

    def _compartment_params(self, compartment: tuple[str, str], resource_type: str) -> list[str]:
        compartment_type, compartment_id = compartment
        model.check_id(compartment_id)
        if not self.registry.compartment_members(compartment_type):
            raise BadRequest(f"'{compartment_type[:40]}' is not a compartment")
        params = self.registry.compartment(compartment_type, resource_type)
        if not params:
            raise BadRequest(
                f"{resource_type} is not in the {compartment_type} compartment",
                code="not-supported",
            )
        return params

    def _controls(
        self,
        query: SearchQuery,
        types: list[str],
        page_size: int,
        max_page_size: int,
        strict: bool,
        warnings: list[str],
    ) -> _Controls:
        raw_count = _last(query, "_count")
        count = page_size
        if raw_count is not None:
            if not raw_count.isdigit():
                raise BadRequest(
                    f"_count must be a non-negative integer, got '{raw_count[:20]}'",
                    expression=["_count"],
                )
            count = int(raw_count)
        count = min(count, max_page_size)
        total = _last(query, "_total")
        if total is not None and total not in TOTAL_MODES:
            raise BadRequest(
                f"_total must be one of {', '.join(TOTAL_MODES)}", expression=["_total"]
            )
        mode = _last(query, "_summary")
        if mode is not None and mode not in summary.SUMMARY_MODES:
            raise BadRequest(
                f"_summary must be one of {', '.join(summary.SUMMARY_MODES)}",
                expression=["_summary"],
            )
        elements = summary.parse_elements(query.result_values("_elements"), types)
        if mode not in (None, "false") and elements is not None:
            raise BadRequest("_summary and _elements cannot be combined", expression=["_elements"])
        for name in ("_contained", "_containedType"):
            value = _last(query, name)
            if value is not None and value not in ("false", "container"):
                message = f"{name}={value[:20]} is not supported and was ignored"
                if strict:
                    raise BadRequest(message, expression=[name], code="not-supported")
                warnings.append(message)
        includes = parse_includes(query.result, self.registry, self.known_types)
        if mode == "count":
            count = 0
        return _Controls(count, total, mode, elements, includes)

    def _result_order(self, head: SearchQuery, searches: list[TypeSearch]) -> SortOrder:
        """The order of the results: `_sort`, ties broken by id (see sort_spec)."""
        order = SortOrder(tuple(sort_spec(head, self.registry))) if searches else SortOrder(())
        if order.by_id_only and len(searches) == 1:
            order = _changes_order(searches[0], head) or order
        return order

    # --- compiling -----------------------------------------------------------------------------

    async def _compile(
        self,
        resource_type: str,
        query: SearchQuery,
        now_ms: int,
        compartment: tuple[str, str] | None,
        patient_scope: list[str] | None,
    ) -> TypeSearch:
        compiled = compile_query(query, now_ms)
        conditions: list[Any] = [compiled] if compiled else []
        tail: JsonDict = {}
        if compartment is not None:
            compartment_type, compartment_id = compartment
            reference = f"{compartment_type}/{compartment_id}"
            if compartment_type == "Patient":
                if patient_scope is not None and reference not in patient_scope:
                    tail["_id"] = {"$in": []}
                tail["compartments"] = reference
            else:
                branches: list[JsonDict] = []
                for code in self._compartment_params(compartment, resource_type):
                    if code == "{def}":
                        if resource_type == compartment_type:
                            branches.append({"_id": compartment_id})
                    elif self.registry.get(resource_type, code) is not None:
                        branches.append({f"s.{code}": reference})
                conditions.append({"$or": branches} if branches else {"_id": {"$in": []}})
        if patient_scope is not None and "compartments" not in tail:
            tail["compartments"] = {"$in": sorted(set(patient_scope))}
        tail["deleted"] = False
        scope_tail = self._scope_tail(patient_scope)

        async def find_values(rtype: str, flt: JsonDict, wanted: str, limit: int) -> list[str]:
            part = split(flt, tail=scope_tail, selective=self._selective(rtype))
            docs = await self._select(rtype, part, {wanted} | part.fields(), limit, resource=False)
            values: list[str] = []
            for doc in docs:
                values += [str(v) for v in field_values(doc, wanted) or ()]
            return values

        resolved = await resolve_subqueries({"$and": conditions}, find_values)
        if resource_type in pair_types() and self.pair_keys_ready(resource_type):
            resolved = with_pair_condition(resolved, resource_type)
        selective = self._selective(resource_type)
        return TypeSearch(resource_type, query, split(resolved, tail=tail, selective=selective))

    def _selective(self, resource_type: str) -> frozenset[str]:
        """Fields whose one value picks few documents: identifiers and references."""
        found = self._selective_fields.get(resource_type)
        if found is None:
            params = self.registry.for_type(resource_type).items()
            found = frozenset(
                {"s.identifier", "compartments", PAIR_FIELD}
                | {f"s.{code}" for code, p in params if p.param_type == "reference"}
            )
            self._selective_fields[resource_type] = found
        return found

    @staticmethod
    def _scope_tail(patient_scope: list[str] | None) -> JsonDict:
        tail: JsonDict = {}
        if patient_scope is not None:
            tail["compartments"] = {"$in": sorted(set(patient_scope))}
        tail["deleted"] = False
        return tail

    # --- reading -------------------------------------------------------------------------------

    def _projection(self, fields: set[str], resource: bool) -> JsonDict:
        projection: JsonDict = {f: 1 for f in sorted(fields) if f != "_id"}
        if resource:
            projection["resource"] = 1
            projection["compartments"] = 1
        return projection or {"_id": 1}

    async def _select(
        self, resource_type: str, part: Split, fields: set[str], limit: int, *, resource: bool
    ) -> list[Doc]:
        """Up to `limit` current documents meeting `part` (flat in the database, residual here)."""
        if _impossible(part.flat):
            return []
        collection = self.store.current(resource_type)
        projection = self._projection(fields, resource)
        if not part.residual:
            docs: list[Doc] = (
                await collection.find(part.flat, projection).limit(limit).to_list(None)
            )
            return docs
        out: list[Doc] = []
        async for doc in collection.find(part.flat, projection):
            if part.holds(doc):
                out.append(doc)
                if len(out) >= limit:
                    break
        return out

    def _fetch_for_include(self, patient_scope: list[str] | None) -> Any:
        tail = self._scope_tail(patient_scope)

        async def fetch(rtype: str, flt: JsonDict, fields: set[str], limit: int) -> list[Doc]:
            part = split(flt, tail=tail, selective=self._selective(rtype))
            return await self._select(rtype, part, fields, limit, resource=True)

        return fetch

    async def _page(
        self, searches: list[TypeSearch], order: SortOrder, cursor: Cursor | None, count: int
    ) -> tuple[list[tuple[str, Doc]], bool]:
        """The page's (type, document) pairs in result order, and whether more lie beyond."""
        if count == 0 or not searches:
            return [], False
        forward = cursor is None or cursor.forward
        found: list[tuple[tuple[Any, ...], str, Doc]] = []
        for search in searches:
            docs = await self._type_page(search, order, cursor, count + 1)
            found += [(order.key(d, search.resource_type), search.resource_type, d) for d in docs]
        found.sort(key=lambda item: item[0], reverse=not forward)
        has_more = len(found) > count
        chosen = found[:count]
        if not forward:
            chosen.reverse()
        return [(rtype, doc) for _, rtype, doc in chosen], has_more

    async def _type_page(
        self, search: TypeSearch, order: SortOrder, cursor: Cursor | None, want: int
    ) -> list[Doc]:
        """Up to `want` documents of one type beyond the cursor, nearest to it first."""
        if order.by_id_only and self._keyset_served(search):
            return await self._windowed_page(search, order, cursor, want)
        if self._key_windowed(search, order, cursor):
            return await self._key_windowed_page(search, order, cursor, want)
        part = Split(dict(search.split.flat), list(search.split.residual))
        forward = cursor is None or cursor.forward
        beyond: tuple[Any, ...] | None = None
        exact_bound = False
        if cursor is not None:
            beyond = order.comparable(cursor.key)
            bound, exact_bound = order.bound(cursor.key, search.resource_type, forward=forward)
            if bound is not None:
                ((name, condition),) = bound.items()
                if name in part.flat:
                    part.residual.append(bound)
                else:
                    part.flat = {name: condition, **part.flat}
        if _impossible(part.flat):
            return []
        collection = self.store.current(search.resource_type)
        projection = self._projection(search.fields | part.fields(), resource=True)
        in_database_order = forward or order.by_id_only
        sort = order.mongo_sort(reverse=not forward)
        cursor_db = collection.find(part.flat, projection).sort(sort)
        if not part.residual and (cursor is None or exact_bound):
            docs: list[Doc] = await cursor_db.limit(want).to_list(None)
            return docs
        kept: list[Doc] = []
        async for doc in cursor_db:
            if not part.holds(doc):
                continue
            if beyond is not None:
                key = order.key(doc, search.resource_type)
                if (key <= beyond) if forward else (key >= beyond):
                    continue
            kept.append(doc)
            if in_database_order and len(kept) >= want:
                break
        if not in_database_order:
            kept.sort(key=lambda d: order.key(d, search.resource_type), reverse=True)
        return kept[:want]

    @staticmethod
    def _keyset_served(search: TypeSearch) -> bool:
        """Whether the database filter is one `(field, deleted, _id)` index prefix (see
        store/indexes.py). Windows over any other filter would reload the driving clause's
        matches once per window on the embedded server."""
        flat = search.split.flat
        if len(flat) != 2 or flat.get("deleted") is not False:
            return False
        ((name, condition),) = [(k, v) for k, v in flat.items() if k != "deleted"]
        plain = not isinstance(condition, dict | list)
        return plain and name in keyset_fields(search.resource_type)

    @staticmethod
    def _key_windowed(search: TypeSearch, order: SortOrder, cursor: Cursor | None) -> bool:
        """Whether the page is sorted by a point-valued date alone (then `_id`), which windows
        of that key serve (key_windows.py), and the database filter holds nothing else, or else
        only an equality whose `(field, deleted, updated)` index bounds each window to that
        field's value (`code=X&_sort=-_lastUpdated`). Any other indexed condition would drive
        every window's query on the embedded server, which would reload all its matches once
        per window; a plain sort of them is cheaper."""
        if len(order.spec) != 2 or order.spec[0][0] not in POINT_KEYS:
            return False
        if cursor is not None and not isinstance(cursor.key[0], int):
            return False
        key = order.spec[0][0]
        flat = search.split.flat
        return _filters_only_on(flat, key) or _updated_partner(search, key) is not None

    async def _key_windowed_page(
        self, search: TypeSearch, order: SortOrder, cursor: Cursor | None, want: int
    ) -> list[Doc]:
        """`_type_page` for a `_lastUpdated` order, read in bounded windows of the key."""
        part = search.split
        forward = cursor is None or cursor.forward
        field, direction = order.spec[0]
        rtype = search.resource_type
        # A condition on the key itself bounds the walk instead of joining each window's filter.
        lowest, highest = _key_bounds(part.flat.get(field, {})) or (DATE_FLOOR, DATE_CEILING)
        rest = {name: condition for name, condition in part.flat.items() if name != field}
        beyond = order.comparable(cursor.key) if cursor is not None else None
        collection = self.store.current(rtype)
        projection = self._projection(search.fields | part.fields(), resource=True)

        def key_of(doc: Doc) -> int:
            return int(order.raw_key(doc, rtype)[0])

        partner = _updated_partner(search, field)

        def window_query(window: JsonDict) -> Any:
            if partner is not None:
                # One range of the `(partner, deleted, updated)` index: `updated` is the instant
                # the key holds. Both planners pick that index for this filter by themselves;
                # the embedded server, told to use it by name, scans it whole (24 s, not 0.1 s).
                instants = {op: _instant_of(ms) for op, ms in window.items()}
                flt = {partner: rest[partner], "deleted": False, "updated": instants}
                return collection.find(flt, projection)
            # The window goes first: the embedded server's planner takes the index of the first
            # indexed field it meets.
            return collection.find({field: window, **rest}, projection)

        async def fetch(window: JsonDict) -> list[Doc]:
            kept: list[Doc] = []
            async for doc in window_query(window):
                if not part.holds(doc):
                    continue
                if beyond is not None:
                    key = order.key(doc, rtype)
                    if (key <= beyond) if forward else (key >= beyond):
                        continue
                kept.append(doc)
            kept.sort(key=lambda doc: order.key(doc, rtype), reverse=not forward)
            return kept

        upward = (direction == 1) == forward
        shape = (rtype, field, upward, tuple(sorted(rest)), bool(part.residual))
        written, first = self.store.clock.newest(rtype), self.store.clock.oldest(rtype)
        newest = max(
            int((written.timestamp() if written else time.time()) * 1000),
            self.key_ends.get((rtype, False)) or 0,
        )
        oldest = max(
            int(first.timestamp() * 1000) if first else 0,
            self.key_ends.get((rtype, True)) or 0,
        )
        docs, density = await walk_key_windows(
            fetch,
            upward=upward,
            start=cursor.key[0] if cursor is not None else None,
            want=want,
            lowest=lowest,
            highest=highest,
            newest=newest,
            key_of=key_of,
            density=self.key_densities.get(shape),
            oldest=oldest or None,
        )
        if density:
            self.key_densities.learn(shape, density)
        # The ends of the type's keys, so only from searches that could see every document.
        unfiltered = not part.residual and field not in part.flat and partner is None
        if docs and cursor is None and unfiltered:
            self.key_ends.learn((rtype, upward), key_of(docs[0]))
        return docs

    async def _windowed_page(
        self, search: TypeSearch, order: SortOrder, cursor: Cursor | None, want: int
    ) -> list[Doc]:
        """`_type_page` for the `_id` order, read in bounded `_id` windows (see windows.py)."""
        part = search.split
        if _impossible(part.flat):
            return []
        forward = cursor is None or cursor.forward
        ((_, direction),) = order.spec
        upward = (direction == 1) == forward
        start: str | None = None
        inclusive = False
        if cursor is not None:
            bound, _ = order.bound(cursor.key, search.resource_type, forward=forward)
            assert bound is not None  # an `_id` order always has an exact bound
            ((operator, value),) = bound["_id"].items()
            start, inclusive = str(value), operator.endswith("e")
        collection = self.store.current(search.resource_type)
        projection = self._projection(search.fields | part.fields(), resource=True)
        sort = [("_id", 1 if upward else -1)]

        async def fetch(window: JsonDict, limit: int) -> list[Doc]:
            # The window goes last: the embedded server drives a filter it cannot serve from one
            # compound index by the first indexed field, and that must stay the selective one.
            flt = {**part.flat, "_id": window} if window else part.flat
            found = collection.find(flt, projection).sort(sort)
            if not part.residual:
                docs: list[Doc] = await found.limit(limit).to_list(None)
                return docs
            kept: list[Doc] = []
            async for doc in found:
                if part.holds(doc):
                    kept.append(doc)
                    if len(kept) >= limit:
                        break
            return kept

        shape = (search.resource_type, upward, tuple(sorted(part.flat)), bool(part.residual))
        docs, hint = await read_windows(
            fetch,
            start=start,
            inclusive=inclusive,
            forward=upward,
            want=want,
            hint=self.width_hints.get(shape),
        )
        self.width_hints.learn(shape, hint)
        return docs

    async def _count(self, search: TypeSearch) -> int:
        part = search.split
        if _impossible(part.flat):
            return 0
        collection = self.store.current(search.resource_type)
        if not part.residual:
            return int(await collection.count_documents(part.flat))
        total = 0
        async for doc in collection.find(part.flat, self._projection(part.fields(), False)):
            if part.holds(doc):
                total += 1
        return total

    async def _total(
        self,
        searches: list[TypeSearch],
        controls: _Controls,
        cursor: Cursor | None,
        page: list[tuple[str, Doc]],
        has_more: bool,
    ) -> int | None:
        mode = controls.total
        if mode == "none":
            return None
        if mode != "accurate" and cursor is not None:
            return cursor.total
        if cursor is None and controls.count > 0 and not has_more:
            return len(page)
        if mode is None and controls.count > 0:
            # Bundle.total is optional (R4 bundle.html); counting loads every match on the
            # embedded server (10,000 matches: ~800 ms), so it is left out unless asked for.
            return None
        return sum([await self._count(search) for search in searches])

    # --- the bundle ----------------------------------------------------------------------------

    @staticmethod
    def _path(base_url: str, resource_type: str | None, compartment: tuple[str, str] | None) -> str:
        if compartment is not None:
            return f"{base_url}/{compartment[0]}/{compartment[1]}/{resource_type or '*'}"
        if resource_type is None:
            return base_url
        return f"{base_url}/{resource_type}"

    def _links(
        self,
        path: str,
        items: list[tuple[str, str]],
        order: SortOrder,
        cursor: Cursor | None,
        page: list[tuple[str, Doc]],
        has_more: bool,
        controls: _Controls,
        total: int | None,
        fingerprint: str,
    ) -> list[JsonDict]:
        kept = [(k, v) for k, v in items if k != CURSOR_PARAM]

        def url(pairs: list[tuple[str, str]]) -> str:
            return f"{path}?{urlencode(pairs)}" if pairs else path

        def with_cursor(forward: bool, key: tuple[Any, ...]) -> str:
            token = self.codec.encode(Cursor(forward, key, total), fingerprint)
            return url([*kept, (CURSOR_PARAM, token)])

        links = [{"relation": "self", "url": url(items)}, {"relation": "first", "url": url(kept)}]
        if not page or controls.count == 0:
            return links
        forward = cursor is None or cursor.forward
        first_key = order.raw_key(page[0][1], page[0][0])
        last_key = order.raw_key(page[-1][1], page[-1][0])
        has_next = has_more if forward else True
        has_previous = cursor is not None if forward else has_more
        if has_next:
            links.append({"relation": "next", "url": with_cursor(True, last_key)})
        if has_previous:
            links.append({"relation": "previous", "url": with_cursor(False, first_key)})
        return links

    def _shape(self, resource: JsonDict, controls: _Controls) -> JsonDict:
        if controls.elements is not None:
            return summary.select_elements(resource, controls.elements)
        if controls.summary is not None:
            return summary.summarize(resource, controls.summary)
        return resource

    def _bundle(
        self,
        base_url: str,
        page: list[tuple[str, Doc]],
        included: list[tuple[str, Doc]],
        total: int | None,
        links: list[JsonDict],
        warnings: list[str],
        controls: _Controls,
    ) -> JsonDict:
        entries: list[JsonDict] = []
        for mode, docs in (("match", page), ("include", included)):
            for rtype, doc in docs:
                entries.append(
                    {
                        "fullUrl": f"{base_url}/{rtype}/{doc['_id']}",
                        "resource": self._shape(load_body(doc["resource"]), controls),
                        "search": {"mode": mode},
                    }
                )
        if warnings:
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": outcome(*(issue("warning", "not-supported", w) for w in warnings)),
                    "search": {"mode": "outcome"},
                }
            )
        bundle: JsonDict = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": instant(now_utc())},
            "type": "searchset",
        }
        if total is not None:
            bundle["total"] = total
        bundle["link"] = links
        if entries:
            bundle["entry"] = entries
        return bundle


def _changes_order(search: TypeSearch, query: SearchQuery) -> SortOrder | None:
    """The order of a search for what changed in a time range (`_lastUpdated=gt…`, no `_sort`,
    nothing else but an equality with a `(field, deleted, updated)` index, such as
    Observation's `code`): oldest change first. R4 leaves the order of an unsorted search to the
    server; this one is read through windows of the indexed key (key_windows.py), where `_id`
    order would load every match on the embedded server before its first page."""
    if query.result_values("_sort"):
        return None
    flat = search.split.flat
    for key in POINT_KEYS & flat.keys():
        if _filters_only_on(flat, key) or _updated_partner(search, key) is not None:
            return SortOrder(((key, 1), ("_id", 1)))
    return None


def _instant_of(epoch_ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=min(max(epoch_ms, _FIRST_MS), _LAST_MS))


def _updated_partner(search: TypeSearch, key: str) -> str | None:
    """For a `_lastUpdated` key: the field of the one plain equality that, with `deleted` and a
    range on the key, is the whole database filter, when it has a `(field, deleted, updated)`
    index (store/indexes.py UPDATED_SORTED); else None."""
    if key != LAST_UPDATED_KEY:
        return None
    flat = search.split.flat
    if flat.get("deleted") is not False or (key in flat and _key_bounds(flat[key]) is None):
        return None
    others = [name for name in flat if name not in ("deleted", key)]
    if len(others) != 1 or others[0] not in updated_sorted_fields(search.resource_type):
        return None
    value = flat[others[0]]
    return others[0] if not isinstance(value, dict | list) else None


def _filters_only_on(flat: JsonDict, key: str) -> bool:
    """Whether the database filter holds nothing but `deleted` and a range on `key`, which
    then bounds a walk through windows of that key instead of joining each window's filter."""
    if key in flat and _key_bounds(flat[key]) is None:
        return False
    return all(name in ("deleted", key) for name in flat)


def _key_bounds(condition: Any) -> tuple[int, int] | None:
    """The inclusive [low, high] of a range condition on an epoch-ms key, or None if it is not
    one (an exact value, `$in`, anything else)."""
    if not isinstance(condition, dict) or not condition:
        return None
    low, high = DATE_FLOOR, DATE_CEILING
    for operator, value in condition.items():
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        if operator == "$gt":
            low = max(low, value + 1)
        elif operator == "$gte":
            low = max(low, value)
        elif operator == "$lt":
            high = min(high, value - 1)
        elif operator == "$lte":
            high = min(high, value)
        else:
            return None
    return low, high


def _impossible(flat: JsonDict) -> bool:
    """A condition `$in: []` can match nothing; skip the round trip."""
    return any(isinstance(c, dict) and c.get("$in") == [] for c in flat.values())
