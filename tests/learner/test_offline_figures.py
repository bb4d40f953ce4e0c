"""The round's offline figures on inputs checked by hand, and the reference perplexity through a real
policy of the tiny model (the same PEFT model a round holds)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from harness.loras import make_lora
from learner.offline_figures import (
    mean_answer_tokens,
    perplexity,
    reference_ids,
    reference_perplexity,
    win_rate,
)
from learner.policy_config import LoRAConfig
from learner.policy_model import load_policy
from learner.tokenization import load_tokenizer


def test_perplexity_of_a_known_distribution():
    assert perplexity([math.log(1 / 8)] * 5) == pytest.approx(8.0)           # uniform over 8 tokens
    assert perplexity([math.log(1 / 2), math.log(1 / 8)]) == pytest.approx(4.0)  # exp((ln 2 + ln 8) / 2)
    assert perplexity([0.0, 0.0]) == 1.0                                    # certain of every token
    assert math.isnan(perplexity([]))


def test_win_rate_counts_a_tie_as_half():
    figures = win_rate([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 5.0, 1.0])       # win, tie, loss, win
    assert figures["win_rate_vs_parent"] == pytest.approx(2.5 / 4) and figures["win_rate_prompts"] == 4
    assert figures["win_rate_vs_parent_low"] < 0.625 < figures["win_rate_vs_parent_high"]
    ties = win_rate([1.0] * 10, [1.0] * 10)
    assert ties["win_rate_vs_parent"] == 0.5
    assert ties["win_rate_vs_parent_low"] == pytest.approx(1 - ties["win_rate_vs_parent_high"])  # symmetric
    assert math.isnan(win_rate([], [])["win_rate_vs_parent"])


def test_mean_answer_tokens():
    samples = [SimpleNamespace(response_ids=[1, 2, 3]), SimpleNamespace(response_ids=[4])]
    assert mean_answer_tokens(samples) == 2.0 and math.isnan(mean_answer_tokens([]))


def test_reference_perplexity_of_a_policy_and_its_base(tiny_model_path):
    """A fresh LoRA (B = 0) is the base model exactly; moving its B matrices moves only the candidate's figure."""
    tok = load_tokenizer(tiny_model_path)
    rows = reference_ids(tok, 512)
    assert len(rows) == 5 and all(len(r) > 20 for r in rows)
    if tok.bos_token_id is not None:
        assert all(r[0] == tok.bos_token_id for r in rows)
    policy = load_policy(tiny_model_path, LoRAConfig())
    fresh = reference_perplexity(policy, tok, 512)
    assert fresh["reference_tokens"] == sum(len(r) - 1 for r in rows)
    assert 1.0 < fresh["perplexity_base"] < math.inf
    with torch.no_grad():  # the same figure from the model's full logits, without the learner's log-prob path
        nll = [-torch.log_softmax(policy.get_base_model()(input_ids=torch.tensor([r])).logits[0, :-1].float(), -1)
               .gather(1, torch.tensor(r[1:])[:, None]).sum() for r in rows]
    assert fresh["perplexity_base"] == pytest.approx(math.exp(float(sum(nll)) / fresh["reference_tokens"]), rel=1e-4)
    assert fresh["perplexity_candidate"] == pytest.approx(fresh["perplexity_base"], rel=1e-6)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    moved = reference_perplexity(policy, tok, 512)
    assert moved["perplexity_base"] == pytest.approx(fresh["perplexity_base"], rel=1e-6)
    assert moved["perplexity_candidate"] != pytest.approx(fresh["perplexity_base"], rel=1e-3)


def test_reference_perplexity_of_a_round_with_a_starting_adapter(tiny_model_path, tmp_path):
    """With a reference LoRA (the starting adapter), its perplexity is reported too: that of the
    starting adapter as a policy of its own; the candidate's and the base's are unchanged by it."""
    tok = load_tokenizer(tiny_model_path)
    starting = make_lora(tiny_model_path, tmp_path / "policy-v0", seed=3)
    alone = reference_perplexity(load_policy(tiny_model_path, LoRAConfig(), init_adapter=starting), tok, 512)
    assert "perplexity_reference" not in alone           # no reference adapter: the base is the reference
    policy = load_policy(tiny_model_path, LoRAConfig(), init_adapter=starting, reference_adapter=starting)
    figures = reference_perplexity(policy, tok, 512)
    assert figures["perplexity_reference"] == pytest.approx(alone["perplexity_candidate"], rel=1e-5)
    assert figures["perplexity_candidate"] == pytest.approx(alone["perplexity_candidate"], rel=1e-5)
    assert figures["perplexity_base"] == pytest.approx(alone["perplexity_base"], rel=1e-5)
    assert figures["perplexity_reference"] != pytest.approx(figures["perplexity_base"], rel=1e-3)
