"""RLOO's math against values computed by hand (no model, no engine)."""

from __future__ import annotations

import pytest
import torch

from learner.rloo import leave_one_out_advantages, sequence_rewards


def test_sequence_reward_sums_the_kl_over_real_tokens_only():
    scores = torch.tensor([2.0, -1.0])
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -3.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 1's last column is padding (Δ = 7 there)
    rewards, kl = sequence_rewards(scores, logp, ref, mask, beta=0.1)
    # KL: 0.5 - 1 + 0 = -0.5;  1 + 2 = 3 (not 10)
    assert kl.tolist() == pytest.approx([-0.5, 3.0])
    # R = score - β·KL: 2 + 0.05;  -1 - 0.3
    assert rewards.tolist() == pytest.approx([2.05, -1.3])


def test_leave_one_out_two_answers_per_prompt():
    # prompt A: R = 1, 3;  prompt B: R = -2, 0.5. With k = 2 the baseline is the other answer.
    adv = leave_one_out_advantages(torch.tensor([1.0, 3.0, -2.0, 0.5]), k=2)
    assert adv.tolist() == pytest.approx([1 - 3, 3 - 1, -2 - 0.5, 0.5 + 2])


def test_leave_one_out_three_answers_per_prompt():
    # prompt A: R = 1, 2, 6 -> baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
    # prompt B: R = 0, 0, 3 -> baselines 1.5, 1.5, 0
    adv = leave_one_out_advantages(torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]), k=3)
    assert adv.tolist() == pytest.approx([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
    # the same as k/(k-1)·(R_i - mean of the prompt's answers): the advantages of each prompt sum to 0
    assert adv.view(2, 3).sum(1).tolist() == pytest.approx([0.0, 0.0])


def test_leave_one_out_does_not_mix_prompts():
    # the same rewards in another grouping give other advantages: the baseline never crosses prompts
    r = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    assert leave_one_out_advantages(r, k=2).tolist() == pytest.approx([-1.0, 1.0, 6.0, -6.0, -3.0, 3.0])


def test_leave_one_out_needs_two_answers():
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_advantages(torch.tensor([1.0, 2.0]), k=1)
