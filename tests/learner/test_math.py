"""Pure math of the learner against values computed by hand (no model, no engine)."""

from __future__ import annotations

import math

import pytest
import torch

from learner.gate import GateConfig, decide, reward_model_accuracy
from learner.ppo import (AdaptiveKLController, FixedKLController, gae, kl_penalised_rewards, masked_whiten,
                         policy_loss, value_loss)
from learner.reward import auc, bradley_terry_loss, pairwise_accuracy, thumbs_loss
from learner.kl_guard import BACK_OFF, KEEP, STOP, KLGuard, kl_guard_trips, mean_and_standard_error


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------ GAE
def test_gae_single_answer_by_hand():
    # 3 tokens, reward only at the end; γ = 1, λ = 0.5
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.2, 0.4]])
    m = torch.ones(1, 3)
    adv, ret = gae(r, v, m, gamma=1.0, lam=0.5)
    # δ2 = 1 + 0 - 0.4 = 0.6            A2 = 0.6
    # δ1 = 0 + 0.4 - 0.2 = 0.2          A1 = 0.2 + 0.5·0.6 = 0.5
    # δ0 = 0 + 0.2 - 0.5 = -0.3         A0 = -0.3 + 0.5·0.5 = -0.05
    assert adv.tolist()[0] == pytest.approx([-0.05, 0.5, 0.6])
    assert ret.tolist()[0] == pytest.approx([0.45, 0.7, 1.0])


def test_gae_discount_and_padding():
    # row 0: 2 real tokens then padding (whose values/rewards must not leak in); γ = 0.9, λ = 1
    r = torch.tensor([[0.1, 2.0, 5.0], [0.0, 0.0, 1.0]])
    v = torch.tensor([[1.0, 1.0, 9.0], [0.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv, ret = gae(r, v, m, gamma=0.9, lam=1.0)
    # row 0: A1 = 2 - 1 = 1;  A0 = 0.1 + 0.9·1 - 1 + 0.9·1 = 0.9
    assert adv[0].tolist() == pytest.approx([0.9, 1.0, 0.0])
    # row 1, V = 0: A_t = discounted return = 0.81, 0.9, 1
    assert adv[1].tolist() == pytest.approx([0.81, 0.9, 1.0])
    assert ret[0].tolist() == pytest.approx([1.9, 2.0, 0.0])


# ------------------------------------------------------------------------------------ KL penalty
def test_kl_penalty_and_score_at_final_token():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -3.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    scores = torch.tensor([2.0, -1.0])
    rewards, kl = kl_penalised_rewards(logp, ref, mask, scores, kl_coef=0.1)
    # kl = logp - ref: [0.5, -1, 0], [1, 2, (pad)]
    assert kl.flatten().tolist() == pytest.approx([0.5, -1.0, 0.0, 1.0, 2.0, 0.0])
    # r = -0.1·kl, + score at the last real token (index 2 for row 0, index 1 for row 1)
    assert rewards.flatten().tolist() == pytest.approx([-0.05, 0.1, 2.0, -0.1, -0.2 - 1.0, 0.0])


# ------------------------------------------------------------------------------------ losses
def test_policy_loss_clipping_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))   # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, clipfrac, approxkl = policy_loss(new, old, adv, mask, clip_range=0.2)
    # token 0: max(-1·1.5, -1·1.2) = -1.2 (clipped);  token 1: max(0.5, 0.8) = 0.8 (clipped)
    # token 2: max(-2.2, -2.2) = -2.2 (inside the range)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert clipfrac == pytest.approx(2 / 3)
    logs = [math.log(1.5), math.log(0.5), math.log(1.1)]
    assert approxkl == pytest.approx(0.5 * sum(x * x for x in logs) / 3, rel=1e-5)


def test_policy_loss_ignores_padding():
    old = torch.zeros(1, 2)
    new = torch.tensor([[0.0, 5.0]])
    adv = torch.tensor([[1.0, 100.0]])
    loss, clipfrac, _ = policy_loss(new, old, adv, torch.tensor([[1.0, 0.0]]), clip_range=0.2)
    assert loss.item() == pytest.approx(-1.0)
    assert clipfrac == 0.0


def test_value_loss_clipping_by_hand():
    old_v = torch.tensor([[0.0, 0.0]])
    new_v = torch.tensor([[1.0, 0.1]])
    ret = torch.tensor([[2.0, -1.0]])
    loss, vf_clipfrac = value_loss(new_v, old_v, ret, torch.ones(1, 2), clip_range_value=0.2)
    # token 0: unclipped (1-2)² = 1, clipped (0.2-2)² = 3.24 -> 3.24
    # token 1: unclipped (0.1+1)² = 1.21, clipped the same -> 1.21
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.21) / 2)
    assert vf_clipfrac == pytest.approx(0.5)


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, m)
    # mean 2, unbiased std 1 over the three real entries; padding stays 0
    assert w.tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-4)


