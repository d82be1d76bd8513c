import time, json, pytest
from pathlib import Path
from tests.fhir.test_bundle_env import BASE, Env, env, mongo
from tests.fhir.test_bundle_pysynthea import generate
from tests.fhir.test_bundle_synthea import assert_every_reference_resolves
async def test_x(env: Env, tmp_path: Path) -> None:
    t=time.perf_counter(); files = generate(tmp_path); print("gen", time.perf_counter()-t)
    for path in files:
        bundle = json.loads(path.read_text())
        t=time.perf_counter()
        await env.processor.process(bundle, base_url=BASE, max_entries=100_000)
        print(len(bundle["entry"]), time.perf_counter()-t)
    t=time.perf_counter(); await assert_every_reference_resolves(env); print("verify", time.perf_counter()-t)
