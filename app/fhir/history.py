"""The history interaction at instance, type and system level (R4 http.html#history).

Versions are listed newest first and paged by keyset on (updated, _id), so a page link stays
correct while new versions arrive: they sort before the cursor and never shift later pages.

Type and system history read each page through bounded `updated` windows (history_windows.py)
and carry no `total` (optional in a history Bundle): counting 100,000 versions would cost what
reading them all costs. A client that asks for the count alone (`_count=0`) gets it. Instance
history is one narrow index range and keeps its total.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pymongo import DESCENDING

from app.fhir.dates import parse_instant_range
from app.fhir.history_windows import EPOCH, densities, newest_first
from app.fhir.outcome import BadRequest
from app.store.versions import Store, instant
from app.store.write_clock import ALL_TYPES

JsonDict = dict[str, Any]

SORT = [("updated", DESCENDING), ("_id", DESCENDING)]
AT_SCAN_LIMIT = 50_000


@dataclass
class HistoryPage:
    entries: list[JsonDict]
    total: int | None
    next_cursor: str | None


def encode_cursor(updated: datetime, key: str) -> str:
    raw = orjson.dumps([int(updated.timestamp() * 1000), key])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        millis, key = orjson.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromtimestamp(int(millis) / 1000, UTC), str(key)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadRequest("The paging cursor is not valid", expression=["_cursor"]) from None


def scope_filter(resource_type: str | None, resource_id: str | None) -> JsonDict:
    query: JsonDict = {}
    if resource_type:
        query["type"] = resource_type
    if resource_id:
        query["id"] = resource_id
    return query


async def history(
    store: Store,
    resource_type: str | None,
    resource_id: str | None,
    *,
    count: int,
    since: str | None = None,
    at: str | None = None,
    cursor: str | None = None,
    with_total: bool = True,
) -> HistoryPage:
    query = scope_filter(resource_type, resource_id)
    if since:
        low, _ = parse_instant_range(since, "_since")
        query["updated"] = {"$gte": low}
    if at:
        return await _history_at(store, query, at, count, cursor)
    if resource_id is None:
        return await _windowed(store, resource_type, query, count, cursor)
    total = await store.count_history(query) if with_total else None
    if count == 0:
        return HistoryPage([], total, None)
    if cursor:
        updated, key = decode_cursor(cursor)
        query = {
            "$and": [
                query,
                {"$or": [{"updated": {"$lt": updated}}, {"updated": updated, "_id": {"$lt": key}}]},
            ]
        }
    docs = await store.find_history(query, limit=count + 1, sort=SORT)
    next_cursor = None
    if len(docs) > count:
        docs = docs[:count]
        next_cursor = encode_cursor(docs[-1]["updated"], docs[-1]["_id"])
    return HistoryPage(docs, total, next_cursor)


DENSITIES = densities()


async def _windowed(
    store: Store, resource_type: str | None, query: JsonDict, count: int, cursor: str | None
) -> HistoryPage:
    """A type or system history page, read in `updated` windows back from the cursor."""
    if count == 0:
        return HistoryPage([], await store.count_history(query), None)
    floor = query.pop("updated", {}).get("$gte", EPOCH)
    before: datetime | None = None
    key = ""
    if cursor:
        before, key = decode_cursor(cursor)

    def beyond(doc: JsonDict) -> bool:
        return before is None or (doc["updated"], doc["_id"]) < (before, key)

    async def fetch(window: JsonDict) -> list[JsonDict]:
        return await store.find_history({**query, "updated": window}, limit=0, sort=SORT)

    scope = resource_type or ALL_TYPES
    docs, density = await newest_first(
        fetch,
        before=before,
        newest=store.clock.newest(scope),
        beyond=beyond,
        floor=floor,
        want=count + 1,
        density=DENSITIES.get(scope),
    )
    if density:
        DENSITIES.learn(scope, density)
    if docs and before is None:
        # The newest version of the scope: a restarted server need not walk back to it.
        store.clock.note(resource_type or str(docs[0]["type"]), docs[0]["updated"])
        await store.persist_clock()
    next_cursor = None
    if len(docs) > count:
        docs = docs[:count]
        next_cursor = encode_cursor(docs[-1]["updated"], docs[-1]["_id"])
    return HistoryPage(docs, None, next_cursor)


async def _history_at(
    store: Store, query: JsonDict, at: str, count: int, cursor: str | None
) -> HistoryPage:
    """Versions that were current at some point during the `_at` value's precision range.

    That is every version written inside the range, plus, for each resource, the version that
    was current when the range began. The second part needs each resource's newest version
    before the range; it is computed from an index scan bounded by AT_SCAN_LIMIT.
    """
    low, high = parse_instant_range(at, "_at")
    inside = await store.find_history(
        {**query, "updated": {"$gte": low, "$lte": high}}, limit=AT_SCAN_LIMIT, sort=SORT
    )
    before = await store.find_history(
        {**query, "updated": {"$lt": low}}, limit=AT_SCAN_LIMIT, sort=SORT
    )
    newest_before: dict[tuple[str, str], JsonDict] = {}
    for doc in before:
        newest_before.setdefault((doc["type"], doc["id"]), doc)
    docs = inside + [d for d in newest_before.values() if d.get("resource") is not None]
    docs.sort(key=lambda d: (d["updated"], d["_id"]), reverse=True)
    total = len(docs)
    if cursor:
        updated, key = decode_cursor(cursor)
        docs = [d for d in docs if (d["updated"], d["_id"]) < (updated, key)]
    next_cursor = None
    if count == 0:
        docs = []
    elif len(docs) > count:
        docs = docs[:count]
        next_cursor = encode_cursor(docs[-1]["updated"], docs[-1]["_id"])
    return HistoryPage(docs, total, next_cursor)


def _entry(doc: JsonDict, base: str) -> JsonDict:
    resource_type, resource_id, vid = doc["type"], doc["id"], doc["vid"]
    method = doc.get("method", "PUT")
    url = resource_type if method == "POST" else f"{resource_type}/{resource_id}"
    status = {"POST": "201 Created", "DELETE": "204 No Content"}.get(
        method, "201 Created" if vid == 1 else "200 OK"
    )
    entry: JsonDict = {"fullUrl": f"{base}/{resource_type}/{resource_id}"}
    if doc.get("resource") is not None:
        entry["resource"] = doc["resource"]
    entry["request"] = {"method": method, "url": url}
    entry["response"] = {
        "status": status,
        "etag": f'W/"{vid}"',
        "lastModified": instant(doc["updated"]),
    }
    return entry


def history_bundle(page: HistoryPage, base: str, self_url: str, next_url: str | None) -> JsonDict:
    bundle: JsonDict = {"resourceType": "Bundle", "type": "history"}
    if page.total is not None:
        bundle["total"] = page.total
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    bundle["link"] = links
    bundle["entry"] = [_entry(doc, base) for doc in page.entries]
    return bundle
