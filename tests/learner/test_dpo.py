"""DPO on the tiny model: one step trains the policy LoRA from logged pairs (no rollouts), and a round
with RLHF_LEARNER_ALGORITHM=dpo learns a hidden preference from synthetic feedback and publishes it.

The simulated user prefers answers containing "happy" (the tiny model writes it in ~13 % of its
answers), as in test_rloo.py, whose round this mirrors.
"""

from __future__ import annotations

import math

import pytest
import torch

from learner.dpo import DPOConfig, DPOTrainer
from learner.round import Learner, LearnerConfig, RewardFit
from learner.weighting import CappedWeights
from tests.learner.rounds import (make_learner, published_adapter, round_on_synthetic_feedback, taste_of,
                                  thumb_example)

DPO_FAST = {"steps": 10, "examples_per_step": 64, "minibatch_size": 8}


@pytest.fixture(scope="module")
def learner(tiny_model_path, tmp_path_factory):
    # KL budget: the round's KL after 10 iterations varied with the generated tiny model, 0.84 nats on
    # one machine and 7.0-7.9 on another; the test is about learning the taste, within a budget (the
    # KL guard undoes updates that cross 80 % of it)
    lrn = make_learner(tmp_path_factory, "dpo", DPO_FAST, kl_budget=12.0)
    yield lrn
    lrn.close()


def _pairwise(q: str, chosen: str, rejected: str) -> dict:
    return {"type": "pairwise", "messages": [{"role": "user", "content": q}], "chosen": chosen,
            "chosen_finish": "stop", "rejected": rejected, "rejected_finish": "length", "user": "u", "client": "c"}


# ------------------------------------------------------------------------------------ selection
def test_learner_config_reads_dpo_options():
    cfg = LearnerConfig.from_dict({"dpo": {"beta": 0.3, "target_modules": ["q_proj", "v_proj"]}})
    assert cfg.dpo.beta == 0.3 and cfg.dpo.target_modules == ("q_proj", "v_proj")
    with pytest.raises(ValueError, match="unknown dpo options"):
        LearnerConfig.from_dict({"dpo": {"num_samples": 2}})  # DPO samples nothing


# ------------------------------------------------------------------------------------ one step
def test_one_dpo_step_moves_every_lora_tensor_and_nothing_frozen(learner):
    examples = [_pairwise(f"question {i}", f"a happy answer {i}", f"a sad answer {i}") for i in range(6)]
    examples.append({"type": "thumbs", "messages": [{"role": "user", "content": "q"}], "response": "happy",
                     "finish_reason": "stop", "label": 1, "user": "u", "client": "c"})
    cfg = DPOConfig(examples_per_step=6, minibatch_size=3)  # 2 optimiser steps
    dpo = DPOTrainer(learner.model_path, learner.tokenizer, cfg, examples)
    assert len(dpo.weights) == 6  # the lone thumb makes no pair
    before = {n: (p.requires_grad, p.detach().clone()) for n, p in dpo.policy.named_parameters()}
    kept = dpo.policy_state()

    # a fresh LoRA is the reference exactly: no pair has a margin > 0 yet
    assert dpo.heldout_accuracy(examples) == 0.0
    s1 = dpo.step()
    assert s1["pairs"] == 6 and s1["time_rollout"] == 0.0 and s1["clipfrac"] == 0.0 and s1["time_score"] > 0
    assert all(math.isfinite(float(v)) for v in s1.values())
    assert s1["eos_fraction"] == pytest.approx(0.5)  # chosen answers stopped, rejected ones were cut off

    moved = {n for n, p in dpo.policy.named_parameters() if not torch.equal(before[n][1], p.detach())}
    trainable = {n for n, (rg, _) in before.items() if rg}
    assert moved == trainable and all("lora_" in n for n in moved)

    for _ in range(5):
        s = dpo.step()
    assert s["time_score"] == 0.0  # the reference pass ran once, before the first step
    assert s["score"] > s1["score"] and s["policy_loss"] < s1["policy_loss"]  # the margin grows on its data
    assert dpo.heldout_accuracy(examples) == 1.0
    assert math.isnan(dpo.heldout_accuracy(examples[-1:]))  # no pair to measure

    dpo.restore_policy(kept)  # the KL guard's undo works on DPO's policy too
    assert all(torch.equal(before[n][1], p.detach()) for n, p in dpo.policy.named_parameters())
    assert dpo.heldout_accuracy(examples) == 0.0  # policy = reference: no margin > 0


