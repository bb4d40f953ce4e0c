"""Online DPO on the tiny model: one iteration samples two answers per prompt with vLLM, ranks them
with the reward model and trains the policy LoRA with DPO's loss; a round with
RLHF_LEARNER_ALGORITHM=online-dpo learns a hidden preference from synthetic feedback and publishes it.

The simulated user prefers answers containing "happy" (the tiny model writes it in ~13 % of its
answers), as in test_rloo.py and test_dpo.py, whose rounds this mirrors.
"""

from __future__ import annotations

import math

import pytest
import torch

from learner.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
from learner.reward import RewardConfig, RewardModel
from learner.round import LearnerConfig
from learner.tokenization import encode_prompt
from rlhf.models.dialogues import tiny_prompts
from tests.learner.rounds import make_learner, published_adapter, round_on_synthetic_feedback, taste_of

ONLINE_DPO_FAST = {"steps": 10, "rollout_prompts": 32}


@pytest.fixture(scope="module")
def learner(tiny_model_path, tmp_path_factory):
    lrn = make_learner(tmp_path_factory, "online-dpo", ONLINE_DPO_FAST)
    yield lrn
    lrn.close()


def test_learner_config_reads_online_dpo_options():
    cfg = LearnerConfig.from_dict({"online_dpo": {"beta": 0.2, "min_score_gap": 0.5}})
    assert cfg.online_dpo.beta == 0.2 and cfg.online_dpo.min_score_gap == 0.5
    with pytest.raises(ValueError, match="unknown online_dpo options"):
        LearnerConfig.from_dict({"online_dpo": {"examples_per_step": 8}})  # it samples, it reads no logged pairs


def test_one_iteration_ranks_fresh_answers_and_moves_only_the_lora(learner, tmp_path):
    rm = RewardModel.create(learner.model_path, RewardConfig())
    with torch.no_grad():  # a reward model that tells answers apart: random head weights, scaled up
        rm.head.weight.normal_(0.0, 1.0)
    # 2 epochs of 1 pair per step: at least 2 optimiser steps, so both LoRA matrices move (the first
    # step moves only B, which starts at 0; A gets a gradient once B is not 0)
    cfg = OnlineDPOConfig(rollout_prompts=4, num_samples=3, minibatch_size=1, epochs=2, min_score_gap=0.0)
    trainer = OnlineDPOTrainer(learner.model_path, learner.tokenizer, cfg, rm, workdir=tmp_path / "work")
    before = {n: (p.requires_grad, p.detach().clone()) for n, p in trainer.policy.named_parameters()}
    prompts = [encode_prompt(learner.tokenizer, [{"role": "user", "content": q}]) for q in tiny_prompts(4, seed=3)]

    s = trainer.step(learner.engine, prompts)
    assert s["prompts"] == 4 and s["time_rollout"] > 0 and s["clipfrac"] == 0.0
    assert all(math.isfinite(float(v)) for v in s.values())
    assert s["kl"] == pytest.approx(0.0, abs=1e-4)  # sampled from a fresh LoRA: the policy is the reference
    assert s["margin"] == pytest.approx(0.0, abs=1e-4)
    assert 1 <= s["pairs"] <= 4 and s["score_gap"] > 0  # distinct answers score apart; each pair ordered
    # the first step's loss is -log σ(0) = log 2 (policy = reference); the steps after it lower it
    assert 0.0 < s["policy_loss"] <= math.log(2) + 0.05

    moved = {n for n, p in trainer.policy.named_parameters() if not torch.equal(before[n][1], p.detach())}
    trainable = {n for n, (rg, _) in before.items() if rg}
    assert moved == trainable and all("lora_" in n for n in moved)
    assert not list((tmp_path / "work").iterdir())  # the rollout LoRA's folder is gone


@pytest.mark.timeout(1800)  # shared 2-core machine
def test_online_dpo_round_learns_a_hidden_preference_and_publishes(learner):
    # the user's feedback on 700 prompts (~400 events), then one round: reward model, online DPO ranked by it,
    # gate, publish
    result, stats = round_on_synthetic_feedback(learner, thumbs_share=0.2)
    m = result.metrics
    print(f"\nfeedback {stats}; round: {result.status} {result.reasons}; score {m['online_dpo_score_first']:.3f} -> "
          f"{m['online_dpo_score']:.3f}, {m['online_dpo_pairs']} pairs in the last iteration, held-out implicit "
          f"accuracy {m['online_dpo_heldout_accuracy']:.3f}; reward {m['reward_candidate']:.3f} vs base "
          f"{m['reward_serving']:.3f}; KL {m['kl_candidate']:.3f}; online DPO {m['time_online_dpo']:.0f} s of "
          f"{m['round_seconds']:.0f} s")
    assert m["algorithm"] == "online-dpo"
    assert "dpo_score" not in m and "rloo_score" not in m
    assert result.status == "published", result.reasons
    assert result.version == "policy@v1"

    ann, manifest = published_adapter(learner)
    assert manifest["metrics"]["algorithm"] == "online-dpo"
    assert 0.0 < manifest["metrics"]["kl_candidate"] <= learner.settings.kl_budget

    # the adapter writes the preferred word more often than the base model, by a clear margin (z > 3)
    _, _, z = taste_of(learner, ann)
    assert z > 3
