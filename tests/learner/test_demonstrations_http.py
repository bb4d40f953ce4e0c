"""Corrected answers end to end, against real processes: a population of simulated users chats with
`rlhf serve` (tiny model) over HTTP and rewrites every answer it gets to say "happy" (a word the base
model writes in about 13 % of its answers), sending each rewrite as a `demonstration` with the
feedback token serving gave; `rlhf learn` consumes the broker, runs a DPO round that starts with
supervised steps on the corrections, and publishes; serving routes the version to everyone
(RLHF_CANARY_FRACTION=0, the operator's explicit choice), and its answers on held-out prompts,
sampled through serving, say "happy" far more often than the base model's (z > 3).

The round is the one of test_demonstrations_round.py (same algorithm, settings and the default KL budget), fed
through the public API instead of the store. A demonstration with someone else's token is refused
in tests/feedback/test_demonstrations.py.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from harness.metrics import metric_value
from harness.user import correct
from rlhf.models.dialogues import tiny_prompts
from tests.learner.conftest import FAST_CONFIG, wait_routed
from tests.learner.simulate import WORD, happy_correction, served_adapter_vs_base
from tests.learner.test_dpo import DPO_FAST

N_QUESTIONS = 300  # as many corrections as the store-fed round learns from


@pytest.mark.timeout(2400)  # a shared 2-core machine: serving, the users and the learner compete for it
def test_corrected_answers_through_http_teach_the_taste(loop_env, server_factory, learner_factory, tmp_path):
    routing = {"RLHF_CANARY_FRACTION": 0}  # a published version is active for every user at once
    server = server_factory(**loop_env, **routing, RLHF_FEEDBACK_RATE_LIMIT=100000)
    config = tmp_path / "corrections.json"
    config.write_text(json.dumps({**FAST_CONFIG, "dpo": DPO_FAST}))
    learner = learner_factory(**loop_env, **routing, RLHF_LEARNER_ALGORITHM="dpo", RLHF_LEARNER_CONFIG=config,
                              RLHF_LEARNER_MIN_FEEDBACK=N_QUESTIONS, RLHF_LEARNER_INTERVAL_S=100000).launch()

    # 1. the users: one question each turn, one answer, rewritten and sent back with its token
    rng = random.Random(21)
    jobs = [(i, q, f"user{rng.randrange(20)}") for i, q in enumerate(tiny_prompts(N_QUESTIONS, seed=21))]
    with httpx.Client(base_url=server.url, timeout=120) as client, ThreadPoolExecutor(4) as pool:
        sent = list(pool.map(lambda job: correct(client, job[1], happy_correction, seed=job[0], user=job[2]), jobs))
    assert len(sent) == N_QUESTIONS and all(WORD in text for text in sent)

    # 2. the learner learns from them and publishes; serving routes the new version to everyone
    info = wait_routed(learner, server, "active")
    assert info["canary"] is None
    metrics = learner.metrics()
    assert metric_value(metrics, "rlhf_learner_feedback_by_type", 'type="demonstration"') == N_QUESTIONS
    assert metric_value(metrics, "rlhf_learner_feedback_by_type", 'type="thumbs"') == 0
    assert metric_value(metrics, "rlhf_learner_feedback_by_source", 'source="user"') == N_QUESTIONS
    (row,), = learner.query("SELECT metrics FROM rounds WHERE status='published' AND candidate='policy@v1'")
    m = json.loads(row)
    assert m["sft_demonstrations"] > 100 and m["sft_steps"] > 0
    assert m["examples_demonstration"] == m["sft_demonstrations"] == m["examples_user"]
    assert m["examples_thumbs"] == m["examples_pairwise"] == m["examples_ai"] == 0
    assert m["rm_pairwise_accuracy"] > 0.8  # held-out users' corrections beat the answers they corrected
    assert m["reference"] == "supervised steps of round 1"  # the KL below is measured from that policy
    assert 0.0 <= m["kl_candidate"] <= 5.0 and m["perplexity_rise"] <= 0.10  # the default budget; language checked

    # 3. the taste, on prompts no one asked, sampled through serving: base by name vs the published version
    base, tuned, z = served_adapter_vs_base(server.url, "policy@v1", tiny_prompts(100, seed=777))
    print(f"\n{m['sft_demonstrations']} corrections trained (SFT loss {m['sft_loss']:.3f}), RM accuracy "
          f"{m['rm_pairwise_accuracy']:.3f}, KL {m['kl_candidate']:.2f} nats; answers containing {WORD!r} "
          f"through serving: base {base:.3f} -> policy@v1 {tuned:.3f} (400 samples each, z {z:.1f})")
    assert z > 3

    assert learner.stop() == 0
    server.stop()  # free its memory for the tests after this one
