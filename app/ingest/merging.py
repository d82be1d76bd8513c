"""What a mapped message means against what is stored: partial updates and patient merges.

The mapper cannot see the database, so it returns merge plans (A08/A31 partial updates, PIDs
in result messages) and merge instructions (A40/A34). Both are resolved here, inside the
transaction that writes the message, from the stored current versions read in that same
transaction, so a concurrent writer can only make the transaction retry, never be overwritten.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession

from app.store.versions import Store
from mappers.hl7v2 import MappingResult, MergeInstruction, merge_resource

JsonDict = dict[str, Any]

# Provenance and AuditEvent record what happened, not what is: their references stay as
# written. Patient links state identity relations (the merge writes its own two Patients).
_NEVER_REPOINTED = frozenset({"Provenance", "AuditEvent", "Patient"})


async def resolve_entries(
    store: Store,
    session: AsyncClientSession,
    result: MappingResult,
    *,
    skip: Iterable[str] = (),
    current: Mapping[str, JsonDict | None] | None = None,
) -> list[JsonDict]:
    """The mapped Bundle's entries with every planned resource merged into its stored version.

    `skip` names entries (by `Type/id`) to leave out, e.g. the Provenance written separately.
    `current` holds current-collection documents already read in `session` (by `Type/id`,
    None: never stored); others are read here.
    """
    skipped = set(skip)
    entries: list[JsonDict] = []
    for entry in result.bundle["entry"]:
        url = entry["request"]["url"]
        if url in skipped:
            continue
        plan = result.plan_for(entry)
        if plan is not None:
            kind, _, resource_id = url.partition("/")
            if current is not None and url in current:
                doc = current[url]
            else:
                doc = await store.read_current(kind, resource_id, session)
            stored = doc["resource"] if doc and not doc.get("deleted") else None
            entry = {**entry, "resource": merge_resource(stored, entry["resource"], plan)}
        entries.append(entry)
    return entries


async def repoint_references(
    store: Store,
    session: AsyncClientSession,
    merges: Iterable[MergeInstruction],
    compartment_types: Iterable[str],
    *,
    exclude: Iterable[str] = (),
) -> list[JsonDict]:
    """PUT entries moving every resource of each old patient's compartment to the survivor.

    Each resource that references `Patient/<old>` (found through the stored `compartments`
    field) gets those references rewritten to the survivor. `exclude` names resources the
    caller writes itself.
    """
    excluded = set(exclude)
    # listCollections cannot run in a transaction, so it runs before. What it misses is a
    # resource type whose very first document is written while the merge runs.
    existing = set(await store.db.list_collection_names())
    entries: list[JsonDict] = []
    for merge in merges:
        for kind in sorted(set(compartment_types) & existing - _NEVER_REPOINTED):
            docs = await store.find(
                kind,
                {"compartments": merge.old, "deleted": False},
                projection={"resource": 1},
                session=session,
            )
            for doc in docs:
                url = f"{kind}/{doc['_id']}"
                if url in excluded:
                    continue
                moved = _replace_reference(doc["resource"], merge.old, merge.new)
                moved.pop("meta", None)
                entries.append({"resource": moved, "request": {"method": "PUT", "url": url}})
                excluded.add(url)
    return entries


def _replace_reference(resource: JsonDict, old: str, new: str) -> JsonDict:
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if key == "reference" and isinstance(item, str) and item == old:
                    out[key] = new
                else:
                    out[key] = walk(item)
            return out
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    result: JsonDict = walk(copy.deepcopy(resource))
    return result
