"""Search indexes on the current-version collections.

Every index slows every write of its type (measured on the embedded server: 653 inserts/s with
no search index, 277/s with 8, 71/s with all 51 Observation parameters), so only the keys that
real workloads filter on get one:

- `compartments` for types in the Patient compartment (compartment search, patient scopes);
- `identifier` (conditional create/update, integration look-ups);
- the patient links `patient` and `subject`, plus `encounter` (includes, reverse includes,
  `_has`, chains all land on these);
- `code` and `date` (both range ends) for the clinical types;
- the pair key `patient+code` (fhir/search/pairs.py) where a type has both parameters: a
  patient's results for a code are one index range, not all the patient's resources;
- `_lastUpdated` (its low end) for every type: incremental sync filters and sorts on it; and
  `(s.code, deleted, updated)` on Observation, for `code=X&_sort=±_lastUpdated`
  (UPDATED_SORTED below);
- names (`name`, `family`, `given` prefixes) and `birthdate` for the person-like types,
  `name` for the directory types, and `url` for the canonical (conformance) types.

Other parameters still work: their filter is evaluated on the documents an indexed condition
found, or on a collection scan when the search has no indexed condition at all.

Equality-searched keys (tokens, references, string prefixes, `compartments`) get a compound
index `(key, deleted, _id)`; the range-searched date ends stay single-field. The compound form
serves `{key: v, deleted: false}` in `_id` order, the default result order, so a page reads only
the next `_count + 1` entries: MongoDB walks the index and stops at the limit, and the embedded
server (which loads every match before it limits) serves the bounded `_id` windows of
fhir/search/windows.py from one index range. Measured with 85,000 Observations:
`Observation?code=X&_count=50` went from ~800 ms per page (all 10,000 matches loaded) to the
cost of one window. MongoDB allows one array field per compound index: `s.*` and
`compartments` are arrays, `deleted` and `_id` are scalars. Two `s.*` keys never share an index.

Creating indexes is idempotent and takes about 1 ms per index on an empty collection, so
`ensure_search_indexes` runs at start-up for every type; it also drops the single-field indexes
earlier versions created on the same keys, which only slow writes now.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from pymongo import ASCENDING, IndexModel

from app.fhir.search.compile import LAST_UPDATED_KEY
from app.fhir.search.pairs import PAIR_FIELD, pair_types
from app.fhir.search.parameters import registry
from app.store.versions import Store

_CLINICAL_LINKS = ("patient", "subject", "encounter")
_PERSON_TYPES = frozenset({"Patient", "Practitioner", "RelatedPerson", "Person"})
_DIRECTORY_TYPES = frozenset(
    {"Organization", "Location", "HealthcareService", "Endpoint", "InsurancePlan"}
)


KEYSET_SUFFIX = ("deleted", "_id")
# Equality keys that also get `(key, deleted, updated)`: `code=X&_sort=-_lastUpdated` is then one
# bounded index range per window of `updated` (fhir/search/key_windows.py), where the keyset
# index made the embedded server load and sort every match (4 s for a code on 20,000 of
# 90,000 Observations). Only Observation's `code`: the one equality whose matches run to a
# large part of a big collection in real searches (the latest results of a test), and every
# index costs writes (on every type with a code, this one cost 10% of the store's write rate).
# `updated` is the instant `_lastUpdated` holds, and a scalar: MongoDB indexes one array field
# per compound index, and `s._lastUpdated:lo` is an array.
UPDATED_SUFFIX = ("deleted", "updated")
UPDATED_SORTED = {"Observation": frozenset({"s.code"})}


def _is_range_field(name: str) -> bool:
    return name.endswith((":lo", ":hi"))


def index_name(field_name: str) -> str:
    return field_name if _is_range_field(field_name) else f"{field_name}+deleted+_id"


def index_keys(field_name: str) -> list[tuple[str, int]]:
    if _is_range_field(field_name):
        return [(field_name, ASCENDING)]
    return [(field_name, ASCENDING), *((f, ASCENDING) for f in KEYSET_SUFFIX)]


def updated_index_name(field_name: str) -> str:
    return f"{field_name}+deleted+updated"


@cache
def updated_sorted_fields(resource_type: str) -> frozenset[str]:
    """Fields with a `(field, deleted, updated)` index as well (see UPDATED_SORTED)."""
    return keyset_fields(resource_type) & UPDATED_SORTED.get(resource_type, frozenset())


@cache
def keyset_fields(resource_type: str) -> frozenset[str]:
    """Fields with a `(field, deleted, _id)` index: `{field: v, deleted: false}` pages by `_id`
    from one index range."""
    return frozenset(f for f in search_index_fields(resource_type) if not _is_range_field(f))


def search_index_fields(resource_type: str) -> list[str]:
    """The indexed fields of a type's current collection (see the module docstring)."""
    reg = registry()
    params = reg.for_type(resource_type)
    fields: list[str] = []

    def add(code: str) -> None:
        param = params.get(code)
        if param is None or param.extractor is None or param.resource_type == "Resource":
            return
        if param.param_type == "date":
            fields.extend((f"s.{code}:lo", f"s.{code}:hi"))
        elif param.param_type == "string":
            fields.append(f"s.{code}:p")
        else:
            fields.append(f"s.{code}")

    # `_lastUpdated` is what a client syncing changes filters and sorts on, for every type; its
    # values are instants, so one end serves both (fhir/search/compile.py POINT_DATES).
    fields.append(LAST_UPDATED_KEY)
    if resource_type == "Patient" or reg.patient_compartment(resource_type):
        fields.append("compartments")
    for code in ("identifier", *_CLINICAL_LINKS, "code", "date"):
        add(code)
    if resource_type in _PERSON_TYPES:
        for code in ("name", "family", "given", "birthdate"):
            add(code)
    if resource_type in _DIRECTORY_TYPES:
        add("name")
    add("url")
    if resource_type in pair_types():
        fields.append(PAIR_FIELD)
    return list(dict.fromkeys(fields))


async def ensure_search_indexes(store: Store, resource_types: Sequence[str]) -> None:
    """Create the search indexes of each type (no-op for those that exist)."""
    for resource_type in resource_types:
        fields = search_index_fields(resource_type)
        if not fields:
            continue
        collection = store.current(resource_type)
        models = [IndexModel(index_keys(f), name=index_name(f)) for f in fields]
        models += [
            IndexModel(
                [(f, ASCENDING), *((g, ASCENDING) for g in UPDATED_SUFFIX)],
                name=updated_index_name(f),
            )
            for f in sorted(updated_sorted_fields(resource_type))
        ]
        wanted = {model.document["name"] for model in models}
        existing = [index["name"] async for index in await collection.list_indexes()]
        for name in existing:
            if _is_ours(name) and name not in wanted:
                await collection.drop_index(name)
        await collection.create_indexes(models)


def _is_ours(name: str) -> bool:
    return name.startswith("s.") or name.startswith("compartments")
