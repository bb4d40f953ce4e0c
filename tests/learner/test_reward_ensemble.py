"""The reward-model ensemble: K heads on one LoRA'd trunk, each trained on its own bootstrap resample,
scored as mean − λ·std over the members' normalised scores.

By hand: the combined score on known member scores, and a penalty that lowers the reward of an
answer the members disagree on. On the tiny model: members trained on different bootstrap weights
differ (and with equal weights they do not); one member is exactly the single reward model (same
losses, same scores, whatever the penalty); saved versions load back, also an older learner's
single-head version into an ensemble.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from learner.reward import (
    RewardConfig,
    RewardModel,
    RewardTrainer,
    bootstrap_weights,
    bradley_terry_loss,
    penalised_mean,
    thumbs_loss,
)
from learner.round import Learner, LearnerConfig
from learner.tokenization import encode_prompt, encode_response, load_tokenizer
from rlhf.settings import Settings

MSGS = [{"role": "user", "content": "Tell me about cats."}]
ANSWERS = ["Cats are happy.", "Cats are cold and see the sun.", "Cats are old", "I think cats are warm and big."]


def _examples() -> list[dict]:
    """Two pairs and two thumbs (one up, one down), as the store gives them."""
    pair = {"type": "pairwise", "messages": MSGS, "chosen_finish": "stop", "rejected_finish": "stop"}
    return [
        {**pair, "seq": 1, "chosen": ANSWERS[0], "rejected": ANSWERS[1]},
        {**pair, "seq": 2, "chosen": ANSWERS[3], "rejected": ANSWERS[2], "rejected_finish": "length"},
        {"type": "thumbs", "seq": 3, "messages": MSGS, "response": ANSWERS[0], "finish_reason": "stop", "label": 1},
        {"type": "thumbs", "seq": 4, "messages": MSGS, "response": ANSWERS[2], "finish_reason": "length", "label": 0},
    ]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return load_tokenizer(tiny_model_path)


@pytest.fixture(scope="module")
def answer_ids(tokenizer) -> list[tuple[list[int], list[int]]]:
    prompt = encode_prompt(tokenizer, MSGS)
    return [(prompt, encode_response(tokenizer, a, True)) for a in ANSWERS]


# ------------------------------------------------------------------------------------ by hand
def test_combined_score_is_mean_minus_penalty_times_std_by_hand():
    s = torch.tensor([[1.0, 1.0, 2.0],    # mean 4/3, std sqrt(2/9) (divisor K)
                      [0.5, 0.5, 0.5],    # they agree: std 0
                      [3.0, -1.0, 1.0]])  # mean 1, std sqrt(8/3)
    assert penalised_mean(s, 1.0).tolist() == pytest.approx([4 / 3 - math.sqrt(2 / 9), 0.5, 1 - math.sqrt(8 / 3)])
    assert penalised_mean(s, 0.5).tolist() == pytest.approx([4 / 3 - 0.5 * math.sqrt(2 / 9), 0.5,
                                                             1 - 0.5 * math.sqrt(8 / 3)])
    assert penalised_mean(s, 0.0).tolist() == pytest.approx([4 / 3, 0.5, 1.0])
    one = torch.tensor([[0.1234567], [-2.5]])
    assert torch.equal(penalised_mean(one, 10.0), one[:, 0])  # one member: its score, whatever the penalty


def test_bootstrap_weights_are_poisson_one_per_example_and_member():
    g = torch.Generator().manual_seed(0)
    w = bootstrap_weights(20000, 3, g)
    assert w.shape == (20000, 3) and torch.equal(w, w.round()) and w.min() == 0
    assert w.mean(0).tolist() == pytest.approx([1.0] * 3, abs=0.03)
    assert w.var(0).tolist() == pytest.approx([1.0] * 3, abs=0.05)          # Poisson(1): variance 1
    assert (w == 0).float().mean().item() == pytest.approx(math.exp(-1), abs=0.01)  # left out of a resample
    assert bootstrap_weights(5, 1, g) is None                               # one member sees every example once


def test_the_penalty_lowers_the_reward_of_answers_the_members_disagree_on(tiny_model_path, answer_ids, tokenizer):
    # members c + d, c - d, c: the same mean c on every answer, a spread that depends on the answer
    rm = RewardModel.create(tiny_model_path, RewardConfig(ensemble_size=3, uncertainty_penalty=1.0))
    with torch.no_grad():
        w = rm.head.weight[0].clone()
        rm.head.weight.copy_(torch.stack([w, -w, torch.zeros_like(w)]))
        rm.head.bias.fill_(0.5)
    pad = tokenizer.pad_token_id
    members = rm.member_score_ids(answer_ids, pad)                          # (4, 3), normalisation 0 / 1
    d = (members[:, 0] - 0.5).tolist()
    assert members[:, 1].tolist() == pytest.approx([0.5 - x for x in d], abs=1e-5)
    assert members[:, 2].tolist() == pytest.approx([0.5] * 4, abs=1e-6)
    assert max(abs(x) for x in d) > 1e-3                                    # the members disagree
    expected = [0.5 - math.sqrt(2 / 3) * abs(x) for x in d]                 # std of (c+d, c-d, c) = sqrt(2/3)|d|
    assert rm.score_ids(answer_ids, pad) == pytest.approx(expected, abs=1e-5)
    assert rm.score_ids(answer_ids, pad, uncertainty_penalty=0.0) == pytest.approx([0.5] * 4, abs=1e-5)
    # of two answers, the one the members disagree on more gets the lower reward
    scores = rm.score_ids(answer_ids, pad)
    assert all(scores[i] < scores[j] for i in range(4) for j in range(4) if abs(d[i]) > abs(d[j]) + 1e-4)
    # with each member normalised: the penalty applies to the normalised scores
    rm.set_normalisation(torch.tensor([[0.0, 1.0, 2.0], [2.0, 3.0, 3.0]]))  # mean (1, 2, 2.5), std (√2, √2, √.5)
    z = (members - torch.tensor([1.0, 2.0, 2.5])) / torch.tensor([math.sqrt(2), math.sqrt(2), math.sqrt(0.5)])
    by_hand = [sum(r) / 3 - math.sqrt(sum((x - sum(r) / 3) ** 2 for x in r) / 3) for r in z.tolist()]
    assert rm.score_ids(answer_ids, pad) == pytest.approx(by_hand, abs=1e-5)


# ------------------------------------------------------------------------------------ on the tiny model
def test_members_trained_on_different_bootstrap_weights_differ(tiny_model_path, tokenizer, answer_ids):
    batch = _examples()

    def trained(members: torch.Tensor) -> torch.Tensor:
        rm = RewardModel.create(tiny_model_path, RewardConfig(ensemble_size=3))
        with torch.no_grad():  # three identical members: whatever differs afterwards came from their weights
            rm.head.weight.copy_(rm.head.weight[0].expand(3, -1))
        trainer = RewardTrainer(rm, tokenizer, RewardConfig(ensemble_size=3))
        for _ in range(3):
            trainer.step(batch, members=members)
        return rm.member_score_ids(answer_ids, tokenizer.pad_token_id, normalised=False)  # (4, 3)

    def spread(scores: torch.Tensor) -> float:
        return (scores - scores[:, :1]).abs().max().item()

    same = trained(torch.ones(4, 3))
    resampled = trained(torch.tensor([[1.0, 0.0, 2.0], [1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [2.0, 1.0, 1.0]]))
    print(f"\nlargest difference between members: equal weights {spread(same):.2e}, "
          f"bootstrap weights {spread(resampled):.2e}")
    assert spread(same) < 1e-5
    assert spread(resampled) > 1e-3

    # fit draws each member's resample itself
    rm = RewardModel.create(tiny_model_path, RewardConfig(ensemble_size=3))
    trainer = RewardTrainer(rm, tokenizer, RewardConfig(ensemble_size=3))
    stats = trainer.fit(batch * 4, epochs=2, min_steps=2, max_steps=4)
    assert stats["rm_steps"] >= 2 and math.isfinite(stats["rm_loss"])
    held = trainer.member_scores(batch)
    m = trainer.ensemble_metrics(batch, held)
    assert m["rm_ensemble_size"] == 3 and m["rm_disagreement"] > 0
    assert len(json.loads(m["rm_member_pairwise_accuracy"])) == 3 and len(json.loads(m["rm_member_thumbs_auc"])) == 3
    assert trainer.scores(batch, held) == trainer.scores(batch)  # the members' mean, from the scores or not


def test_one_member_is_exactly_the_single_reward_model(tiny_model_path, tokenizer, answer_ids):
    cfg = RewardConfig(ensemble_size=1, uncertainty_penalty=3.0)  # no penalty with one member, whatever λ says
    rm = RewardModel.create(tiny_model_path, cfg)
    assert rm.head.weight.shape[0] == 1
    trainer = RewardTrainer(rm, tokenizer, cfg)
    batch, weights = _examples(), [0.5, 1.5, 1.0, 1.0]
    trainer._class_weights = torch.tensor([0.75, 1.5])
    # the loss of a single reward model, written out: Σ w·BT over pairs + Σ w·class weight·thumbs, over B
    seqs = [trainer.encode(MSGS, a, f) for a, f in [(ANSWERS[0], "stop"), (ANSWERS[1], "stop"),
                                                    (ANSWERS[3], "stop"), (ANSWERS[2], "length"),
                                                    (ANSWERS[0], "stop"), (ANSWERS[2], "length")]]
    r = rm.raw_pairs(seqs, tokenizer.pad_token_id)                                     # (6,)
    expected = (bradley_terry_loss(r[[0, 2]], r[[1, 3]], torch.tensor([0.5, 1.5]))
                + thumbs_loss(r[[4, 5]], torch.tensor([1, 0]), rm.thumbs_bias, torch.tensor([1.5, 0.75]))) / 4
    loss, _ = trainer._batch_loss(batch, weights)
    assert torch.equal(loss, expected)
    # scores: (r - mean) / std, exactly, with or without a penalty
    rm.set_normalisation([0.1, 0.4, -0.3, 0.2])
    raw = rm.raw_pairs(answer_ids, tokenizer.pad_token_id)
    by_hand = ((raw - rm.norm_mean) / rm.norm_std).tolist()
    assert rm.score_ids(answer_ids, tokenizer.pad_token_id) == by_hand
    assert rm.score_ids(answer_ids, tokenizer.pad_token_id, uncertainty_penalty=0.0) == by_hand
    assert rm.score_ids(answer_ids, tokenizer.pad_token_id, normalised=False) == raw.tolist()
    t = torch.tensor([0.1, 0.4, -0.3, 0.2])
    assert rm.norm_mean.item() == t.mean().item() and rm.norm_std.item() == t.std().item()
    m = trainer.ensemble_metrics(batch, trainer.member_scores(batch))
    assert m["rm_ensemble_size"] == 1 and m["rm_disagreement"] == 0.0


def test_save_and_load_also_from_an_older_single_head_version(tiny_model_path, tokenizer, answer_ids, tmp_path):
    pad = tokenizer.pad_token_id
    # an ensemble saved and loaded: the same members, normalisation and penalty
    rm = RewardModel.create(tiny_model_path, RewardConfig(ensemble_size=3, uncertainty_penalty=0.7))
    rm.set_normalisation(torch.tensor([[0.0, 1.0, 2.0], [1.0, 2.0, 4.0]]))
    rm.save(tmp_path / "ens")
    back = RewardModel.load(tiny_model_path, tmp_path / "ens")
    assert back.ensemble_size == 3 and back.uncertainty_penalty == 0.7
    assert torch.equal(back.member_score_ids(answer_ids, pad), rm.member_score_ids(answer_ids, pad))
    # ... and as one member: their mean head scores the ensemble's mean raw reward
    one = RewardModel.load(tiny_model_path, tmp_path / "ens", RewardConfig(ensemble_size=1))
    assert one.ensemble_size == 1
    assert one.raw_pairs(answer_ids, pad).tolist() == pytest.approx(rm.raw_pairs(answer_ids, pad).tolist(), abs=1e-5)

    # an older learner's version: one head, scalar normalisation, no ensemble fields
    single = RewardModel.create(tiny_model_path, RewardConfig(ensemble_size=1))
    single.set_normalisation([0.5, 1.5, 1.0])
    old = tmp_path / "old"
    single.save(old)
    state = load_file(str(old / "head.safetensors"))
    save_file({**state, "norm_mean": state["norm_mean"].reshape(()), "norm_std": state["norm_std"].reshape(())},
              str(old / "head.safetensors"))
    (old / "reward_model.json").write_text(json.dumps({"pooling": "mean"}))
    raw = single.raw_pairs(answer_ids, pad)
    as_saved = RewardModel.load(tiny_model_path, old)
    assert as_saved.ensemble_size == 1 and as_saved.uncertainty_penalty == 0.0
    assert as_saved.score_ids(answer_ids, pad) == single.score_ids(answer_ids, pad)
    # into an ensemble: member 0 is the old head, the new members start near it and differ from it
    grown = RewardModel.load(tiny_model_path, old, RewardConfig(ensemble_size=3, uncertainty_penalty=1.0))
    members = grown.member_score_ids(answer_ids, pad, normalised=False)
    assert grown.ensemble_size == 3 and grown.uncertainty_penalty == 1.0
    assert members[:, 0].tolist() == pytest.approx(raw.tolist(), abs=1e-6)
    assert not torch.equal(members[:, 1], raw) and not torch.equal(members[:, 1], members[:, 2])
    assert grown.norm_mean.tolist() == [single.norm_mean.item()] * 3
    assert {n for n, p in grown.named_parameters() if p.requires_grad} >= {"head.weight", "head.bias"}


def test_the_ensemble_is_configured_like_the_other_reward_options():
    cfg = LearnerConfig.from_dict({"reward": {"ensemble_size": 5, "uncertainty_penalty": 0.5}})
    assert cfg.reward.ensemble_size == 5 and cfg.reward.uncertainty_penalty == 0.5
    assert RewardConfig().ensemble_size == 1 and RewardConfig().uncertainty_penalty == 1.0
    with pytest.raises(ValueError, match="ensemble_size must be at least 1"):
        LearnerConfig.from_dict({"reward": {"ensemble_size": 0}})
    with pytest.raises(ValueError, match="uncertainty_penalty must be at least 0"):
        LearnerConfig.from_dict({"reward": {"uncertainty_penalty": -1}})


def test_the_operators_settings_win_over_the_config_file(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_RM_ENSEMBLE_SIZE", "5")
    monkeypatch.setenv("RLHF_RM_UNCERTAINTY_PENALTY", "0.25")
    settings = Settings(model="tiny", data_dir=tmp_path / "data", adapter_dir=tmp_path / "adapters",
                        kafka_bootstrap="127.0.0.1:9")
    given = LearnerConfig.from_dict({"reward": {"ensemble_size": 2, "batch_size": 8}})
    lrn = Learner(settings, given)
    assert (lrn.cfg.reward.ensemble_size, lrn.cfg.reward.uncertainty_penalty, lrn.cfg.reward.batch_size) == (5, 0.25, 8)
    assert (given.reward.ensemble_size, given.reward.uncertainty_penalty) == (2, 1.0)  # the caller's copy as given
    monkeypatch.delenv("RLHF_RM_ENSEMBLE_SIZE")
    monkeypatch.delenv("RLHF_RM_UNCERTAINTY_PENALTY")
    unset = Learner(Settings(model="tiny", data_dir=tmp_path / "d2", adapter_dir=tmp_path / "a2",
                             kafka_bootstrap="127.0.0.1:9"), LearnerConfig.from_dict({"reward": {"ensemble_size": 2}}))
    assert (unset.cfg.reward.ensemble_size, unset.cfg.reward.uncertainty_penalty) == (2, 1.0)
