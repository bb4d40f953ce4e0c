"""DPO's math and data against values computed by hand (no model, no engine)."""

from __future__ import annotations

import math

import pytest
import torch

from learner.dpo import dpo_loss, preference_pairs, sequence_logprob


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_sequence_logprob_ignores_padding():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 1's last column is padding
    assert sequence_logprob(logp, mask).tolist() == pytest.approx([-3.5, -2.0])


def test_dpo_loss_matches_hand_computed_values():
    logp_w, ref_w = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -5.0])
    logp_l, ref_l = torch.tensor([-6.0, -2.0]), torch.tensor([-5.0, -4.0])
    # h = (-3 + 4) - (-6 + 5) = 2;  (-5 + 5) - (-2 + 4) = -2;  β h = 0.2, -0.2
    loss, margin = dpo_loss(logp_w, logp_l, ref_w, ref_l, beta=0.1, weights=torch.tensor([1.0, 1.0]))
    assert margin.tolist() == pytest.approx([0.2, -0.2])
    expected = (-math.log(_sigmoid(0.2)) - math.log(_sigmoid(-0.2))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # weights: the pair the policy gets wrong counts 3 times as much
    loss_w, _ = dpo_loss(logp_w, logp_l, ref_w, ref_l, beta=0.1, weights=torch.tensor([1.0, 3.0]))
    assert loss_w.item() == pytest.approx((-math.log(_sigmoid(0.2)) - 3 * math.log(_sigmoid(-0.2))) / 4, rel=1e-6)
    # with the policy equal to the reference the loss is log 2 whatever the log-probs
    same, m0 = dpo_loss(ref_w, ref_l, ref_w, ref_l, beta=0.5, weights=torch.ones(2))
    assert same.item() == pytest.approx(math.log(2)) and m0.tolist() == [0.0, 0.0]


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    logp_w, logp_l = torch.tensor([-3.0], requires_grad=True), torch.tensor([-3.0], requires_grad=True)
    loss, _ = dpo_loss(logp_w, logp_l, torch.tensor([-3.0]), torch.tensor([-3.0]), beta=0.1, weights=torch.ones(1))
    loss.backward()
    # d/d logπ(y_w) of -log σ(β h) at h = 0: -β σ(0) = -0.05; the rejected one +0.05
    assert logp_w.grad.item() == pytest.approx(-0.05) and logp_l.grad.item() == pytest.approx(0.05)


def _thumb(q: str, text: str, label: int, finish: str = "stop") -> dict:
    return {"type": "thumbs", "messages": [{"role": "user", "content": q}], "response": text,
            "finish_reason": finish, "label": label}


def test_pairs_from_pairwise_choices_and_thumbs_of_the_same_prompt():
    pairwise = {"type": "pairwise", "messages": [{"role": "user", "content": "q0"}], "chosen": "a",
                "chosen_finish": "stop", "rejected": "b", "rejected_finish": "length"}
    examples = [pairwise,
                _thumb("q1", "up1", 1), _thumb("q1", "down1", 0), _thumb("q1", "down2", 0, "length"),
                _thumb("q2", "up-alone", 1),                       # no down thumb on q2: no pair
                _thumb("q3", "down-alone", 0),                     # nor an up on q3
                _thumb("q2 ", "down-other-prompt", 0)]            # another prompt (text differs): not q2's
    weights = [0.4, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7]
    pairs = preference_pairs(examples, weights)
    assert [(p.chosen, p.rejected) for p in pairs] == [("a", "b"), ("up1", "down1"), ("up1", "down2")]
    assert (pairs[0].chosen_finish, pairs[0].rejected_finish, pairs[0].weight) == ("stop", "length", 0.4)
    assert pairs[2].rejected_finish == "length" and pairs[1].messages == [{"role": "user", "content": "q1"}]
    # ½(w_up / n_down + w_down / n_up): ½(0.1/2 + 0.2/1), ½(0.1/2 + 0.3/1)
    assert [p.weight for p in pairs[1:]] == pytest.approx([0.125, 0.175])
    # no weights: every example counts 1
    assert [p.weight for p in preference_pairs(examples)] == pytest.approx([1.0, 0.75, 0.75])
    assert preference_pairs([_thumb("q", "x", 1), _thumb("q", "y", 1)]) == []
