"""A leaderboard of versions from users' pairwise votes: Bradley-Terry strengths with 95 % intervals.

    board = leaderboard(store.db)      # [Rating], best first; [] without votes between versions
    print(format_leaderboard(board))   # what `rlhf adapters status` prints after the version table

Every blind vote between two versions (live_evaluation.votes_by_pair: users' votes whose two answers
came from different versions, the base model named `base`, each user's first 20 per pair) is one
comparison. Bradley-Terry:

    P(i beats j) = sigmoid(θ_i - θ_j),    θ_base = 0 (the reference)

fitted by Newton's method on the log-posterior with a Gaussian prior θ_i ~ N(0, PRIOR_SD²): the
prior keeps a version with only wins (or only one vote) finite and the fit defined with few votes,
and is weak enough that with many votes θ_i - θ_j is the log-odds of i's win rate against j. The
intervals are θ_i ± 1.96 standard errors from the inverse of the posterior's information matrix
(curvature at the optimum), relative to the base model. A rating is θ on the Elo scale
(ELO_PER_NAT points per unit of log-odds: +100 means winning 64 % of votes against the base model),
shown beside the win probability against the base model it implies.

Ratings rest on pairwise votes only; the thumbs-up rate per version is in the version table.
Versions never compared to anything have no rating (rather than the prior's 0).
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass

import numpy as np

from learner.live_evaluation import BASE, votes_by_pair

PRIOR_SD = 3.0
"""Standard deviation of the prior on each strength (log-odds against the base model)."""
Z95 = 1.959964
ELO_PER_NAT = 400 / math.log(10)


@dataclass(frozen=True)
class Rating:
    version: str        # `policy@v3`, or `base`
    strength: float     # θ: log-odds of beating the base model
    low: float          # 95 % interval of θ
    high: float
    votes: int          # votes this version took part in

    @property
    def points(self) -> tuple[float, float, float]:
        """Rating, low, high on the Elo scale (base model = 0)."""
        return ELO_PER_NAT * self.strength, ELO_PER_NAT * self.low, ELO_PER_NAT * self.high

    @property
    def win_vs_base(self) -> tuple[float, float, float]:
        """P(beats the base model) and its 95 % interval."""
        return _sigmoid(self.strength), _sigmoid(self.low), _sigmoid(self.high)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def fit(votes: dict[tuple[str, str], int], prior_sd: float = PRIOR_SD) -> list[Rating]:
    """Bradley-Terry ratings from `votes[(winner, loser)] = count`, best first; the base model is the
    reference (θ = 0, listed when it took part in a vote). [] without votes between two versions."""
    votes = {(w, lo): n for (w, lo), n in votes.items() if n > 0 and w != lo}
    versions = sorted({v for pair in votes for v in pair})
    if not versions:
        return []
    free = [v for v in versions if v != BASE]  # the strengths fitted; BASE stays at 0
    index = {v: k for k, v in enumerate(free)}
    m = len(free)
    wins = np.zeros((m + 1, m + 1))  # (i, j): times i beat j; row/column m is the base model
    for (w, lo), n in votes.items():
        wins[index.get(w, m), index.get(lo, m)] += n
    games = wins + wins.T
    precision = 1.0 / prior_sd ** 2

    def log_posterior(theta: np.ndarray) -> float:
        t = np.append(theta, 0.0)
        diff = t[:, None] - t[None, :]  # (m+1, m+1): θ_i - θ_j
        return float(-(wins * np.logaddexp(0.0, -diff)).sum() - 0.5 * precision * theta @ theta)

    theta = np.zeros(m)
    for _ in range(100):
        t = np.append(theta, 0.0)
        p = 1.0 / (1.0 + np.exp(-(t[:, None] - t[None, :])))  # P(i beats j)
        grad = (wins - games * p).sum(axis=1)[:m] - precision * theta
        curvature = games * p * (1 - p)  # each pair's information
        info = (np.diag(curvature.sum(axis=1)) - curvature)[:m, :m] + precision * np.eye(m)
        step = np.linalg.solve(info, grad)
        scale, before = 1.0, log_posterior(theta)
        while log_posterior(theta + scale * step) < before and scale > 1e-6:  # halve an overshooting step
            scale /= 2
        theta = theta + scale * step
        if np.abs(scale * step).max() < 1e-10:
            break
    t = np.append(theta, 0.0)
    p = 1.0 / (1.0 + np.exp(-(t[:, None] - t[None, :])))
    curvature = games * p * (1 - p)
    info = (np.diag(curvature.sum(axis=1)) - curvature)[:m, :m] + precision * np.eye(m)
    se = np.sqrt(np.diag(np.linalg.inv(info)))  # standard errors of θ relative to the base model
    counts = games.sum(axis=1)
    ratings = [Rating(v, float(theta[k]), float(theta[k] - Z95 * se[k]), float(theta[k] + Z95 * se[k]),
                      int(counts[k])) for v, k in index.items()]
    if BASE in versions:
        ratings.append(Rating(BASE, 0.0, 0.0, 0.0, int(counts[m])))
    return sorted(ratings, key=lambda r: -r.strength)


def leaderboard(db: sqlite3.Connection) -> list[Rating]:
    return fit(votes_by_pair(db))


def format_leaderboard(board: list[Rating]) -> str:
    """Rating (Elo scale, base model 0) and win probability against the base model, each with its 95 % interval."""
    head = ("version", "rating (base = 0)", "wins vs base", "votes")
    body = []
    for r in board:
        if r.version == BASE:
            body.append((r.version, "0 (reference)", "-", str(r.votes)))
            continue
        (pts, pts_lo, pts_hi), (win, win_lo, win_hi) = r.points, r.win_vs_base
        body.append((r.version, f"{pts:+.0f} [{pts_lo:+.0f} to {pts_hi:+.0f}]",
                     f"{100 * win:.0f}% [{100 * win_lo:.0f}-{100 * win_hi:.0f}]", str(r.votes)))
    widths = [max(len(row[k]) for row in [head, *body]) for k in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body])
