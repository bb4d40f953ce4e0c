"""The canary's statistics: intervals by hand, and many simulated canaries watched after every event.

The simulation draws users' thumbs and blind votes for a canary and the active version with known
rates and asks `decide` after each event, as the promotion controller does: with no real
difference the share of canaries promoted stays within the configured error (the property a
sequential test must keep while it keeps looking), and a real difference is found."""

from __future__ import annotations

import math
import random

import pytest

from learner.canary_statistics import (CanaryEvidence, decide, mean_radius, mixture_rho2, pairwise_advantage,
                                     rate_interval, thumbs_difference)

ALPHA, MAX_EVENTS = 0.1, 1200


def test_radius_by_hand():
    rho2 = mixture_rho2(100, 0.05)
    a = -2 * math.log(0.05)
    assert rho2 == pytest.approx((a + math.log(a + 1)) / 25)
    v = 100 * 0.25 * rho2 + 1
    by_hand = math.sqrt(2 * v / (1e4 * rho2) * math.log(math.sqrt(v) / 0.05))
    assert mean_radius(100, 0.05, rho2) == pytest.approx(by_hand)
    assert mean_radius(0, 0.05, rho2) == math.inf
    # more data, narrower; more confidence, wider
    assert mean_radius(400, 0.05, rho2) < mean_radius(100, 0.05, rho2) < mean_radius(100, 0.01, rho2)


def test_intervals_of_rates_and_differences():
    i = rate_interval(30, 40, 0.05, 100)
    assert i.low < 0.75 < i.high and i.estimate == 0.75 and 0 <= i.low and i.high <= 1
    assert rate_interval(0, 0, 0.05, 100).low == 0 and rate_interval(0, 0, 0.05, 100).high == 1
    e = CanaryEvidence(canary_up=30, canary_down=10, active_up=20, active_down=20, wins=12, losses=4)
    d = thumbs_difference(e, 0.05, 100)
    c, a = rate_interval(30, 40, 0.025, 100), rate_interval(20, 40, 0.025, 100)
    assert d.estimate == pytest.approx(0.25) and d.low == pytest.approx(c.low - a.high)
    assert d.high == pytest.approx(c.high - a.low)
    p = pairwise_advantage(e, 0.05, 100)
    assert p.estimate == pytest.approx(0.5) and p.n == 16


def test_decisions_on_clear_evidence():
    kw = dict(margin=0.0, alpha=0.05, max_events=5000)
    assert decide(CanaryEvidence(900, 100, 500, 500), **kw).decision == "promote"
    assert decide(CanaryEvidence(100, 900, 500, 500), **kw).decision == "rollback"
    assert decide(CanaryEvidence(wins=20, losses=180), **kw).decision == "rollback"
    assert decide(CanaryEvidence(wins=180, losses=20), **kw).decision == "promote"
    assert decide(CanaryEvidence(5, 5, 5, 5), **kw).decision == "undecided"
    expired = decide(CanaryEvidence(2500, 2500, 2500, 2500), **kw)
    assert expired.decision == "expired" and "5000" in expired.reason
    # a margin lets a canary that is as good as the active version through
    assert decide(CanaryEvidence(1500, 1500, 1500, 1500), **{**kw, "margin": 0.1}).decision == "promote"


def run_canary(rng: random.Random, up_canary: float, up_active: float, win: float, *, canary_share: float = 0.5,
               vote_share: float = 0.2) -> str:
    """One canary, watched after every event until a decision: thumbs from users routed to either
    version (up with the version's rate), or a blind vote the canary wins with probability `win`."""
    cu = cd = au = ad = w = lo = 0
    for _ in range(10 * MAX_EVENTS):
        if rng.random() < vote_share:
            if rng.random() < win:
                w += 1
            else:
                lo += 1
        elif rng.random() < canary_share:
            if rng.random() < up_canary:
                cu += 1
            else:
                cd += 1
        elif rng.random() < up_active:
            au += 1
        else:
            ad += 1
        v = decide(CanaryEvidence(cu, cd, au, ad, w, lo), margin=0.0, alpha=ALPHA, max_events=MAX_EVENTS)
        if v.decision != "undecided":
            return v.decision
    raise AssertionError("no decision")


def outcomes(runs: int, seed: int, **rates) -> dict[str, float]:
    rng = random.Random(seed)
    got = [run_canary(rng, **rates) for _ in range(runs)]
    return {d: got.count(d) / runs for d in ("promote", "rollback", "expired")}


def test_with_no_real_difference_false_promotions_stay_within_the_error():
    share = outcomes(300, seed=1, up_canary=0.6, up_active=0.6, win=0.5)
    assert share["promote"] + share["rollback"] <= ALPHA   # any decision is an error here
    assert share["expired"] >= 1 - ALPHA                   # the active version stays


def test_a_better_canary_is_promoted_and_a_worse_one_rolled_back():
    better = outcomes(60, seed=2, up_canary=0.75, up_active=0.5, win=0.7)
    worse = outcomes(60, seed=3, up_canary=0.3, up_active=0.5, win=0.3)
    assert better["promote"] >= 0.9 and better["rollback"] == 0
    assert worse["rollback"] >= 0.9 and worse["promote"] == 0