# ------------------------------------------------------------------------------------ KL controller
def test_adaptive_kl_controller_by_hand():
    c = AdaptiveKLController(0.1, target=2.0, horizon=100)
    # KL 3 vs target 2: error = +0.5 clipped to +0.2; 10 answers: β·(1 + 0.2·10/100) = 0.102
    assert c.update(3.0, 10) == pytest.approx(0.102)
    # KL 1.8: error = -0.1; 50 answers: 0.102·(1 - 0.05) = 0.0969
    assert c.update(1.8, 50) == pytest.approx(0.0969)
    # on target: unchanged
    assert c.update(2.0, 1000) == pytest.approx(0.0969)
    assert FixedKLController(0.3).update(100.0, 1000) == 0.3


# ------------------------------------------------------------------------------------ reward losses
def test_bradley_terry_loss_by_hand():
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.5])
    expected = -(math.log(sig(1.0)) + math.log(sig(-0.5)))
    assert bradley_terry_loss(rc, rr).item() == pytest.approx(expected, rel=1e-6)
    assert pairwise_accuracy(rc, rr) == 0.5
    assert pairwise_accuracy(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5  # a tie counts half


def test_thumbs_loss_by_hand():
    r = torch.tensor([1.0, -0.5])
    y = torch.tensor([1, 0])
    b = torch.tensor(0.5)
    # up: -log σ(1 - 0.5);  down: -log(1 - σ(-0.5 - 0.5))
    expected = -math.log(sig(0.5)) - math.log(1 - sig(-1.0))
    assert thumbs_loss(r, y, b).item() == pytest.approx(expected, rel=1e-6)


def test_thumbs_loss_gradient_moves_the_threshold():
    b = torch.zeros((), requires_grad=True)
    thumbs_loss(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0, 0, 1]), b).backward()
    # d/db Σ BCE(r - b, y) = Σ (y - σ(r - b)) = (0 - .5) + (0 - .5) + (1 - .5) = -0.5
    assert b.grad.item() == pytest.approx(-0.5)


def test_auc_by_hand():
    # ups 0.9, 0.4; downs 0.5, 0.1, 0.4 -> wins: 0.9 beats all 3; 0.4 beats 0.1, ties 0.4 -> 1.5
    assert auc([0.9, 0.4, 0.5, 0.1, 0.4], [1, 1, 0, 0, 0]) == pytest.approx(4.5 / 6)
    assert math.isnan(auc([0.3], [1]))


# ------------------------------------------------------------------------------------ gate
def test_gate_decisions():
    g = GateConfig(min_prompts=3, z=1.0)
    ok = decide([1.0, 1.2, 0.9, 1.1], [0.0, 0.1, -0.1, 0.0], [1.0, 2.0], 0.8, kl_budget=5.0,
                rm_accuracy_floor=0.6, cfg=g)
    assert ok.publish and ok.reasons == []
    assert ok.metrics["reward_gain"] == pytest.approx(1.05)
    assert ok.metrics["kl_candidate"] == 1.5 and ok.metrics["kl_candidate_se"] == pytest.approx(0.5)
    bad = decide([0.0, 0.1, 0.0], [0.0, 0.0, 0.1], [6.0], 0.5, kl_budget=5.0, rm_accuracy_floor=0.6, cfg=g)
    assert not bad.publish and len(bad.reasons) == 3
    few = decide([1.0], [0.0], [0.1], 0.9, kl_budget=5.0, rm_accuracy_floor=0.6, cfg=g)
    assert not few.publish and "held-out prompts" in few.reasons[0]


def test_the_gate_checks_the_language_only_when_given_the_perplexities():
    """A candidate whose reference is its round's supervised policy: perplexity on the reference text at
    most `max_perplexity_rise` over the base's, else rejected with both figures in the reason."""
    g = GateConfig(min_prompts=3, z=1.0, max_perplexity_rise=0.10)
    args = ([1.0, 1.2, 0.9, 1.1], [0.0, 0.1, -0.1, 0.0], [1.0, 2.0], 0.8)
    kw = dict(kl_budget=5.0, rm_accuracy_floor=0.6, cfg=g)
    assert "perplexity_rise" not in decide(*args, **kw).metrics
    within = decide(*args, **kw, perplexity=(32.7, 30.0))
    assert within.publish and within.metrics["perplexity_rise"] == pytest.approx(0.09)
    over = decide(*args, **kw, perplexity=(35.4, 30.0))
    assert not over.publish and over.metrics["perplexity_rise"] == pytest.approx(0.18)
    assert over.reasons == ["perplexity on the reference text 35.40 is +18.0% over the base model's 30.00 "
                            "(at most +10%)"]
    assert not decide(*args, **kw, perplexity=(math.nan, 30.0)).publish  # unmeasured is not within


