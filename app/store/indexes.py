"""Search indexes on the current-version collections.

Every index slows every write of its type (measured on the embedded server: 653 inserts/s with
no search index, 277/s with 8, 71/s with all 51 Observation parameters), so only the keys that
real workloads filter on get one:

- `compartments` for types in the Patient compartment (compartment search, patient scopes);
- `identifier` (conditional create/update, integration look-ups);
- the patient links `patient` and `subject`, plus `encounter` (includes, reverse includes,
  `_has`, chains all land on these);
- `code` and `date` (both range ends) for the clinical types;
- names (`name`, `family`, `given` prefixes) and `birthdate` for the person-like types,
  `name` for the directory types, and `url` for the canonical (conformance) types.

Other parameters still work: their filter is evaluated on the documents an indexed condition
found, or on a collection scan when the search has no indexed condition at all.

Indexes are single-field: `s.*` fields are arrays and MongoDB refuses a compound index over two
array fields of one document. Creating them is idempotent and takes about 1 ms per index on an
empty collection, so `ensure_search_indexes` runs at start-up for every type.
"""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import ASCENDING, IndexModel

from app.fhir.search.parameters import registry
from app.store.versions import Store

_CLINICAL_LINKS = ("patient", "subject", "encounter")
_PERSON_TYPES = frozenset({"Patient", "Practitioner", "RelatedPerson", "Person"})
_DIRECTORY_TYPES = frozenset(
    {"Organization", "Location", "HealthcareService", "Endpoint", "InsurancePlan"}
)


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
    return list(dict.fromkeys(fields))


async def ensure_search_indexes(store: Store, resource_types: Sequence[str]) -> None:
    """Create the search indexes of each type (no-op for those that exist)."""
    for resource_type in resource_types:
        fields = search_index_fields(resource_type)
        if fields:
            await store.current(resource_type).create_indexes(
                [IndexModel([(f, ASCENDING)], name=f) for f in fields]
            )
