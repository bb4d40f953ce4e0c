"""The policy's reference (learner/policy_model.py): with a starting adapter, that LoRA, frozen, on the
same base; without one, the base with the adapter off. Which versions get the starting adapter as
their reference (learner/starting_adapter.py `reference_ancestor`)."""

from __future__ import annotations

import pytest
import torch

from adapters.routing_state import KnownAdapter, RoutingState
from harness.loras import make_lora
from learner.policy_config import PolicyConfig
from learner.policy_model import (REFERENCE, answer_logprobs, as_reference, kl_to_reference, load_policy,
                                  logprobs_with_reference)
from learner.policy_trainer import PolicyTrainer
from learner.starting_adapter import STARTING_VERSION, reference_ancestor
from learner.tokenization import encode_prompt, load_tokenizer, pad_prompt_response, position_ids

CFG = PolicyConfig()
QUESTIONS = ["Tell me about cats.", "What is the capital of France?", "Say something nice."]


@pytest.fixture(scope="module")
def batch(tiny_model_path):
    tok = load_tokenizer(tiny_model_path)
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    answers = [tok(a, add_special_tokens=False)["input_ids"] for a in ("Cats are happy.", "Paris.", "You are kind!")]
    ids, mask, _, rmask, P = pad_prompt_response(prompts, answers, tok.pad_token_id)
    return ids, mask, P, rmask


def both(policy, batch):
    ids, mask, P, rmask = batch
    return logprobs_with_reference(policy, ids, mask, P, rmask, chunk=2, temperature=1.0)


@pytest.fixture(scope="module")
def starting(tiny_model_path, tmp_path_factory):
    return make_lora(tiny_model_path, tmp_path_factory.mktemp("start") / "policy-v0", seed=3)


def test_the_reference_is_the_starting_adapter_frozen_and_the_policy_starts_at_it(tiny_model_path, starting, batch):
    policy = load_policy(tiny_model_path, CFG, init_adapter=starting, reference_adapter=starting)
    lp, ref = both(policy, batch)
    assert torch.equal(lp, ref)  # a round that starts from the starting adapter starts at KL 0

    without = load_policy(tiny_model_path, CFG, init_adapter=starting)  # the reference is then the base
    lp_alone, base = both(without, batch)
    assert torch.allclose(lp_alone, lp, atol=1e-6)
    assert (base - ref).abs().max() > 1e-3  # the starting adapter's random, non-zero LoRA moves every log-prob

    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)  # still so after the reference passes
    assert any(f".{REFERENCE}." in n for n, _ in policy.named_parameters())


def test_a_step_moves_the_policy_not_the_reference_and_only_the_policy_is_saved(tiny_model_path, starting, batch,
                                                                                 tmp_path):
    policy = load_policy(tiny_model_path, CFG, init_adapter=starting, reference_adapter=starting)
    _, ref_before = both(policy, batch)
    ids, mask, P, rmask = batch
    trainer = PolicyTrainer()
    trainer.cfg, trainer.policy = CFG, policy
    trainer.init_optimizer(policy)
    trainer.optimise(-(answer_logprobs(policy, ids, mask, P, 1.0) * rmask).sum())
    lp, ref = both(policy, batch)
    assert torch.equal(ref, ref_before)
    assert ((lp - ref) * rmask).sum() > 0  # the step raised these answers' log-probs above the reference's

    folder = trainer.save_policy(tmp_path / "candidate")
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == []  # no reference subfolder
    alone = load_policy(tiny_model_path, CFG, init_adapter=folder)
    assert torch.allclose(both(alone, batch)[0], lp, atol=1e-5)


def test_kl_to_reference_sums_the_full_vocabulary_kl_at_each_answer_token(tiny_model_path, starting, batch):
    ids, mask, P, rmask = batch
    policy = load_policy(tiny_model_path, CFG, init_adapter=starting).eval()  # the reference is the base
    with torch.no_grad():
        logp = torch.log_softmax(policy(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits,
                                 dim=-1)
        with as_reference(policy):
            logq = torch.log_softmax(policy(input_ids=ids, attention_mask=mask,
                                            position_ids=position_ids(mask)).logits, dim=-1)
    per_position = (logp.exp() * (logp - logq)).sum(-1)[:, P - 1: -1]  # the positions predicting answer tokens
    by_hand = (per_position * rmask).sum(1)
    assert by_hand.min() > 0  # the starting adapter moves every answer's distributions
    assert torch.allclose(kl_to_reference(policy, ids, mask, P, rmask, chunk=2, temperature=1.0), by_hand,
                          rtol=1e-4, atol=1e-5)
    same = load_policy(tiny_model_path, CFG, init_adapter=starting, reference_adapter=starting)
    assert kl_to_reference(same, ids, mask, P, rmask, chunk=2, temperature=1.0).abs().max() < 1e-5


def known(version: str, parent: str | None) -> KnownAdapter:
    return KnownAdapter(version, f"policy/{version.split('@')[1]}", "0" * 64, parent)


def test_without_corrections_the_reference_is_the_starting_ancestor_or_the_base():
    state = RoutingState()
    for v, parent in [(STARTING_VERSION, None), ("policy@v1", STARTING_VERSION), ("policy@v2", "policy@v1"),
                      ("policy@v3", None), ("policy@v4", "policy@v3"), ("policy@v5", "policy@v9")]:
        state.known[v] = known(v, parent)
    assert reference_ancestor(state, STARTING_VERSION, set()).version == STARTING_VERSION
    assert reference_ancestor(state, "policy@v2", set()).version == STARTING_VERSION
    assert reference_ancestor(state, "policy@v4", set()) is None   # a fresh LoRA trained after a rollback to the base
    assert reference_ancestor(state, "policy@v5", set()) is None   # its parent is not known
    assert reference_ancestor(state, None, set()) is None           # the base model
    state.known["policy@v6"], state.known["policy@v7"] = known("policy@v6", "policy@v7"), known("policy@v7", "policy@v6")
    assert reference_ancestor(state, "policy@v6", set()) is None   # a cycle ends the walk


def test_the_reference_is_the_nearest_ancestor_that_learned_corrections_or_the_starting_adapter():
    state = RoutingState()
    for v, parent in [(STARTING_VERSION, None), ("policy@v1", STARTING_VERSION), ("policy@v2", "policy@v1"),
                      ("policy@v3", "policy@v2"), ("policy@v4", None), ("policy@v5", "policy@v4")]:
        state.known[v] = known(v, parent)
    corrected = {"policy@v2", "policy@v4"}
    assert reference_ancestor(state, "policy@v3", corrected).version == "policy@v2"
    assert reference_ancestor(state, "policy@v2", corrected).version == "policy@v2"   # itself
    assert reference_ancestor(state, "policy@v1", corrected).version == STARTING_VERSION
    assert reference_ancestor(state, "policy@v5", corrected).version == "policy@v4"   # a lineage from the base
    assert reference_ancestor(state, "policy@v5", set()) is None
    assert reference_ancestor(state, None, corrected) is None
