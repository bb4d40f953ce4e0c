"""The Wilson score interval of a rate, for every figure reported with its uncertainty.

    low, high = wilson_interval(8, 10)                 # 95 %, two-sided
    low, _ = wilson_interval(8, 10, Z_95_ONE_SIDED)    # a one-sided 95 % lower bound

Used by the learner (a version's A/B win rate against its parent) and by the judge (its
agreement with users), which may not import each other.
"""

from __future__ import annotations

import math

Z_95 = 1.959964
Z_95_ONE_SIDED = 1.6448536269514722


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of the rate successes/n (successes may be fractional: a tie counts
    half); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    radius = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - radius), min(1.0, centre + radius)
