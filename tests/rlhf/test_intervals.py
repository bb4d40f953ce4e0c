"""The Wilson score interval, checked against its closed form by hand."""

from __future__ import annotations

import pytest

from rlhf.intervals import Z_95_ONE_SIDED, wilson_interval


def test_two_sided_bounds_at_the_edges():
    z2 = 1.959964 ** 2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)), abs=1e-12)   # 0 of 10: [0, z²/(n+z²)]
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0), abs=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_one_sided_lower_bound_by_hand():
    # z = 1.645: 8 of 10 -> (0.9353 - 0.2482) / 1.2706 = 0.5408
    assert wilson_interval(8, 10, Z_95_ONE_SIDED)[0] == pytest.approx(0.5408, abs=1e-3)
    assert wilson_interval(10, 10, Z_95_ONE_SIDED)[0] == pytest.approx(10 / (10 + Z_95_ONE_SIDED ** 2), abs=1e-9)
    assert wilson_interval(0, 10, Z_95_ONE_SIDED)[0] == 0.0
    assert wilson_interval(80, 100, Z_95_ONE_SIDED)[0] > wilson_interval(8, 10, Z_95_ONE_SIDED)[0]  # more evidence


def test_a_tie_counted_half_keeps_the_interval_symmetric():
    low, high = wilson_interval(5.0, 10)
    assert low == pytest.approx(1 - high) and low < 0.5 < high
