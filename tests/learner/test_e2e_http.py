"""The whole loop against real processes: a simulated user talks to `rlhf serve` (tiny model)
over HTTP and gives feedback through /v1/feedback; `rlhf learn` consumes the broker, trains,
gates and publishes; with default settings serving routes the new adapter as a canary on a
sticky 10 % of users (the rest keep the base model), and it measurably moves the policy
toward the user's hidden preference, with its KL to the base reported.

The module has its own broker and adapter store, so no other test's events reach this learner.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from adapters.router import user_bucket
from adapters.store import verify_adapter
from harness.metrics import metric_value
from harness.user import Preference, converse
from rlhf.models.dialogues import tiny_prompts
from tests.learner.conftest import wait_routed
from tests.learner.simulate import WORD, served_adapter_vs_base

N_QUESTIONS = 700


def canary_or_base(server, user: str) -> str | None:
    """The adapter that answers `user` when the request names no version (routing decides)."""
    r = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 2, "user": user})
    assert r.status_code == 200, r.text
    return r.json()["rlhf"]["adapter"]


@pytest.mark.timeout(2400)  # a shared 2-core machine: serving, the user and the learner compete for it
def test_simulated_user_through_http_moves_the_policy(loop_env, server_factory, learner_factory):
    server = server_factory(**loop_env, RLHF_FEEDBACK_RATE_LIMIT=100000)
    # KL budget: one round's KL on this tiny model varied from 2.5 to 6.0 nats between runs (the
    # adaptive controller aims at 2.0 but has only one round to get there); 8.0 keeps the gate real
    # (the KL is still measured, reported and checked below) without making the test a coin toss.
    learner = learner_factory(**loop_env, RLHF_LEARNER_MIN_FEEDBACK=350, RLHF_LEARNER_INTERVAL_S=100000,
                              RLHF_KL_BUDGET=8.0, RLHF_RM_ACCURACY_FLOOR=0.6).launch()

    # 1. the user: 700 questions, two answers each, feedback through the public API
    rng = random.Random(3)
    users = [f"user{k}" for k in range(20)]
    jobs = [(i, q, rng.choice(users)) for i, q in enumerate(tiny_prompts(N_QUESTIONS, seed=11))]
    with httpx.Client(base_url=server.url, timeout=120) as client, ThreadPoolExecutor(4) as pool:
        kinds = list(pool.map(lambda job: converse(client, Preference(WORD), job[1], seed=job[0], user=job[2],
                                                   rng=random.Random(job[0])), jobs))
    sent = {k: kinds.count(k) for k in ("pairwise", "thumbs")}
    print(f"\nfeedback sent: {sent}")
    assert sent["pairwise"] + sent["thumbs"] >= 350

    # 2. the learner consumes it, trains, and publishes; serving routes the new version as a canary
    info = wait_routed(learner, server, "canary")
    assert (info["active"], info["canary_fraction"]) == (None, 0.1)  # RLHF_CANARY_FRACTION's default
    routed = {u: canary_or_base(server, u) for u in users}
    assert routed == {u: "policy@v1" if user_bucket(u) < 0.1 else None for u in users}
    assert all(canary_or_base(server, u) == routed[u] for u in users[:5])  # sticky

    # 3. what the learner reports
    metrics = learner.metrics()
    consumed = sum(metric_value(metrics, "rlhf_learner_events_total", f'topic="{t}"') or 0
                   for t in ("rlhf.interactions", "rlhf.feedback"))
    assert consumed >= 2 * N_QUESTIONS + 350
    assert metric_value(metrics, "rlhf_learner_adapters_published_total") == 1
    assert metric_value(metrics, "rlhf_learner_adapters_rejected_total") == 0
    kl = metric_value(metrics, "rlhf_learner_kl", 'stage="candidate"')
    acc = metric_value(metrics, "rlhf_learner_rm_accuracy", 'measure="gate"')
    gain = (metric_value(metrics, "rlhf_learner_reward_mean", 'policy="candidate"')
            - metric_value(metrics, "rlhf_learner_reward_mean", 'policy="serving"'))
    assert kl is not None and 0.0 < kl <= 8.0
    assert acc >= 0.6 and gain > 0
    for name in ("rlhf_learner_policy_loss", "rlhf_learner_value_loss", "rlhf_learner_clipfrac",
                 "rlhf_learner_round_seconds_count"):
        assert metric_value(metrics, name) is not None, name
    assert "rlhf_consumer_lag{" in metrics
    health = httpx.get(learner.url + "/healthz", timeout=5).json()
    assert health["consumer_alive"] and health["last_round"]["status"] == "published"

    # the manifest carries the KL and the feedback count; the announcement verified on serving
    (path, sha), = learner.query("SELECT path, manifest_sha256 FROM adapters WHERE version='policy@v1'")
    manifest = verify_adapter(loop_env["RLHF_ADAPTER_DIR"], path, sha)
    assert manifest["metrics"]["kl_candidate"] == pytest.approx(kl)
    assert manifest["feedback_count"] >= 350 and manifest["parent"] is None
    # the announcement (and any dead letter) went out; live figures are queued every 30 s, so one may wait
    unsent = learner.query("SELECT payload FROM outbox WHERE sent_at IS NULL")
    unsent = {json.loads(payload)["type"] for (payload,) in unsent}
    assert unsent <= {"live_figures"}, unsent

    # 4. the preference moved: sampled through serving, base by name vs the published version
    base, tuned, z = served_adapter_vs_base(server.url, "policy@v1", tiny_prompts(100, seed=777))
    print(f"answers containing {WORD!r} through serving: base {base:.3f} -> policy@v1 {tuned:.3f} (z = {z:.1f}); "
          f"KL {kl:.3f} nats; RM accuracy {acc:.3f}; learner metrics reward gain {gain:+.3f}")
    print(json.dumps({k: manifest["metrics"].get(k) for k in (
        "rm_pairwise_accuracy", "rm_heldout_pairs", "reward_candidate", "reward_serving", "kl_candidate",
        "ppo_kl", "ppo_kl_coef", "round_seconds")}))
    assert z > 2.33 and tuned >= base + 0.05  # one-sided, p < 0.01

    assert learner.stop() == 0
    server.stop()  # free its memory for the tests after this one
