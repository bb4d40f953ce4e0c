"""The canary's statistics: confidence sequences that stay valid however often they are looked at.

The promotion controller looks at a canary's live feedback after every event and decides as soon
as the evidence allows. A fixed-sample test checked that way promotes by chance far more often
than its nominal error; a confidence sequence holds at every moment at once: P(∃t: θ ∉ CS_t) ≤ α.

Each rate is a mean of [0, 1] observations, which are 1/4-sub-Gaussian, so Robbins' normal
mixture martingale gives an exact sequence (no normal approximation, any true rate):

    |mean_t - θ| ≤ sqrt( 2 (t σ² ρ² + 1) / (t² ρ²) · log( sqrt(t σ² ρ² + 1) / α ) ),  σ² = 1/4

(Howard, Ramdas, McAuliffe, Sekhon 2021, arXiv 1810.08240; Waudby-Smith et al. 2021, arXiv
2103.06476). ρ sets where it is tightest: at `horizon` observations.

Two signals compare a canary with the active version, on the scale of a difference in rates:
- thumbs: up-rate of the canary's answers minus the active version's (independent users; each
  rate's sequence at α/4, their difference at α/2 by the union bound);
- blind pairwise votes between the two: P(canary wins) - P(canary loses) among decisive votes
  (2w - 1 for win share w, at α/2).
Decision (`decide`), with every error ≤ α in total:
- rollback as soon as either signal shows the canary worse (its upper bound below 0);
- promote when either signal shows it not worse by more than `margin` (lower bound above
  -margin) while the other does not show it worse. With margin 0 that means better with
  confidence, so a canary equal to the active version is promoted with probability ≤ α;
- after `max_events` canary events without either: expired, the active version stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SUB_GAUSSIAN_VARIANCE = 0.25
"""Of any variable in [0, 1] (Hoeffding)."""


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int                       # observations behind it (the smaller arm for a difference)


@dataclass(frozen=True)
class CanaryEvidence:
    """Live feedback on a canary and the active version it is measured against."""
    canary_up: int = 0
    canary_down: int = 0
    active_up: int = 0
    active_down: int = 0
    wins: int = 0                # blind votes for the canary's answer over the active version's
    losses: int = 0              # blind votes for the active version's answer (ties not counted)

    @property
    def canary_events(self) -> int:
        return self.canary_up + self.canary_down + self.wins + self.losses


@dataclass(frozen=True)
class Verdict:
    decision: str                # promote | rollback | undecided | expired
    reason: str
    thumbs: Interval
    pairwise: Interval
    events: int                  # canary events the decision saw


def mixture_rho2(horizon: int, alpha: float, variance: float = SUB_GAUSSIAN_VARIANCE) -> float:
    """ρ² that makes the sequence tightest near `horizon` observations (Waudby-Smith et al., eq. 8)."""
    a = -2 * math.log(alpha)
    return (a + math.log(a + 1)) / (max(horizon, 1) * variance)


def mean_radius(n: int, alpha: float, rho2: float, variance: float = SUB_GAUSSIAN_VARIANCE) -> float:
    """Half-width of the sequence for a mean of n observations in [0, 1] (inf without any)."""
    if n <= 0:
        return math.inf
    v = n * variance * rho2 + 1
    return math.sqrt(2 * v / (n * n * rho2) * math.log(math.sqrt(v) / alpha))


def rate_interval(successes: int, n: int, alpha: float, horizon: int) -> Interval:
    """The sequence for a rate in [0, 1] at this moment, clipped to [0, 1]."""
    if n <= 0:
        return Interval(math.nan, 0.0, 1.0, 0)
    p = successes / n
    r = mean_radius(n, alpha, mixture_rho2(horizon, alpha))
    return Interval(p, max(0.0, p - r), min(1.0, p + r), n)


def thumbs_difference(e: CanaryEvidence, alpha: float, horizon: int) -> Interval:
    """Canary's up-rate minus the active version's, valid at level alpha at every moment."""
    c = rate_interval(e.canary_up, e.canary_up + e.canary_down, alpha / 2, horizon)
    a = rate_interval(e.active_up, e.active_up + e.active_down, alpha / 2, horizon)
    return Interval(c.estimate - a.estimate, c.low - a.high, c.high - a.low, min(c.n, a.n))


def pairwise_advantage(e: CanaryEvidence, alpha: float, horizon: int) -> Interval:
    """P(canary wins) - P(canary loses) among decisive blind votes, valid at level alpha."""
    w = rate_interval(e.wins, e.wins + e.losses, alpha, horizon)
    return Interval(2 * w.estimate - 1, 2 * w.low - 1, 2 * w.high - 1, w.n)


def decide(e: CanaryEvidence, *, margin: float, alpha: float, max_events: int, horizon: int | None = None
           ) -> Verdict:
    """The controller's decision for a canary now (see the module's docstring)."""
    horizon = horizon or max(max_events // 2, 1)
    thumbs = thumbs_difference(e, alpha / 2, horizon)
    pairwise = pairwise_advantage(e, alpha / 2, horizon)
    n = e.canary_events

    def says(name: str, i: Interval) -> str:
        return f"{name} {i.estimate:+.3f} [{i.low:+.3f}, {i.high:+.3f}] over {i.n}"

    for name, i in (("thumbs-up rate difference", thumbs), ("pairwise advantage", pairwise)):
        if i.high < 0:
            return Verdict("rollback", f"worse than the active version: {says(name, i)}", thumbs, pairwise, n)
    for name, i in (("thumbs-up rate difference", thumbs), ("pairwise advantage", pairwise)):
        if i.low > -margin:  # and neither shows it worse (checked above)
            return Verdict("promote", f"not worse than the active version by more than {margin}: {says(name, i)}",
                           thumbs, pairwise, n)
    if n >= max_events:
        return Verdict("expired", f"no decision after {n} canary events (limit {max_events}): the active version "
                       "stays", thumbs, pairwise, n)
    return Verdict("undecided", "collecting feedback", thumbs, pairwise, n)
