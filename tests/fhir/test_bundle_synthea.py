"""Java-Synthea patient bundles (corpus fhir/synthea-java, see corpus SOURCES.md) loaded as
transactions; afterwards every reference held in the store must resolve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.fhir.bundle.references import iter_references
from tests.fhir.test_bundle_env import BASE, Env, env, mongo

__all__ = ["env", "mongo"]

JsonDict = dict[str, Any]
CORPUS = Path(__file__).resolve().parents[3] / "shared/corpus/fhir/synthea-java"
FILES = sorted(CORPUS.glob("*.json"))


def as_transaction(path: Path) -> JsonDict:
    bundle: JsonDict = json.loads(path.read_text())
    # The corpus copies were switched to "batch" by their publisher; Synthea emits transactions.
    return {**bundle, "type": "transaction"}


@pytest.mark.slow
async def test_synthea_bundles_load_as_transactions_and_all_references_resolve(env: Env) -> None:
    assert len(FILES) >= 10
    entries_sent = 0
    for path in FILES:
        bundle = as_transaction(path)
        entries_sent += len(bundle["entry"])
        response = await env.processor.process(bundle, base_url=BASE, max_entries=10_000)
        statuses = {e["response"]["status"] for e in response["entry"]}
        assert statuses == {"201 Created"}, path.name

    stored = await assert_every_reference_resolves(env)
    assert stored == entries_sent


async def assert_every_reference_resolves(env: Env) -> int:
    """Check every reference of every current resource; return how many resources there are."""
    stored = 0
    wanted: dict[str, set[str]] = {}
    names = await env.store.db.list_collection_names()
    for resource_type in [n for n in names if n[:1].isupper()]:
        for doc in await env.store.find(resource_type, {"deleted": False}):
            stored += 1
            resource = doc["resource"]
            contained = {f"#{c.get('id')}" for c in resource.get("contained", [])}
            for reference in iter_references(resource):
                if reference.startswith("#"):
                    assert reference in contained, (resource_type, reference)
                    continue
                assert not reference.startswith("urn:"), (resource_type, reference)
                target_type, _, target_id = reference.partition("/")
                assert target_type[:1].isupper() and target_id, (resource_type, reference)
                wanted.setdefault(target_type, set()).add(target_id)
    for target_type, ids in wanted.items():
        live = await env.store.find(target_type, {"deleted": False}, projection={"_id": 1})
        missing = ids - {d["_id"] for d in live}
        assert not missing, (target_type, sorted(missing)[:5])
    return stored
