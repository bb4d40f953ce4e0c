"""How often the AI judge agrees with users' own pairwise choices, and whether it may publish.

    agreement = Agreement(floor=0.6, min_samples=20)
    agreement.record(judge_agrees)      # the judge's verdict on two answers a user compared
    agreement.paused                    # True: the judge publishes nothing

Only the most recent `window` comparisons count, so the figure follows the judge as the answers
(and adapters) change. The judge pauses while at least `min_samples` comparisons exist and their
agreement rate is below `floor`; it keeps judging users' pairs while paused, and resumes by itself
when the rate is back at or above the floor. Ties (the judge's two orders disagreeing) are not
comparisons: they count neither way. `lower_bound` is the Wilson score bound (95 %, one-sided
z = 1.645) of the rate, exported beside it so an operator sees how sure the figure is.
"""

from __future__ import annotations

import math
from collections import deque

from rlhf.intervals import Z_95_ONE_SIDED, wilson_interval


class Agreement:
    def __init__(self, floor: float, min_samples: int, window: int = 200):
        self.floor, self.min_samples = floor, min_samples
        self.recent: deque[bool] = deque(maxlen=max(window, min_samples))

    def record(self, agrees: bool) -> None:
        self.recent.append(bool(agrees))

    @property
    def samples(self) -> int:
        return len(self.recent)

    @property
    def rate(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else math.nan

    @property
    def lower_bound(self) -> float:
        return wilson_interval(sum(self.recent), len(self.recent), Z_95_ONE_SIDED)[0]

    @property
    def paused(self) -> bool:
        return self.samples >= self.min_samples and self.rate < self.floor
