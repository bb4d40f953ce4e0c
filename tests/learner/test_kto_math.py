"""KTO's math and data against values computed by hand (no model, no engine)."""

from __future__ import annotations

import math

import pytest
import torch

from learner.dpo import sequence_logprob
from learner.kto import class_weights, kl_estimate, kto_loss, labelled_answers


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_kl_estimate_is_the_mean_log_ratio_floored_at_zero_and_detached():
    lp = torch.tensor([-2.0, -3.0, -1.0], requires_grad=True)
    ref = torch.tensor([-3.0, -3.5, -1.0])
    z = kl_estimate(lp, ref)  # (1 + 0.5 + 0) / 3
    assert z.item() == pytest.approx(0.5) and not z.requires_grad
    assert kl_estimate(torch.tensor([-4.0, -4.0]), torch.tensor([-3.0, -2.0])).item() == 0.0  # mean -1.5 -> 0


def test_kto_loss_matches_hand_computed_values():
    # padding is ignored in the sequence log-probs the loss reads
    logp = sequence_logprob(torch.tensor([[-1.0, -1.0, -5.0], [-2.0, -2.0, -2.0]]),
                            torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]))          # -2, -6
    ref = torch.tensor([-3.0, -4.0])                                                  # r = 1, -2
    desirable = torch.tensor([True, False])
    z = torch.tensor(0.5)
    loss, margin = kto_loss(logp, ref, desirable, z, beta=0.2, lambda_d=1.0, lambda_u=0.5,
                            weights=torch.tensor([1.0, 3.0]))
    # desirable: β(r - z) = 0.2 · 0.5 = 0.1;  undesirable: β(z - r) = 0.2 · 2.5 = 0.5
    assert margin.tolist() == pytest.approx([0.1, 0.5])
    expected = (1 * 1.0 * (1 - _sigmoid(0.1)) + 3 * 0.5 * (1 - _sigmoid(0.5))) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_kto_gradient_raises_desirable_and_lowers_undesirable():
    logp = torch.tensor([-3.0, -3.0], requires_grad=True)
    loss, _ = kto_loss(logp, torch.tensor([-3.0, -3.0]), torch.tensor([True, False]), torch.tensor(0.0), beta=0.1,
                       lambda_d=1.0, lambda_u=1.0, weights=torch.ones(2))
    loss.backward()
    # d/dr of (1 - σ(β r)) / 2 at r = 0: -β σ'(0) / 2 = -0.1 · 0.25 / 2; the undesirable one the opposite
    assert logp.grad.tolist() == pytest.approx([-0.0125, 0.0125])


@pytest.mark.parametrize("n_d, n_u, expected", [
    (10.0, 10.0, (1.0, 1.0)),           # balanced: ratio 1, in the range
    (12.0, 10.0, (1.0, 1.0)),           # 1.2: in [1, 4/3], left alone
    (40.0, 10.0, (1 / 3, 1.0)),         # 4 ups per down: λ_D = (4/3)/4, ratio becomes 4/3
    (1.0, 7.0, (1.0, 1 / 7)),           # thumbs mostly down: λ_U = 1/7, ratio becomes 1
    (0.0, 5.0, (1.0, 1.0)),             # one class absent: nothing to balance
])
def test_class_weights_bring_unbalanced_data_into_the_range(n_d, n_u, expected):
    weights = torch.tensor([n_d / 2, n_d / 2, n_u])  # weighted counts, not numbers of examples
    desirable = torch.tensor([True, True, False])
    lam_d, lam_u = class_weights(weights, desirable)
    assert (lam_d, lam_u) == pytest.approx(expected)
    if n_d and n_u:
        assert 1 - 1e-9 <= lam_d * n_d / (lam_u * n_u) <= 4 / 3 + 1e-9


def test_labelled_answers_from_thumbs_and_pairwise_choices():
    msgs = [{"role": "user", "content": "q"}]
    examples = [{"type": "thumbs", "messages": msgs, "response": "up", "finish_reason": "stop", "label": 1},
                {"type": "thumbs", "messages": msgs, "response": "down", "finish_reason": "length", "label": 0},
                {"type": "pairwise", "messages": msgs, "chosen": "w", "chosen_finish": "stop", "rejected": "l",
                 "rejected_finish": "stop"}]
    out = labelled_answers(examples, [0.2, 0.3, 0.5])
    assert [(a.response, a.finish_reason, a.desirable, a.weight) for a in out] == [
        ("up", "stop", True, 0.2), ("down", "length", False, 0.3), ("w", "stop", True, 0.5), ("l", "stop", False, 0.5)]
