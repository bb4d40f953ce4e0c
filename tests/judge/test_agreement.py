"""The judge's agreement with users: the Wilson bound and when the judge pauses (pure)."""

from __future__ import annotations

import math

import pytest

from judge.agreement import Agreement, wilson_lower_bound


def test_wilson_lower_bound_known_values():
    assert wilson_lower_bound(0, 0) == 0.0
    # z = 1.645: 8 of 10 -> (0.9353 - 0.2482) / 1.2706 = 0.5408 (the closed form, by hand)
    assert wilson_lower_bound(8, 10) == pytest.approx(0.5408, abs=1e-3)
    assert wilson_lower_bound(10, 10) == pytest.approx(10 / (10 + 1.6448536269514722**2), abs=1e-9)
    assert wilson_lower_bound(0, 10) == 0.0
    assert wilson_lower_bound(80, 100) > wilson_lower_bound(8, 10)  # more evidence, tighter bound


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
