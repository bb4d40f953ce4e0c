"""How far apart two shares of liked answers are: the two-proportion z test the benchmarks and tests report."""

from __future__ import annotations

import math


def two_proportion_z(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """z of the change from share a (hits_a of n_a) to share b (hits_b of n_b), pooled standard error."""
    pooled = (hits_a + hits_b) / max(1, n_a + n_b)
    se = math.sqrt(max(1e-12, pooled * (1 - pooled) * (1 / max(1, n_a) + 1 / max(1, n_b))))
    return (hits_b / max(1, n_b) - hits_a / max(1, n_a)) / se
