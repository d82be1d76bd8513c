"""How hard the property tests try: `HESTIA_FUZZ_SCALE=N` multiplies every fuzz test's examples.

`./scripts/test` keeps the defaults, so the suite stays short. A longer hunt, outside CI:

    HESTIA_FUZZ_SCALE=100 ./scripts/test -m fuzz
"""

from __future__ import annotations

import os

import pytest

SCALE_ENV = "HESTIA_FUZZ_SCALE"

fuzz = pytest.mark.fuzz


def examples(default: int) -> int:
    """`default` examples, times HESTIA_FUZZ_SCALE (a positive integer, default 1)."""
    raw = os.environ.get(SCALE_ENV, "1")
    try:
        scale = int(raw)
    except ValueError:
        raise ValueError(f"{SCALE_ENV} must be a positive integer, not {raw!r}") from None
    if scale < 1:
        raise ValueError(f"{SCALE_ENV} must be a positive integer, not {raw!r}")
    return default * scale
