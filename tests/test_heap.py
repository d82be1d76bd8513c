"""The serving heap settings hold while the app serves and are undone when it stops, so that a
process starting one app after another (the test suite) collects the cycles of the last one."""

from __future__ import annotations

import gc

from app.heap import OLD_THRESHOLD, YOUNG_THRESHOLD, serving_heap


def test_start_up_objects_are_frozen_while_serving_and_released_after() -> None:
    before = gc.get_threshold()
    built_at_start_up = [[n] for n in range(1000)]
    with serving_heap():
        assert gc.get_freeze_count() >= len(built_at_start_up)
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_threshold()[2] == OLD_THRESHOLD
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
