"""Suspect users: feedback that disagrees with the consensus far beyond chance.

After a round's reward model is fitted on the capped weights (learner/weighting.py), each
label is checked against it: a pairwise choice *agrees* when the chosen answer scores higher;
a thumbs agrees when it is up exactly when r > b, the model's own threshold in P(up) = σ(r − b).

    consensus p0 = agreement on the HELD-OUT users, each weighted by their capped share, smoothed
                   as (agreed + 1) / (labels + 2) and at least 0.5; just 0.5 when the held-out
                   side has fewer than `min_consensus_labels` labels
    user u       = a training user with n >= `min_labels` labels, k of them agreeing
    p-value      = P(X <= k), X ~ Binomial(n, p0): how likely so little agreement is by chance
    suspect      = p-value < alpha / m, m = the number of users tested (Bonferroni)

The consensus comes from users the model never trained on, so a user's agreement is compared
with how well the learned taste carries over to strangers, not with how well the model fits
its own training data (which only makes the test more forgiving to training users).

A suspect's capped weights are multiplied by `weight` (so volume does not dilute the factor),
the caps are applied again to everyone, and the reward model gets a short refit on the new
weights; PPO's prompt pool is drawn with the same down-weighting. Down-weighted, not removed: a person with a
genuine minority taste looks the same to this test as one flipping labels on purpose.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass


@dataclass
class SuspectConfig:
    """How suspect users are found and what happens to them."""

    min_labels: int = 8
    """Labels a training user needs in the round before being tested."""
    alpha: float = 0.01
    """Family-wise false-alarm rate: each user is tested at alpha / (users tested)."""
    weight: float = 0.1
    """Multiplier of a suspect's example weights (0 drops them)."""
    min_consensus_labels: int = 20
    """Held-out labels needed to measure the consensus; fewer: the consensus is taken as 0.5."""
    refit_epochs: int = 1
    """Passes over the round's examples, with the suspects down-weighted, when there are suspects."""


@dataclass
class UserAgreement:
    user: str
    labels: int
    agreed: int
    p_value: float
    suspect: bool = False


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed exactly in log space (no scipy needed)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p + (n - j) * log_q
             for j in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def consensus_rate(agreements: list[bool], weights: list[float] | None, min_labels: int) -> float:
    """Weighted, smoothed agreement of the held-out labels; 0.5 when there are too few of them."""
    n = len(agreements)
    if n < min_labels:
        return 0.5
    w = weights if weights is not None else [1.0] * n
    total = sum(w)
    if total <= 0:
        return 0.5
    agreed = sum(wi for wi, a in zip(w, agreements) if a) * n / total  # in label units: weights of mean 1
    return max(0.5, (agreed + 1.0) / (n + 2.0))


def find_suspects(users: list[str], agreements: list[bool], consensus: float,
                  cfg: SuspectConfig) -> dict[str, UserAgreement]:
    """Every tested user (labels >= min_labels) with their counts, p-value and verdict.

    users[i], agreements[i]: who gave training label i and whether the reward model agrees with it."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for u, a in zip(users, agreements):
        counts[u][0] += 1
        counts[u][1] += int(a)
    tested = {u: c for u, c in counts.items() if c[0] >= cfg.min_labels}
    if not tested:
        return {}
    threshold = cfg.alpha / len(tested)
    out = {}
    for u, (n, k) in tested.items():
        p = binomial_cdf(k, n, consensus)
        out[u] = UserAgreement(u, n, k, p, p < threshold)
    return out
