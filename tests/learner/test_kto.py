"""KTO on the tiny model: one step trains the policy LoRA from labelled answers (no rollouts), and a round
with RLHF_LEARNER_ALGORITHM=kto, or =dpo on feedback that forms no pair, learns a hidden preference from
thumbs alone and publishes it.

The simulated user prefers answers containing "happy" (test_dpo.py, test_rloo.py); here every piece
of feedback is a thumb, most of them down (the tiny model seldom writes the word).
"""

from __future__ import annotations

import math

import pytest
import torch

from learner.dpo import DPOConfig, logprob_sums_with_reference
from learner.kto import KTOConfig, KTOTrainer
from learner.round import LearnerConfig
from tests.learner.rounds import (make_learner, published_adapter, round_on_synthetic_feedback, taste_of,
                                  thumb_example)

KTO_FAST = {"steps": 20, "examples_per_step": 64, "minibatch_size": 8}


@pytest.fixture(scope="module")
def learner(tiny_model_path, tmp_path_factory):
    # KL budget: KTO has no KL guard (its training stat is not a sampled KL), so the round's KL is
    # whatever its 20 iterations reach, and that varies with the generated tiny model: 0.78 nats on
    # one machine, 9.9 on another; the test is about learning the taste, within a budget
    lrn = make_learner(tmp_path_factory, "kto", KTO_FAST, kl_budget=15.0)
    yield lrn
    lrn.close()


@pytest.fixture(scope="module")
def dpo_learner(tiny_model_path, tmp_path_factory):
    """Configured for DPO, with the same KTO settings for the rounds that have no pair."""
    lrn = make_learner(tmp_path_factory, "dpo", kl_budget=15.0, round_options={"kto": KTO_FAST})
    yield lrn
    lrn.close()


def test_learner_config_reads_kto_options():
    cfg = LearnerConfig.from_dict({"kto": {"beta": 0.2, "minibatch_size": 4}})
    assert cfg.kto.beta == 0.2 and cfg.kto.minibatch_size == 4 and cfg.dpo.beta == DPOConfig.beta
    with pytest.raises(ValueError, match="unknown kto options"):
        LearnerConfig.from_dict({"kto": {"num_samples": 2}})


def test_one_kto_step_moves_every_lora_tensor_and_nothing_frozen(learner):
    # 2 ups, 6 downs: λ_U lowered so the weighted ratio is 1
    examples = ([thumb_example(f"question {i}", f"a happy answer {i}", 1) for i in range(2)]
                + [thumb_example(f"question {i}", f"a sad answer {i}", 0) for i in range(6)])
    kto = KTOTrainer(learner.model_path, learner.tokenizer, KTOConfig(examples_per_step=8, minibatch_size=4),
                     examples)
    assert (kto.lambda_d, kto.lambda_u) == pytest.approx((1.0, 2 / 6))
    before = {n: (p.requires_grad, p.detach().clone()) for n, p in kto.policy.named_parameters()}
    kept = kto.policy_state()

    s1 = kto.step()
    assert s1["answers"] == 8 and s1["time_rollout"] == 0.0 and s1["time_score"] > 0 and s1["kl"] >= 0.0
    assert all(math.isfinite(float(v)) for v in s1.values())
    moved = {n for n, p in kto.policy.named_parameters() if not torch.equal(before[n][1], p.detach())}
    trainable = {n for n, (rg, _) in before.items() if rg}
    assert moved == trainable and all("lora_" in n for n in moved)

    for _ in range(5):
        s = kto.step()
    assert s["time_score"] == 0.0 and s["policy_loss"] < s1["policy_loss"]
    # the ups' log-probs rose against the reference, the downs' fell
    lp, ref = logprob_sums_with_reference(kto.policy, kto.prompts, kto.answers, kto.pad_id, 8, 1.0)
    r = lp - ref
    assert r[kto.desirable].mean() > r[~kto.desirable].mean()

    kto.restore_policy(kept)
    assert all(torch.equal(before[n][1], p.detach()) for n, p in kto.policy.named_parameters())


@pytest.mark.timeout(1800)  # shared 2-core machine
@pytest.mark.parametrize("configured", ["kto", "dpo"])
def test_kto_round_from_thumbs_alone_learns_a_hidden_preference_and_publishes(configured, request):
    """Chosen, or as DPO's fallback when the round's feedback forms no pair (no question got both an up
    and a down thumb)."""
    learner = request.getfixturevalue("learner" if configured == "kto" else "dpo_learner")
    result, stats = round_on_synthetic_feedback(learner, thumbs_share=1.0,
                                                one_label_per_question=configured == "dpo")
    assert stats["pairwise"] == 0 and stats["thumbs"] > 250
    m = result.metrics
    print(f"\nfeedback {stats}; round: {result.status} {result.reasons}; KTO λ_D {m['kto_lambda_desirable']:.3f} "
          f"λ_U {m['kto_lambda_undesirable']:.3f}, score {m['kto_score_first']:.3f} -> {m['kto_score']:.3f}; reward "
          f"{m['reward_candidate']:.3f} vs base {m['reward_serving']:.3f}; KL {m['kl_candidate']:.3f}; "
          f"KTO {m['time_kto']:.0f} s of {m['round_seconds']:.0f} s")
    assert m["algorithm"] == "kto"
    assert m.get("algorithm_configured", "kto") == configured
    assert m["kto_lambda_desirable"] == 1.0 and m["kto_lambda_undesirable"] < 1.0  # downs outnumber ups
    assert result.status == "published", result.reasons

    ann, manifest = published_adapter(learner)
    assert manifest["metrics"]["algorithm"] == "kto"

    _, _, z = taste_of(learner, ann)
    assert z > 3
