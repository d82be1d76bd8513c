"""PySynthea (PyPI `tietai-synthea`) patient bundles loaded as transactions; afterwards every
reference in the store resolves.

PySynthea is not a Hestia dependency (it pulls pandas, scipy and matplotlib and pins
python-dateutil 4, which clashes with fhirpathpy). The test runs its CLI as a separate process
from wherever it is installed: the `synthea` module importable here, or a `pip install
--target DIR tietai-synthea` directory named by HESTIA_PYSYNTHEA_PATH. Otherwise it is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fhir.test_bundle_env import BASE, Env, env, mongo
from tests.fhir.test_bundle_synthea import assert_every_reference_resolves

__all__ = ["env", "mongo"]

PATIENTS = 4
SEED = 42


def generate(out: Path) -> list[Path]:
    target = os.environ.get("HESTIA_PYSYNTHEA_PATH", "")
    env_vars = dict(os.environ)
    if target:
        env_vars["PYTHONPATH"] = target
    elif importlib.util.find_spec("synthea") is None:
        pytest.skip("PySynthea is not installed (set HESTIA_PYSYNTHEA_PATH, see module doc)")
    code = "import sys; from synthea.cli import main; sys.exit(main())"
    subprocess.run(
        [sys.executable, "-c", code, "-p", str(PATIENTS), "-s", str(SEED), "-o", str(out)],
        env=env_vars,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return sorted((out / "fhir").glob("*.json"))


@pytest.mark.slow
async def test_pysynthea_bundles_load_and_all_references_resolve(env: Env, tmp_path: Path) -> None:
    files = generate(tmp_path)
    assert len(files) == PATIENTS
    sent = 0
    for path in files:
        bundle = json.loads(path.read_text())
        assert bundle["type"] == "transaction"
        sent += len(bundle["entry"])
        response = await env.processor.process(bundle, base_url=BASE, max_entries=100_000)
        assert {e["response"]["status"] for e in response["entry"]} <= {"201 Created", "200 OK"}
    stored = await assert_every_reference_resolves(env)
    assert stored <= sent
