"""Writing mapped resources inside an ingestion transaction, shared by the CSV and DICOM feeds.

Feeds re-send what they sent before (re-uploads, overlapping extracts, re-processing after a
map fix). A resource whose content equals its stored current version is therefore not written
again: no new version, no Provenance target, so a re-upload leaves the history untouched.

Every version written records the source payload (`raw`), and one Provenance per write
transaction names the exact versions as targets and `Binary/<payload id>` as its source.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard

from app.fhir.interactions import Interactions, UnitOfWork
from app.store.versions import Version

JsonDict = dict[str, Any]
AGENT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"


@dataclass
class WriteCounts:
    created: list[Version] = field(default_factory=list)
    updated: list[Version] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # "Type/id"

    @property
    def written(self) -> list[Version]:
        return [*self.created, *self.updated]


def versioned(version: Version) -> str:
    return f"{version.resource_type}/{version.id}/_history/{version.vid}"


def _content(resource: JsonDict) -> JsonDict:
    return {k: v for k, v in resource.items() if k != "meta"}


def unchanged(stored: JsonDict | None, resource: JsonDict) -> TypeGuard[JsonDict]:
    """Whether `resource` says exactly what the live current document `stored` holds (meta
    aside), so writing it would only add a version identical to the last."""
    return (
        stored is not None
        and not stored.get("deleted")
        and _content(stored["resource"]) == _content(resource)
    )


async def current_docs(
    interactions: Interactions, uow: UnitOfWork, kind: str, ids: Sequence[str]
) -> dict[str, JsonDict]:
    """The live current documents of `ids`, read in the transaction with one query."""
    found = await interactions.store.read_current_many(kind, ids, uow.session)
    return {key: doc for key, doc in found.items() if not doc.get("deleted")}


async def put_all(
    interactions: Interactions, uow: UnitOfWork, resources: Iterable[JsonDict]
) -> WriteCounts:
    """Stage every resource (each has its deterministic id) unless unchanged; validates each.

    Current versions are read in bulk per type first; a resource not stored yet is staged as
    a create (an insert, which conflicts and retries if another writer created it meanwhile).
    """
    counts = WriteCounts()
    by_type: dict[str, list[JsonDict]] = {}
    for resource in resources:
        by_type.setdefault(str(resource["resourceType"]), []).append(resource)
    for kind, items in by_type.items():
        stored = await current_docs(interactions, uow, kind, [str(r["id"]) for r in items])
        for resource in items:
            resource_id = str(resource["id"])
            doc = stored.get(resource_id)
            if unchanged(doc, resource):
                counts.unchanged.append(f"{kind}/{resource_id}")
                continue
            interactions.prepare_update(kind, resource_id, resource)
            if doc is None:
                result = await interactions.create_in(uow, kind, resource, resource_id=resource_id)
                assert result.version is not None
                counts.created.append(result.version)
            else:
                result = await interactions.update_in(uow, kind, resource_id, resource)
                assert result.version is not None
                counts.updated.append(result.version)
    return counts


def provenance(
    provenance_id: str,
    targets: Sequence[Version],
    raw_id: str,
    *,
    recorded: datetime,
    agent: str,
    activity: str = "CREATE",
) -> JsonDict:
    """Provenance for the versions written from one payload (or one chunk of it)."""
    when = recorded if recorded.tzinfo else recorded.replace(tzinfo=UTC)
    return {
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": [{"reference": versioned(v)} for v in targets],
        "recorded": when.isoformat(),
        "activity": {"coding": [{"system": DATA_OPERATION, "code": activity}]},
        "agent": [
            {
                "type": {"coding": [{"system": AGENT_TYPE, "code": "author", "display": "Author"}]},
                "who": {"display": agent},
            }
        ],
        "entity": [{"role": "source", "what": {"reference": f"Binary/{raw_id}"}}],
    }


async def put_provenance(interactions: Interactions, uow: UnitOfWork, body: JsonDict) -> Version:
    kind, resource_id = "Provenance", str(body["id"])
    interactions.prepare_update(kind, resource_id, body)
    result = await interactions.update_in(uow, kind, resource_id, body)
    assert result.version is not None
    return result.version


__all__ = [
    "WriteCounts",
    "current_docs",
    "provenance",
    "put_all",
    "put_provenance",
    "unchanged",
    "versioned",
]
