"""Per-user and per-client caps on a round's training signal (learner/weighting.py): pure math."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from learner.weighting import (
    capped_weights,
    group_shares,
    systematic_sample,
    water_fill,
    weighted_order,
    with_ai_examples,
)

EPS = 1e-6


def crowd(rng: random.Random, n_users: int, n_clients: int, heavy: int = 0) -> tuple[list[str], list[str]]:
    """Users with heavy-tailed volumes, each in one client; `heavy` extra examples from user u0."""
    users, clients = [], []
    for u in range(n_users):
        k = int(rng.paretovariate(1.0)) + (heavy if u == 0 else 0)
        users += [f"u{u}"] * k
        clients += [f"c{u % n_clients}"] * k
    return users, clients


def test_water_fill_by_hand():
    # a: 70 %, b: 20 %, c: 10 % under a 0.4 cap -> a held at 0.4; b and c share 0.6 as 2:1
    shares = water_fill({"a": 7.0, "b": 2.0, "c": 1.0}, 0.4)
    assert shares == pytest.approx({"a": 0.4, "b": 0.4, "c": 0.2})
    # capping a pushes b over: the fill repeats until none is over
    shares = water_fill({"a": 10.0, "b": 5.0, "c": 1.0, "d": 1.0}, 0.3)
    assert shares == pytest.approx({"a": 0.3, "b": 0.3, "c": 0.2, "d": 0.2})
    assert water_fill({"a": 1.0, "b": 3.0}, 0.9) == pytest.approx({"a": 0.25, "b": 0.75})  # under the cap: as is


def test_water_fill_infeasible_gives_equal_shares():
    # 3 groups cannot each stay under 0.05: equal shares, the strictest cap that can hold
    assert water_fill({"a": 100.0, "b": 1.0, "c": 1.0}, 0.05) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert water_fill({"a": 5.0, "b": 0.0}, 0.5) == {"a": 1.0, "b": 0.0}  # groups without mass do not count


@pytest.mark.parametrize("seed", range(40))
def test_both_caps_hold_on_random_crowds(seed):
    rng = random.Random(seed)
    users, clients = crowd(rng, rng.randint(25, 80), rng.randint(2, 6), heavy=rng.choice([0, 500]))
    cu, cc = rng.choice([0.02, 0.05, 0.1]), rng.choice([0.3, 0.5])
    r = capped_weights(users, clients, max_user_share=cu, max_client_share=cc)
    assert len(r.weights) == len(users) and all(w > 0 for w in r.weights)
    assert sum(r.weights) == pytest.approx(1.0)
    assert r.user_cap == pytest.approx(max(cu, 1 / len(set(users))))
    assert max(group_shares(r.weights, users).values()) <= r.user_cap + EPS
    if r.client_cap_met:
        assert max(group_shares(r.weights, clients).values()) <= r.client_cap + EPS
    # within a group the examples keep equal weight (they started equal)
    for u in set(users):
        ws = [w for w, x in zip(r.weights, users) if x == u]
        assert max(ws) == pytest.approx(min(ws))


def test_a_flood_of_one_user_gets_the_cap():
    users = ["spammer"] * 10_000 + [f"u{i}" for i in range(100)]
    r = capped_weights(users, [""] * len(users), max_user_share=0.05, max_client_share=0.5)
    assert r.user_shares["spammer"] == pytest.approx(0.05)
    assert r.user_shares["u7"] == pytest.approx(0.95 / 100)
    assert r.client_cap_met and r.max_client_share == pytest.approx(1.0)  # one client: everything, by the fallback


def test_a_client_inventing_users_gets_the_client_cap():
    users = [f"bot{i}" for i in range(1000)] + [f"honest{i}" for i in range(40)]
    clients = ["leaked-key"] * 1000 + ["web"] * 40
    r = capped_weights(users, clients, max_user_share=0.05, max_client_share=0.5)
    assert r.client_shares == pytest.approx({"leaked-key": 0.5, "web": 0.5})
    assert r.client_cap_met and r.max_user_share <= 0.05 + EPS


def test_fewer_users_than_one_over_the_cap_gives_equal_shares():
    users = ["a"] * 90 + ["b"] * 9 + ["c"]
    r = capped_weights(users, [""] * 100, max_user_share=0.05, max_client_share=0.5)
    assert r.user_shares == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert r.user_cap == pytest.approx(1 / 3)


def test_a_single_anonymous_user_keeps_all_the_weight():
    r = capped_weights([""] * 50, [""] * 50, max_user_share=0.05, max_client_share=0.5)
    assert r.weights == pytest.approx([1 / 50] * 50)
    assert r.user_shares == {"": pytest.approx(1.0)} and r.client_shares == {"": pytest.approx(1.0)}


def test_when_both_caps_cannot_hold_the_user_cap_wins():
    # client x has one user: the client cap would give it half, 10 times the user cap; the user cap holds
    users = ["solo"] * 500 + [f"u{i}" for i in range(99)]
    clients = ["x"] * 500 + ["y"] * 99
    r = capped_weights(users, clients, max_user_share=0.05, max_client_share=0.5)
    assert not r.client_cap_met
    assert r.user_shares["solo"] == pytest.approx(0.05) and r.client_shares["y"] == pytest.approx(0.95)


def test_a_small_client_is_not_raised_past_its_users_caps():
    # two sybils with their own key post as much as 17 honest users of another: with fewer than 20
    # users every user gets an equal share, so the sybils' client gets 2/19, not the client cap's half
    users = [f"app:u{i}" for i in range(17) for _ in range(20)] + [f"m:m{i}" for i in range(2) for _ in range(170)]
    clients = [u.split(":")[0] for u in users]
    r = capped_weights(users, clients, max_user_share=0.05, max_client_share=0.5)
    assert r.client_shares["m"] == pytest.approx(2 / 19) and not r.client_cap_met
    # with enough users on both sides both caps hold
    users = [f"app:u{i}" for i in range(30)] * 3 + [f"m:m{i}" for i in range(12)] * 20
    clients = [u.split(":")[0] for u in users]
    r = capped_weights(users, clients, max_user_share=0.05, max_client_share=0.5)
    assert r.client_cap_met and r.client_shares == pytest.approx({"app": 0.5, "m": 0.5})
    assert r.max_user_share <= 0.05 + EPS


def test_masses_lower_a_user_below_the_cap():
    users = [f"u{i}" for i in range(40) for _ in range(5)]
    masses = [0.1 if u == "u3" else 1.0 for u in users]
    r = capped_weights(users, [""] * len(users), max_user_share=0.05, max_client_share=0.5, masses=masses)
    assert r.user_shares["u3"] == pytest.approx(0.1 / 39.1)
    assert r.user_shares["u4"] == pytest.approx(1 / 39.1)
    dropped = capped_weights(users, [""] * len(users), max_user_share=0.05, max_client_share=0.5,
                             masses=[0.0 if u == "u3" else 1.0 for u in users])
    assert dropped.user_shares["u3"] == 0.0 and dropped.max_user_share == pytest.approx(1 / 39)


def test_caps_must_be_fractions():
    with pytest.raises(ValueError):
        capped_weights(["a"], [""], max_user_share=0.0, max_client_share=0.5)
    with pytest.raises(ValueError):
        capped_weights(["a"], [""], max_user_share=0.05, max_client_share=1.5)
    assert capped_weights([], [], max_user_share=0.05, max_client_share=0.5).weights == []


def test_the_judges_total_share_is_capped_and_people_keep_the_rest():
    # 4 people, one example each (0.25 each); 12 AI verdicts at RLHF_JUDGE_WEIGHT 0.5: uncapped the
    # judge weighs 12 x 0.5 x 0.25 = 1.5 against the people's 1, a share of 1.5 / 2.5 = 0.6
    people = capped_weights(["a", "b", "c", "d"], ["k"] * 4, max_user_share=0.5, max_client_share=1.0)
    is_ai = [False] * 4 + [True] * 12

    free = with_ai_examples(people, is_ai, 0.5, max_ai_share=0.75)  # 0.6 is under the cap: unchanged
    assert free.ai_share == pytest.approx(0.6)
    assert free.weights[:4] == pytest.approx([0.1] * 4) and free.weights[4:] == pytest.approx([0.05] * 12)
    assert with_ai_examples(people, is_ai, 0.5).weights == pytest.approx(free.weights)  # no cap: the same

    half = with_ai_examples(people, is_ai, 0.5, max_ai_share=0.5)  # the judge weighs as much as the people
    assert half.ai_share == pytest.approx(0.5)
    assert half.weights[:4] == pytest.approx([1 / 8] * 4) and half.weights[4:] == pytest.approx([1 / 24] * 12)

    fifth = with_ai_examples(people, is_ai, 0.5, max_ai_share=0.2)  # AI total 1 x 0.2 / 0.8 = 0.25 of 1.25
    assert fifth.ai_share == pytest.approx(0.2)
    assert fifth.weights[:4] == pytest.approx([0.2] * 4) and fifth.weights[4:] == pytest.approx([1 / 60] * 12)
    assert fifth.user_shares == people.user_shares  # the people's shares among themselves, unchanged

    off = with_ai_examples(people, is_ai, 0.5, max_ai_share=0.0)
    assert off.ai_share == 0.0 and off.weights[:4] == pytest.approx([0.25] * 4)
    assert with_ai_examples(people, [False] * 4, 0.5, max_ai_share=0.5).ai_share == 0.0
    with pytest.raises(ValueError):
        with_ai_examples(people, is_ai, 0.5, max_ai_share=1.5)


def test_systematic_sample_gives_each_group_its_share_to_within_one_draw():
    rng = random.Random(0)
    users = sorted(crowd(rng, 60, 3, heavy=300)[0])
    r = capped_weights(users, [""] * len(users), max_user_share=0.05, max_client_share=1.0)
    k = 200
    drawn = Counter(users[i] for i in systematic_sample(r.weights, k, rng))
    assert sum(drawn.values()) == k
    for u, share in r.user_shares.items():
        assert abs(drawn[u] - k * share) <= 1.0 + EPS, u
    assert systematic_sample([0.0, 1.0, 0.0], 3, rng) == [1, 1, 1]


def test_weighted_order_prefers_heavy_items_and_skips_zero_weights():
    rng = random.Random(1)
    firsts = Counter(weighted_order([1.0, 9.0, 0.0], rng)[0] for _ in range(2000))
    assert set(firsts) == {0, 1} and 0.85 < firsts[1] / 2000 < 0.95
    assert sorted(weighted_order([1.0, 9.0, 0.0], rng)) == [0, 1]