def test_the_kl_guard_samples_dpo_s_policy_after_an_update(learner, tmp_path):
    examples = [_pairwise(f"question {i}", f"a happy answer {i}", f"a sad answer {i}") for i in range(6)]
    dpo = DPOTrainer(learner.model_path, learner.tokenizer, DPOConfig(examples_per_step=6, minibatch_size=3,
                                                                      kl_prompts=8), examples, workdir=tmp_path)
    prompts = [learner.tokenizer.encode(f"question {i}") for i in range(4)]
    assert not dpo.samples_before_update  # the round measures DPO's KL itself
    kl, error = dpo.sampled_kl(learner.engine, prompts)
    assert (kl, error) == (pytest.approx(0.0, abs=1e-4), pytest.approx(0.0, abs=1e-4))  # a fresh LoRA is the reference
    for _ in range(3):
        dpo.step()
    kl, error = dpo.sampled_kl(learner.engine, prompts)
    assert kl != 0.0 and error > 0.0  # sampled from the policy as the updates left it, 4 answers of different KL

    dpo.scale_learning_rate(0.5)  # the guard's back-off
    assert [g["lr"] for g in dpo.optimizer.param_groups] == [pytest.approx(0.5 * DPOConfig().learning_rate)]


def test_dpo_refuses_feedback_without_pairs(learner):
    thumbs = [{"type": "thumbs", "messages": [{"role": "user", "content": "q"}], "response": "x",
               "finish_reason": "stop", "label": 1}]
    with pytest.raises(ValueError, match="no preference pairs"):
        DPOTrainer(learner.model_path, learner.tokenizer, DPOConfig(), thumbs)


def test_a_round_without_pairs_falls_back_to_kto_or_has_nothing_to_learn(learner):
    """DPO needs pairs; thumbs alone go to KTO (tests/learner/test_kto.py runs such a round end to end)."""
    up, down = thumb_example("q", "x", 1), thumb_example("q2", "y", 0)      # two prompts: no up and down on one
    assert learner.algorithm == "dpo"
    assert learner.round_algorithm([_pairwise("q", "a", "b"), up]) == "dpo"
    assert learner.round_algorithm([up, thumb_example("q", "z", 0)]) == "dpo"   # an up and a down of one prompt pair
    assert learner.round_algorithm([up, down]) == "kto"
    assert learner.round_algorithm([]) is None


def test_after_the_supervised_steps_dpo_and_kto_learn_from_the_other_feedback():
    """The corrections leave DPO's and KTO's feedback when there is other feedback (the supervised
    steps learned them), each remaining example with its own weight; corrections alone stay."""
    correction = {**_pairwise("q", "a corrected answer", "the answer"), "demonstration": True}
    up, pair = thumb_example("q2", "x", 1), _pairwise("q3", "a", "b")
    mixed = RewardFit([correction, up, correction, pair], CappedWeights([0.1, 0.2, 0.3, 0.4]), {}, 0.5, {})
    assert Learner.policy_feedback(mixed) == ([up, pair], [0.2, 0.4])
    alone = RewardFit([correction, correction], CappedWeights([0.5, 0.5]), {}, 0.5, {})
    assert Learner.policy_feedback(alone) == ([correction, correction], [0.5, 0.5])
    plain = RewardFit([up, pair], CappedWeights([0.5, 0.5]), {}, 0.5, {})
    assert Learner.policy_feedback(plain) == ([up, pair], [0.5, 0.5])


# ------------------------------------------------------------------------------------ a round
@pytest.mark.timeout(1800)  # shared 2-core machine
def test_dpo_round_learns_a_hidden_preference_and_publishes(learner):
    # the user's feedback on 700 prompts (~400 events), then one round: reward model (for the gate), DPO, gate,
    # publish
    result, stats = round_on_synthetic_feedback(learner, thumbs_share=0.2)
    m = result.metrics
    print(f"\nfeedback {stats}; round: {result.status} {result.reasons}; DPO margin {m['dpo_score_first']:.3f} -> "
          f"{m['dpo_score']:.3f}, held-out implicit accuracy {m['dpo_heldout_accuracy']:.3f}; reward "
          f"{m['reward_candidate']:.3f} vs base {m['reward_serving']:.3f}; KL {m['kl_candidate']:.3f}; "
          f"DPO {m['time_dpo']:.0f} s of {m['round_seconds']:.0f} s")
    assert m["algorithm"] == "dpo"
    assert "ppo_score" not in m and "rloo_score" not in m
    assert m["dpo_heldout_accuracy"] > 0.5
    assert result.status == "published", result.reasons
    assert result.version == "policy@v1"

    ann, manifest = published_adapter(learner)
    assert manifest["metrics"]["algorithm"] == "dpo"
    assert manifest["metrics"]["dpo_heldout_accuracy"] == m["dpo_heldout_accuracy"]
    assert 0.0 < manifest["metrics"]["kl_candidate"] <= learner.settings.kl_budget
    figures = manifest["metrics"]  # the offline figures a reader compares versions by
    assert figures["perplexity_candidate"] > 1.0 and figures["perplexity_base"] > 1.0
    assert figures["perplexity_candidate"] != figures["perplexity_base"]  # measured with the LoRA on and off
    assert 0.0 <= figures["win_rate_vs_parent"] <= 1.0 and figures["answer_tokens_candidate"] > 0

    # the adapter writes the preferred word more often than the base model, by a clear margin (z > 3)
    _, _, z = taste_of(learner, ann)
    assert z > 3
