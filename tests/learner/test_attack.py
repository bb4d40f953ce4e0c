"""Poisoning, as an attacker would try it: through the HTTP API and the broker, with real keys.

Twenty honest users of client `app` like answers containing WORD; client `mallory` posts the
opposite taste through three users, at the same total volume as all honest users together.
The learner caps each user at RLHF_LEARNER_MAX_USER_SHARE of the training signal (an equal share
when fewer users train), so the three attackers carry at most three users' shares whatever they
post, and less once found suspect. The round either publishes an
adapter the honest users prefer over the base (measured on prompts no one trained on) or
publishes nothing; never one they like less.
"""

from __future__ import annotations

import math

import httpx
import pytest

from harness.broker import start_broker
from harness.crowd import add_key, attacker_shares, interleave, jobs_for, talk
from harness.user import Preference, liked_answers
from rlhf.models.dialogues import tiny_prompts
from tests.learner.simulate import WORD

N_HONEST = 700  # questions the honest users ask; the attacker asks as many
MAX_USER_SHARE = 0.05


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    broker = start_broker(tmp_path_factory.mktemp("broker") / "broker.log")
    keys = tmp_path_factory.mktemp("keys") / "api_keys"
    yield {"RLHF_KAFKA_BOOTSTRAP": broker.bootstrap, "RLHF_ADAPTER_DIR": str(tmp_path_factory.mktemp("adapters")),
           "RLHF_API_KEYS_FILE": str(keys)}
    broker.stop()


def honest_rate(url: str, model: str, key: str, questions: list[str]) -> float:
    hits = liked_answers(url, model, questions, Preference(WORD), n=4, seed=10_000, api_key=key)
    return sum(hits) / len(hits)


@pytest.mark.timeout(2400)  # a shared 2-core machine: serving, the users and the learner compete for it
def test_three_sybils_at_equal_volume_cannot_turn_the_round(env, server_factory, learner_factory):
    app, mallory, judge = (add_key(env["RLHF_API_KEYS_FILE"], name) for name in ("app", "mallory", "judge"))
    server = server_factory(**env, RLHF_AUTH="api-key", RLHF_FEEDBACK_RATE_LIMIT=100000,
                            RLHF_CHAT_RATE_LIMIT=100000, RLHF_CLIENT_CHAT_RATE_LIMIT=100000,
                            RLHF_CLIENT_FEEDBACK_RATE_LIMIT=100000)
    learner = learner_factory(**env, RLHF_LEARNER_MIN_FEEDBACK=600, RLHF_LEARNER_INTERVAL_S=100000,
                              RLHF_KL_BUDGET=8.0, RLHF_RM_ACCURACY_FLOOR=0.6,
                              RLHF_LEARNER_MAX_USER_SHARE=MAX_USER_SHARE).launch()

    # 1. both crowds talk at once, through the public API, each with its own key
    questions = tiny_prompts(2 * N_HONEST, seed=11)
    honest = jobs_for(questions[:N_HONEST], [f"user{k}" for k in range(20)], app, Preference(WORD), seed=1)
    attack = jobs_for(questions[N_HONEST:], ["m0", "m1", "m2"], mallory, Preference(WORD, opposite=True), seed=2)
    jobs = interleave(honest, attack, seed=3)
    kinds = talk(server.url, jobs)
    sent = [(j.api_key, k) for j, k in zip(jobs, kinds, strict=True) if k]
    n_attack = sum(1 for key, _ in sent if key == mallory)
    print(f"\nfeedback sent: {len(sent)}, of it the attacker's: {n_attack} ({n_attack / len(sent):.0%})")
    assert 0.4 <= n_attack / len(sent) <= 0.6  # the same volume as all honest users together

    # 2. the learner's round ends one way or the other
    (round_id, status, reason), = learner.wait(
        "a round to finish", lambda: learner.query("SELECT id, status, reason FROM rounds WHERE finished_at IS NOT "
                                                   "NULL"), timeout=1800, every=2.0)
    assert status in ("published", "rejected"), (status, reason, learner.tail())

    # 3. what the attacker bought: half the posts, at most three users' caps of the weight
    shares = attacker_shares(learner.data_dir / "learner.sqlite3", round_id, "mallory")
    print(f"round {round_id} {status}: attacker share of training rows {shares['posts']:.2f}, of the reward "
          f"model's weight {shares['rm_weight']:.3f}, of the policy's prompts {shares['policy_weight']:.3f}; "
          f"suspect users {shares['suspects']} (attacker's {shares['attacker_suspects']})")
    cap = max(MAX_USER_SHARE, 1 / shares["rm_users"])  # fewer than 1/cap users in training: equal shares
    assert shares["rm_weight"] <= 3 * cap + 1e-6
    # the policy's prompts are whole draws: each user's share is its weight to within one prompt
    if shares["policy_prompts"]:  # none when the round stopped at the reward model's gate
        policy_cap = max(MAX_USER_SHARE, 1 / shares["policy_users"])
        assert shares["policy_weight"] <= 3 * policy_cap + 3 / shares["policy_prompts"] + 1e-6

    # 4. published: the honest users like it better than the base, on prompts no one trained on
    if status == "published":  # routed as a canary first (default settings); asked for by name here
        info = learner.wait("serving to route to the new version",
                            lambda: (i := httpx.get(server.url + "/v1/adapters", timeout=10,
                                                   headers={"Authorization": f"Bearer {judge}"}).json())["canary"]
                            and i, timeout=120)
        held_out = tiny_prompts(100, seed=777)
        base = honest_rate(server.url, "tiny", judge, held_out)
        tuned = honest_rate(server.url, info["canary"], judge, held_out)
        n = 4 * len(held_out)
        pooled = (base + tuned) / 2
        z = (tuned - base) / math.sqrt(max(pooled * (1 - pooled), 1e-9) * 2 / n)
        print(f"honest approval: base {base:.3f} -> {info['canary']} {tuned:.3f} (z = {z:.1f})")
        assert z > 2.33  # one-sided, p < 0.01: better for the honest users, not merely not worse
    else:
        print(f"nothing published: {reason}")

    assert learner.stop() == 0
    server.stop()
