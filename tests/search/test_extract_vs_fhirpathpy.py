"""The compiled extractors select the same raw values as a full FHIRPath engine (fhirpathpy).

Every official example resource (a deterministic sample, to keep the suite fast) is evaluated
against every search parameter of its type, once with our compiled extractor and once with
fhirpathpy on the same official expression; the value sets must agree.

Deliberate differences, handled below:
- Roots `Resource.` / `DomainResource.`: fhirpathpy yields nothing for them on a concrete
  resource, while they are meant for every type. We give fhirpathpy the concrete type instead.
- `X as uri` on a choice `uri|canonical` element: fhirpathpy also returns the canonical variant
  (it treats canonical as a uri); we return only the element typed `uri`, as the choice name
  (`sourceUri`) says. Those parameters are compared against the `xUri` element.
- Expressions using `resolve()` make fhirpathpy raise without a resolver; they are skipped
  there and covered by explicit tests in test_extract.py.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

fhirpathpy = pytest.importorskip("fhirpathpy")
from fhirpathpy.models import models  # noqa: E402

from app.fhir.definitions.npm import PackageUnavailable, ensure_package  # noqa: E402
from app.fhir.search.parameters import registry  # noqa: E402

SAMPLE_EVERY = 6


@pytest.fixture(scope="module")
def examples() -> list[Path]:
    try:
        package = ensure_package()
    except PackageUnavailable as exc:
        pytest.skip(str(exc))
    files = sorted(p for p in package.glob("*.json") if not p.name.startswith("Bundle-search"))
    return files[::SAMPLE_EVERY]


@cache
def _engine(expression: str) -> Any:
    return fhirpathpy.compile(expression, models["r4"])


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def test_compiled_extractors_agree_with_fhirpathpy(examples: list[Path]) -> None:
    reg = registry()
    agree, disagree, skipped = 0, [], 0
    for path in examples:
        resource = json.loads(path.read_text("utf-8"))
        resource_type = resource.get("resourceType")
        if resource_type not in reg.resource_types:
            continue
        for code, param in reg.for_type(resource_type).items():
            if param.extractor is None or not param.expression or "resolve()" in param.expression:
                continue
            expression = re.sub(
                r"\b(Resource|DomainResource)\.", f"{resource_type}.", param.expression
            )
            expression = re.sub(r"\((\w+\.\w+) as uri\)", r"\1Uri", expression)
            try:
                theirs = {_key(v) for v in _engine(expression)(resource)}
            except Exception:
                skipped += 1
                continue
            mine = {_key(v) for v in param.extractor.evaluate(resource)}
            if mine == theirs:
                agree += 1
            else:
                disagree.append((path.name, code))
    total = agree + len(disagree)
    print(f"agreement {agree}/{total}, fhirpathpy errors skipped: {skipped}")
    assert total > 3000
    assert not disagree, disagree[:20]