def test_reward_model_accuracy_takes_the_lower_measure():
    g = GateConfig(min_heldout_pairs=2, min_heldout_thumbs=2)
    m = {"rm_heldout_pairs": 10, "rm_pairwise_accuracy": 0.9, "rm_heldout_thumbs": 6, "rm_heldout_ups": 3,
         "rm_thumbs_auc": 0.7}
    assert reward_model_accuracy(m, g) == 0.7
    assert reward_model_accuracy({**m, "rm_heldout_ups": 1}, g) == 0.9  # too few ups: AUC does not count
    assert reward_model_accuracy({"rm_heldout_pairs": 1, "rm_pairwise_accuracy": 1.0}, g) is None


def test_balanced_thumbs_weights_by_hand():
    # 1 up, 3 downs: w_up = 4 / (2·1) = 2, w_down = 4 / (2·3) = 2/3; every r - b = 0 -> each term log 2
    r, y, b = torch.zeros(4), torch.tensor([1, 0, 0, 0]), torch.tensor(0.0)
    w = torch.tensor([2.0, 2 / 3, 2 / 3, 2 / 3])
    assert thumbs_loss(r, y, b, w).item() == pytest.approx((2.0 + 3 * 2 / 3) * math.log(2), rel=1e-6)


def test_kl_guard():
    limit = 0.8 * 5.0
    assert not kl_guard_trips([], 9.0, limit)                # first iteration: no update to undo
    assert not kl_guard_trips([1.0, 2.5], 3.9, limit)        # under the limit
    assert kl_guard_trips([1.0, 2.5], 4.1, limit)            # crossed it with the last update
    assert not kl_guard_trips([5.0, 4.6], 4.3, limit)        # over, but falling: let PPO pull it back
    assert kl_guard_trips([5.0, 4.3], 4.4, limit)            # over and growing again
    assert not kl_guard_trips([1.0, 2.5], 9.0, 0.0)          # disabled
    assert kl_guard_trips([], 9.0, limit, first_counts=True)  # sampled after the first update: undo it
    assert not kl_guard_trips([], 3.0, limit, first_counts=True)
    assert kl_guard_trips([1.0, 2.5], 3.5, limit, standard_error=0.6)      # could be over by one standard error
    assert not kl_guard_trips([1.0, 2.5], 3.5, limit, standard_error=0.4)
    assert not kl_guard_trips([5.0, 4.6], 4.3, limit, standard_error=2.0)  # falling: left alone whatever the error


def test_kl_guard_backs_off_twice_then_stops():
    guard = KLGuard(limit=4.0, backoffs=2)
    assert [guard.verdict(kl) for kl in (0.0, 7.1)] == [KEEP, BACK_OFF]  # an update jumped: undo, halve
    assert [guard.verdict(kl) for kl in (2.0, 3.5, 3.2)] == [KEEP, KEEP, KEEP]  # smaller steps stay inside
    assert [guard.verdict(kl) for kl in (4.4, 5.0)] == [BACK_OFF, STOP]  # the third undone update ends it
    assert guard.kls == [0.0, 2.0, 3.5, 3.2] and guard.backed_off == 2


def test_kl_guard_undoes_an_update_whose_small_sample_could_be_over_the_limit():
    kls = [0.5, 1.0, 2.0, 9.5]  # heavy-tailed per-answer KLs: mean 3.25, sample std 4.21
    kl, error = mean_and_standard_error(kls)
    assert (kl, error) == (pytest.approx(3.25), pytest.approx(math.sqrt(53.25 / 3) / 2))
    assert mean_and_standard_error([2.0]) == (2.0, 0.0) and mean_and_standard_error([]) == (0.0, 0.0)
    assert KLGuard(limit=4.0, backoffs=2, kls=[1.0]).verdict(kl) == KEEP
    assert KLGuard(limit=4.0, backoffs=2, kls=[1.0]).verdict(kl, error) == BACK_OFF


def test_kl_guard_without_back_offs_stops_at_the_first_crossing():
    guard = KLGuard(limit=4.0, backoffs=0, sampled_after_update=True)
    assert guard.verdict(9.0) == STOP  # measured after the first update: that update is undone
    off = KLGuard(limit=0.0, backoffs=2)
    assert not off.on and [off.verdict(kl) for kl in (0.0, 50.0, 90.0)] == [KEEP] * 3
    assert off.keep(1.0) == KEEP and off.kls[-1] == 1.0
