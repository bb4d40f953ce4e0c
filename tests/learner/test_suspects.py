"""Suspect users (learner/suspects.py): the exact binomial tail and the test on synthetic labels."""

from __future__ import annotations

import math
import random

import pytest

from learner.suspects import SuspectConfig, binomial_cdf, consensus_rate, find_suspects


def test_binomial_cdf_against_the_sum_of_terms():
    for n, p in [(10, 0.5), (25, 0.85), (7, 0.1)]:
        for k in range(-1, n + 1):
            want = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k + 1))
            assert binomial_cdf(k, n, p) == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert binomial_cdf(3, 2000, 0.9) < 1e-300 or binomial_cdf(3, 2000, 0.9) == 0.0  # no overflow
    assert binomial_cdf(1000, 2000, 0.5) == pytest.approx(0.5 + math.comb(2000, 1000) / 2**2001, rel=1e-9)


def test_consensus_is_weighted_smoothed_and_never_below_chance():
    assert consensus_rate([True] * 3, None, min_labels=20) == 0.5  # too few held-out labels
    assert consensus_rate([True] * 18 + [False] * 2, None, min_labels=20) == pytest.approx(19 / 22)
    assert consensus_rate([True] * 20, None, min_labels=20) == pytest.approx(21 / 22)  # never exactly 1
    assert consensus_rate([False] * 30, None, min_labels=20) == 0.5
    # one held-out user with 80 labels the model gets wrong, 20 users with one right label each:
    # weighted by people, the consensus is what the 20 agree on
    agreements = [False] * 80 + [True] * 20
    weights = [0.05 / 80] * 80 + [0.95 / 20] * 20
    assert consensus_rate(agreements, weights, min_labels=20) > 0.9


def synthetic_round(rng: random.Random, consensus: float, flippers: set[str], minority: dict[str, float]):
    """30 users x 20 labels; the model agrees with an honest label with probability `consensus`,
    with a flipper's with 1 - consensus, with a minority user's at their own rate."""
    users, agreements = [], []
    for u in [f"u{i}" for i in range(30)] + sorted(flippers) + sorted(minority):
        p = 1 - consensus if u in flippers else minority.get(u, consensus)
        for _ in range(20):
            users.append(u)
            agreements.append(rng.random() < p)
    return users, agreements


@pytest.mark.parametrize("seed", range(10))
def test_label_flippers_are_found_and_honest_users_are_not(seed):
    rng = random.Random(seed)
    users, agreements = synthetic_round(rng, 0.85, {"flip1", "flip2"}, {})
    tested = find_suspects(users, agreements, 0.85, SuspectConfig())
    assert len(tested) == 32
    assert {u for u, a in tested.items() if a.suspect} == {"flip1", "flip2"}
    assert tested["flip1"].labels == 20 and tested["flip1"].p_value < 0.01 / 32


def test_users_with_too_few_labels_are_not_tested():
    users = ["few"] * 7 + ["many"] * 8
    tested = find_suspects(users, [False] * 15, 0.9, SuspectConfig(min_labels=8))
    assert set(tested) == {"many"} and tested["many"].suspect
    assert find_suspects(["a"] * 5, [False] * 5, 0.9, SuspectConfig()) == {}


def test_the_test_is_against_the_consensus_not_perfection():
    # 14 of 20 agreeing is what a 0.7 consensus predicts: not suspect; against 0.99 it would be
    users = ["u"] * 20
    agreements = [True] * 14 + [False] * 6
    assert not find_suspects(users, agreements, 0.7, SuspectConfig())["u"].suspect
    assert find_suspects(users, agreements, 0.99, SuspectConfig())["u"].suspect


def test_bonferroni_scales_with_the_number_of_users_tested():
    # p-value of 3/12 agreeing at consensus 0.75 is ~0.0004: alone it is suspect, among 100 users it is not
    lone = find_suspects(["x"] * 12, [True] * 3 + [False] * 9, 0.75, SuspectConfig())
    assert lone["x"].suspect and 1e-4 < lone["x"].p_value < 1e-3
    users = ["x"] * 12 + [f"u{i}" for i in range(99) for _ in range(12)]
    agreements = [True] * 3 + [False] * 9 + [True, True, True, False] * (99 * 3)
    assert not find_suspects(users, agreements, 0.75, SuspectConfig())["x"].suspect
