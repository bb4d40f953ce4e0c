"""The users decide, against real processes: `rlhf serve` (tiny model) routes a sticky share of
users to a canary, simulated users chat and press thumbs through HTTP, `rlhf learn` consumes the
broker and its promotion controller promotes the canary they like more, rolls back one they like
less, and ends one they like the same without promoting it; serving follows each decision.

The simulated users' taste is by version (the answer says which version wrote it): the test is
about the decision, not the training. Users post one at a time from a seeded generator, so the
feedback sequence is the same on every run. The learner never trains here (its thresholds are
out of reach): it only evaluates.
"""

from __future__ import annotations

import json
import random

import httpx
import pytest

from harness.loras import make_lora
from harness.metrics import metric_value
from harness.waiting import wait_until
from tests.serving.test_adapters import cli

MAX_EVENTS = 150


def routing(server) -> dict:
    return httpx.get(server.url + "/v1/adapters", timeout=10).json()


def users_rate(server, likes: dict[str, float], rng: random.Random, until, max_chats: int = 900) -> int:
    """Users ask and press thumbs (up with `likes[version]`) until `until()`; returns the chats made."""
    users = [f"person{k}" for k in range(80)]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for n in range(max_chats):
            if n % 20 == 0 and until():
                return n
            user = users[n % len(users)]
            r = client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": f"Question {n}: tell me something."}], "max_tokens": 8,
                "user": user})
            assert r.status_code == 200, r.text
            rlhf = r.json()["rlhf"]
            ref = rlhf["responses"][0]
            value = "up" if rng.random() < likes.get(rlhf["adapter"], 0.5) else "down"
            f = client.post("/v1/feedback", json={"type": "thumbs", "response_id": ref["response_id"],
                                                  "feedback_token": ref["feedback_token"], "value": value})
            assert f.status_code == 202, f.text
    return max_chats


@pytest.mark.timeout(1800)
def test_the_users_verdict_promotes_rolls_back_or_keeps(loop_env, control_env, server_factory, learner_factory,
                                                        tiny_model_path, tmp_path):
    server = server_factory(**loop_env, RLHF_FEEDBACK_RATE_LIMIT=100000, RLHF_CLIENT_FEEDBACK_RATE_LIMIT=100000)
    learner = learner_factory(**loop_env, RLHF_LEARNER_MIN_FEEDBACK=10**9, RLHF_LEARNER_INTERVAL_S=10**9,
                              RLHF_CANARY_MAX_EVENTS=MAX_EVENTS, RLHF_PROMOTE_CONFIDENCE=0.95).launch()
    versions = []
    for k in range(4):
        folder = make_lora(tiny_model_path, tmp_path / f"lora{k}", seed=k)
        r = cli({**control_env, **loop_env}, server, "publish", str(folder), "--name", "policy",
                *(["--activate"] if k == 0 else ["--canary", "0.5"]))
        assert r.returncode == 0, r.stderr
        versions.append(f"policy@v{k + 1}")
        active, canary = versions[0] if k < 2 else versions[1], versions[k] if k else None
        wait_until(lambda: (routing(server)["active"], routing(server)["canary"]) == (active, canary), 60, 0.5,
                   f"serving to route to {active} with canary {canary}: {r.stdout} {r.stderr}")
        if k == 0:
            continue
        rng = random.Random(k)
        if k == 1:      # users like the canary more: promoted
            likes, want = {versions[0]: 0.2, versions[1]: 0.9}, (versions[1], None)
        elif k == 2:    # users like the canary less: rolled back, the active version stays
            likes, want = {versions[1]: 0.8, versions[2]: 0.1}, (versions[1], None)
        else:           # the same: no decision until MAX_EVENTS canary events, then it ends, not promoted
            likes, want = {versions[1]: 0.5, versions[3]: 0.5}, (versions[1], None)
        users_rate(server, likes, rng, until=lambda: routing(server)["canary"] is None)
        learner.wait(f"the controller's decision on {versions[k]}",
                     lambda: (routing(server)["active"], routing(server)["canary"]) == want, timeout=120, every=1.0)

    decisions = learner.query("SELECT payload FROM outbox WHERE topic = 'rlhf.adapters' ORDER BY created_at")
    made = [d for d in (json.loads(p[0]) for p in decisions) if d.get("source") == "promotion-controller"]
    assert [(d["action"], d["version"], d["evidence"]["decision"]) for d in made] == [
        ("activate", versions[1], "promote"), ("canary", None, "rollback"), ("canary", None, "expired")]
    assert made[2]["evidence"]["events"] >= MAX_EVENTS and made[0]["evidence"]["thumbs"]["low"] > 0
    assert made[1]["evidence"]["thumbs"]["high"] < 0 and all(d["reason"] and d["signature"] for d in made)
    metrics = learner.metrics()
    for decision in ("promote", "rollback", "expired"):
        assert metric_value(metrics, "rlhf_canary_decisions_total", f'decision="{decision}"') == 1
    assert metric_value(metrics, "rlhf_version_answers", f'version="{versions[3]}"') > 0
