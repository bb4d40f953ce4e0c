"""The KL guard of a round's policy stage: no candidate leaves the stage farther from its reference
than a share of the operator's KL budget, and one update that jumps too far does not end the round.

    guard = KLGuard(limit=0.8 * kl_budget, backoffs=2)
    guard.verdict(kl)   # after each iteration: "keep", "back off" (undo, halve the step) or "stop" (undo)

`kl` is a KL to the reference sampled from the policy that the newest update made: PPO, RLOO and
online DPO sample their rollouts before their update, so theirs is one iteration late (the round
undoes the update before the last); DPO and KTO sample nothing, and the round samples their policy
after the update. An update that pushes the KL over the limit and above where it was is undone;
then the learning rate is halved and the iterations go on, at most `backoffs` times, after which the
stage stops with the policy from before that update. While the KL falls it is left alone, even above
the limit: a round starting from an adapter already near the budget may still train, and the KL
penalty pulls it back.

Where the KL is a mean over few answers (the round's own sample after a DPO or KTO update), its
standard error comes with it, and the update counts as over the limit when the KL could be there by
one standard error: per-answer KLs are heavy-tailed, and a sample of 16 answers can read 4 nats
where the gate's larger held-out sample reads 6.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

KEEP, BACK_OFF, STOP = "keep", "back off", "stop"
LEARNING_RATE_FACTOR = 0.5  # what a back-off multiplies the learning rate by


def mean_and_standard_error(values: list[float]) -> tuple[float, float]:
    """The mean of `values` and its standard error (0 with fewer than two values)."""
    if len(values) < 2:
        return sum(values) / max(1, len(values)), 0.0
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def kl_guard_trips(previous_kls: list[float], kl: float, limit: float, *, first_counts: bool = False,
                   standard_error: float = 0.0) -> bool:
    """Whether the update behind `kl` crossed the limit: over it (by at most one `standard_error` of
    `kl`) and above the previous iteration's KL. With no previous KL, only when `first_counts` (the KL
    was sampled after the first update; one sampled before any update has no update to undo)."""
    if limit <= 0 or kl + standard_error <= limit:
        return False
    return kl > previous_kls[-1] if previous_kls else first_counts


@dataclass
class KLGuard:
    limit: float
    """KL to the reference (nats per answer) an update may not push the policy above; 0: no guard."""
    backoffs: int = 0
    """Undone updates after which the learning rate is halved and the stage goes on; one more stops it."""
    sampled_after_update: bool = False
    """Whether each `kl` comes from the policy after the iteration's own update (DPO, KTO)."""
    kls: list[float] = field(default_factory=list)
    """The KLs of the iterations kept."""
    backed_off: int = 0

    @property
    def on(self) -> bool:
        return self.limit > 0

    def keep(self, kl: float) -> str:
        """Keep an iteration whatever its KL (there is no policy to undo it to)."""
        self.kls.append(kl)
        return KEEP

    def verdict(self, kl: float, standard_error: float = 0.0) -> str:
        """What to do with the iteration whose sampled KL is `kl` (± `standard_error`): keep it, or undo
        its update and back off or stop."""
        if not kl_guard_trips(self.kls, kl, self.limit, first_counts=self.sampled_after_update,
                              standard_error=standard_error):
            return self.keep(kl)
        if self.backed_off < self.backoffs:
            self.backed_off += 1
            return BACK_OFF
        return STOP
