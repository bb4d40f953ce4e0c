"""The judge's agreement with users: when the judge pauses (pure; the Wilson bound: tests/rlhf/test_intervals.py)."""

from __future__ import annotations

import math

from judge.agreement import Agreement


def test_pauses_only_with_enough_samples_below_the_floor_and_resumes():
    a = Agreement(floor=0.6, min_samples=5, window=10)
    assert math.isnan(a.rate) and not a.paused
    for _ in range(4):
        a.record(False)
    assert not a.paused  # 4 < min_samples
    a.record(False)
    assert a.paused and a.rate == 0.0
    for _ in range(10):  # the window forgets the old disagreements
        a.record(True)
    assert not a.paused and a.rate == 1.0 and a.samples == 10
