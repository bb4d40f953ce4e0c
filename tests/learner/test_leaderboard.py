"""The Bradley-Terry leaderboard (learner/leaderboard.py): cases checkable by hand, then on a real
learner store with blind votes between versions and the base model, as `rlhf adapters status` prints
it and as the learner's /metrics exports it."""

from __future__ import annotations

import math

import pytest
from prometheus_client import REGISTRY, generate_latest

from learner.leaderboard import (
    ELO_PER_NAT,
    PRIOR_SD,
    fit,
    format_leaderboard,
    leaderboard,
)
from learner.live_metrics import LiveEvaluation
from rlhf.settings import Settings
from tests.learner.canary_store import ACTIVE, CANARY, canary_store, votes


def by_version(board):
    return {r.version: r for r in board}


def test_no_votes_no_rating():
    assert fit({}) == []
    assert fit({("policy@v1", "policy@v1"): 5, ("policy@v2", "base"): 0}) == []  # nothing between two versions


def test_two_versions_the_strength_is_the_log_odds_of_the_win_rate():
    board = by_version(fit({("policy@v1", "base"): 30, ("base", "policy@v1"): 10}))
    v1, base = board["policy@v1"], board["base"]
    assert (base.strength, base.votes, v1.votes) == (0.0, 40, 40)
    assert v1.strength == pytest.approx(math.log(30 / 10), abs=0.02)  # the prior pulls it 0.016 towards 0
    # exactly the posterior's optimum: wins - games * P(win) - θ / prior² = 0
    assert 30 - 40 / (1 + math.exp(-v1.strength)) - v1.strength / PRIOR_SD ** 2 == pytest.approx(0, abs=1e-9)
    # the interval: ±1.96 / sqrt(information), information = games * p (1 - p) + the prior's
    p = 1 / (1 + math.exp(-v1.strength))
    se = 1 / math.sqrt(40 * p * (1 - p) + 1 / PRIOR_SD ** 2)
    assert (v1.low, v1.high) == pytest.approx((v1.strength - 1.96 * se, v1.strength + 1.96 * se), abs=1e-4)
    assert v1.win_vs_base[0] == pytest.approx(0.75, abs=0.005)
    assert v1.points[0] == pytest.approx(ELO_PER_NAT * v1.strength)
    # the same votes, ten times over: the same strength, an interval about sqrt(10) narrower
    more = by_version(fit({("policy@v1", "base"): 300, ("base", "policy@v1"): 100}))["policy@v1"]
    assert more.strength == pytest.approx(math.log(3), abs=0.002)
    assert (more.high - more.low) == pytest.approx((v1.high - v1.low) / math.sqrt(10), rel=0.02)


def test_three_versions_transitive():
    votes = {("policy@v1", "base"): 30, ("base", "policy@v1"): 10,
             ("policy@v2", "policy@v1"): 30, ("policy@v1", "policy@v2"): 10}
    # without the prior's pull (maximum likelihood): v2 never met the base model and gets there through
    # v1, 3:1 twice over, so twice v1's log-odds
    v2, v1, _ = fit(votes, prior_sd=1e4)
    assert v1.strength == pytest.approx(math.log(3), abs=1e-4)
    assert v2.strength == pytest.approx(2 * math.log(3), abs=1e-4)
    board = fit(votes)  # with the default prior: the same order, each pulled a little towards the base model
    assert [r.version for r in board] == ["policy@v2", "policy@v1", "base"]
    v2, v1 = board[0], board[1]
    assert 0.9 * math.log(3) < v1.strength < math.log(3) and 0.9 * 2 * math.log(3) < v2.strength < 2 * math.log(3)
    assert v2.high - v2.low > v1.high - v1.low  # less direct evidence: a wider interval
    assert all(r.low <= r.strength <= r.high for r in board)


def test_only_wins_stay_finite_with_a_wide_interval():
    (v1, base) = fit({("policy@v1", "base"): 3})
    assert v1.version == "policy@v1" and 0 < v1.strength < 10 and v1.low < 0 < v1.high  # 3 votes: not settled
    assert base.strength == 0.0


def test_on_the_learner_store_with_the_status_table(tmp_path):
    store = canary_store(tmp_path)
    try:
        votes(store, 40, 30, CANARY, ACTIVE, "canary")   # the canary wins 3 of 4 blind votes against the active version
        votes(store, 20, 12, ACTIVE, None, "active")      # which wins 3 of 5 against the base model
        board = leaderboard(store.db)
    finally:
        store.close()
    assert [r.version for r in board] == [CANARY, ACTIVE, "base"]
    ratings = by_version(board)
    assert (ratings[CANARY].votes, ratings[ACTIVE].votes, ratings["base"].votes) == (40, 60, 20)
    assert ratings[ACTIVE].strength == pytest.approx(math.log(3 / 2), abs=0.1)
    assert ratings[CANARY].strength == pytest.approx(math.log(3 / 2) + math.log(3), abs=0.15)
    lines = format_leaderboard(board).splitlines()
    assert lines[0].split() == ["version", "rating", "(base", "=", "0)", "wins", "vs", "base", "votes"]
    points, low, high = ratings[CANARY].points
    win, win_low, win_high = ratings[CANARY].win_vs_base
    assert lines[1].split() == [CANARY, f"{points:+.0f}", f"[{low:+.0f}", "to", f"{high:+.0f}]",
                                f"{100 * win:.0f}%", f"[{100 * win_low:.0f}-{100 * win_high:.0f}]", "40"]
    assert lines[3].split() == ["base", "0", "(reference)", "-", "20"]


def test_the_learners_metrics_carry_each_rating_with_its_interval(tmp_path):
    store = canary_store(tmp_path)
    try:
        votes(store, 40, 30, CANARY, ACTIVE, "metrics")
        board = by_version(leaderboard(store.db))
        LiveEvaluation(store, Settings()).tick()  # what the learner's consume thread runs every 10 s
    finally:
        store.close()
    exported = generate_latest(REGISTRY).decode()  # the registry the learner's /metrics serves
    for version in (CANARY, ACTIVE):
        for bound, points in zip(("estimate", "low", "high"), board[version].points):
            line = f'rlhf_version_rating{{bound="{bound}",version="{version}"}} '
            assert line in exported, line
            assert float(exported.split(line)[1].split()[0]) == pytest.approx(points)
