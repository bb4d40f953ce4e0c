"""Learning, end to end on the learner API with the tiny model and a real vLLM engine.

A simulated user prefers answers containing "happy" (the tiny model writes it in ~13 % of its
answers). Its feedback on real samples of the base model goes into the learner store; one
round must give a reward model that ranks held-out pairs by that preference and an adapter
that writes "happy" clearly more often than the base model, within the KL budget.
"""

from __future__ import annotations

import hashlib
import math

import pytest

from feedback.schema import Interaction, Pairwise
from learner.ppo import PPOTrainer
from learner.reward import RewardConfig, RewardModel, RewardTrainer
from rlhf.models.dialogues import tiny_prompts
from tests.learner.rounds import make_learner, published_adapter, round_on_synthetic_feedback, taste_of
from tests.learner.simulate import synthetic_events


@pytest.fixture(scope="module")
def learner(tiny_model_path, tmp_path_factory):
    lrn = make_learner(tmp_path_factory, "ppo")
    yield lrn
    lrn.close()


def test_ppo_iteration_with_vllm_rollouts(learner, tmp_path):
    """Two PPO iterations: rollouts come from vLLM with the current LoRA under a new id each time."""
    rm = RewardModel.create(learner.model_path, RewardConfig())
    ppo = PPOTrainer(learner.model_path, learner.tokenizer, learner.cfg.ppo, rm, workdir=tmp_path / "ppo")
    prompts = learner.encode_prompts([[{"role": "user", "content": q}] for q in tiny_prompts(16, seed=3)])
    first_id = learner.engine.lora(tmp_path, "probe").lora_int_id
    s1 = ppo.step(learner.engine, prompts)
    s2 = ppo.step(learner.engine, prompts)
    assert learner.engine.lora(tmp_path, "probe").lora_int_id == first_id + 3  # one fresh id per iteration
    for s in (s1, s2):
        assert s["tokens"] > 0 and 0.0 <= s["clipfrac"] <= 1.0 and s["eos_fraction"] > 0.5
    assert s1["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout is the base policy itself
    assert s2["kl"] != 0.0
    assert list((tmp_path / "ppo").iterdir()) == []  # rollout adapters are cleaned up


def rm_accuracy_on_fresh_pairs(learner, seed: int) -> tuple[float, int]:
    """Held-out pairs the learner never saw: fresh base samples, judged by the same user."""
    events, _ = synthetic_events(learner.engine, learner.tokenizer, tiny_prompts(400, seed=seed), seed=seed,
                                 thumbs_share=0.0)
    by_id = {e.response_id: e for _, e in events if isinstance(e, Interaction)}
    pairs = []
    for _, e in events:
        if isinstance(e, Pairwise):
            c, r = by_id[e.chosen_response_id], by_id[e.rejected_response_id]
            pairs.append({"type": "pairwise", "seq": 0, "messages": [m.model_dump() for m in c.messages],
                          "chosen": c.response, "chosen_finish": c.finish_reason,
                          "rejected": r.response, "rejected_finish": r.finish_reason})
    rm = RewardModel.load(learner.model_path, learner.store.latest_reward_model()["path"])
    m = RewardTrainer(rm, learner.tokenizer, learner.cfg.reward).evaluate(pairs)
    return m["rm_pairwise_accuracy"], m["rm_heldout_pairs"]


@pytest.mark.timeout(1800)  # shared 2-core machine; about 3 minutes when it is quiet
def test_learns_a_hidden_preference_and_publishes(learner):
    # the user's feedback on 700 prompts (~400 events), then one round: reward model, PPO, gate, publish
    result, stats = round_on_synthetic_feedback(learner, thumbs_share=0.2)
    assert stats["pairwise"] + stats["thumbs"] <= 500
    m = result.metrics
    print(f"\nfeedback {stats}; round: {result.status} {result.reasons}; RM held-out accuracy "
          f"{m['rm_pairwise_accuracy']:.3f} ({m['rm_heldout_pairs']} pairs); reward {m['reward_candidate']:.3f} "
          f"vs base {m['reward_serving']:.3f}; KL {m['kl_candidate']:.3f}; {m['round_seconds']:.0f} s")
    assert result.status == "published", result.reasons
    assert result.version == "policy@v1"

    # the reward model ranks pairs by the hidden preference, well above chance: the round's own
    # held-out split is small (a few dozen pairs), so test it against chance (one-sided binomial,
    # p < 0.05); the fresh pairs below hold it to a fixed bar on a larger sample
    n_held = int(m["rm_heldout_pairs"])
    k = round(m["rm_pairwise_accuracy"] * n_held)
    p_chance = sum(math.comb(n_held, j) for j in range(k, n_held + 1)) / 2**n_held
    assert n_held >= 10 and p_chance < 0.05, (k, n_held, p_chance)
    acc, n = rm_accuracy_on_fresh_pairs(learner, seed=4242)
    print(f"reward model on {n} fresh held-out pairs: accuracy {acc:.3f}")
    assert n >= 50 and acc >= 0.8

    # the published adapter: in the store, verified, announced through the outbox, KL reported
    ann, manifest = published_adapter(learner)
    assert ann["version"] == "policy@v1" and ann["parent"] is None
    folder = learner.settings.adapter_dir / ann["path"]
    assert hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest() == ann["manifest_sha256"]
    assert manifest["base_model"] == "tiny" and manifest["feedback_count"] == stats["pairwise"] + stats["thumbs"]
    assert 0.0 < manifest["metrics"]["kl_candidate"] <= learner.settings.kl_budget
    assert manifest["metrics"]["reward_candidate"] > manifest["metrics"]["reward_serving"]
    routing = learner.store.routing()  # default settings: a canary on 10 % of users, not yet active
    assert (routing.active, routing.canary, routing.canary_fraction) == (None, "policy@v1", 0.1)

    # the adapter writes the preferred word clearly more often than the base model (vLLM samples)
    base, tuned, _ = taste_of(learner, ann)
    assert tuned >= base + 0.06 and tuned >= 1.4 * base
