"""On the tiny model: one reward-model step and one PPO update change the trainable parameters and
nothing frozen; the reference (adapter switched off) stays the base model."""

from __future__ import annotations

import pytest
import torch

from learner.ppo import PPOConfig, PPOTrainer
from learner.reward import RewardConfig, RewardModel, RewardTrainer
from learner.rollout import Sample
from learner.tokenization import encode_prompt, encode_response, load_tokenizer

MSGS = [{"role": "user", "content": "Tell me about cats."}]


def snapshot(module: torch.nn.Module) -> dict[str, tuple[bool, torch.Tensor]]:
    return {n: (p.requires_grad, p.detach().clone()) for n, p in module.named_parameters()}


def changed(module: torch.nn.Module, before: dict) -> tuple[set[str], set[str]]:
    """(trainable names that changed, frozen names that changed)."""
    moved = {n for n, p in module.named_parameters() if not torch.equal(before[n][1], p.detach())}
    trainable = {n for n, (rg, _) in before.items() if rg}
    return moved & trainable, moved - trainable


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return load_tokenizer(tiny_model_path)


def test_one_reward_model_step(tiny_model_path, tokenizer):
    rm = RewardModel.create(tiny_model_path, RewardConfig())
    trainer = RewardTrainer(rm, tokenizer, RewardConfig())
    batch = [
        {"type": "pairwise", "seq": 1, "messages": MSGS, "chosen": "Cats are happy.", "chosen_finish": "stop",
         "rejected": "Cats are cold and see the sun.", "rejected_finish": "stop"},
        {"type": "thumbs", "seq": 2, "messages": MSGS, "response": "Cats are happy.", "finish_reason": "stop",
         "label": 1},
        {"type": "thumbs", "seq": 3, "messages": MSGS, "response": "Cats are old", "finish_reason": "length",
         "label": 0},
    ]
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n in ("head.weight", "head.bias", "thumbs_bias") for n in trainable)
    before = snapshot(rm)
    loss = trainer.step(batch)
    assert loss > 0
    moved, frozen_moved = changed(rm, before)
    assert frozen_moved == set()
    # LoRA B starts at zero, so the first step moves B, the head and the threshold; A follows next step
    assert {n for n in trainable if "lora_A" not in n} <= moved
    trainer.step(batch)
    moved, frozen_moved = changed(rm, before)
    assert moved == trainable and frozen_moved == set()


def test_one_ppo_update(tiny_model_path, tokenizer, tmp_path):
    rm = RewardModel.create(tiny_model_path, RewardConfig())
    cfg = PPOConfig(minibatch_size=4, ppo_epochs=2)  # 4 optimiser steps
    ppo = PPOTrainer(tiny_model_path, tokenizer, cfg, rm, workdir=tmp_path)
    prompt = encode_prompt(tokenizer, MSGS)
    answers = [("I think cats are happy and love the sun.", True), ("Well, cats are cold", False),
               ("Cats are warm.", True), ("Yes, cats are big and", False)]
    samples = [Sample(i, prompt, encode_response(tokenizer, t, fin), t, fin)
               for i, (t, fin) in enumerate(answers * 2)]
    # one copy of the frozen base: the critic and the reward model use the policy's tensors
    dec = dict(ppo.policy.get_base_model().get_decoder().named_parameters())
    critic = dict(ppo.critic.backbone.named_parameters())
    q_policy = dec["layers.0.self_attn.q_proj.base_layer.weight"]
    assert critic["base_model.model.layers.0.self_attn.q_proj.base_layer.weight"] is q_policy
    assert dict(rm.backbone.named_parameters())["base_model.model.embed_tokens.weight"] is dec["embed_tokens.weight"]

    exp = ppo.make_experience(samples)
    # value head starts at zero; the reference equals the policy before any update
    assert torch.count_nonzero(exp.values) == 0
    assert torch.allclose(exp.logprobs, exp.ref_logprobs)
    assert exp.kl.abs().max() < 1e-5
    # the missing-EOS penalty lands on the cut-off answers
    assert exp.finished.tolist() == [True, False, True, False] * 2

    pol_before, critic_before, rm_before = snapshot(ppo.policy), snapshot(ppo.critic), snapshot(rm)
    kept = ppo.policy_state()  # what the KL guard keeps to undo an update
    stats = ppo.train_on(exp)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    pol_moved, pol_frozen = changed(ppo.policy, pol_before)
    critic_moved, critic_frozen = changed(ppo.critic, critic_before)
    assert pol_frozen == set() and critic_frozen == set()
    assert pol_moved == {n for n, (rg, _) in pol_before.items() if rg}
    assert critic_moved == {n for n, (rg, _) in critic_before.items() if rg}
    assert all("lora_" in n for n in pol_moved)
    assert changed(rm, rm_before) == (set(), set())  # the reward model is not trained by PPO

    # the policy moved away from the reference; the reference is still exactly the base model
    after = ppo.make_experience(samples)
    assert not torch.allclose(after.logprobs, after.ref_logprobs)
    assert torch.allclose(after.ref_logprobs, exp.ref_logprobs)
    assert after.kl.abs().max() > 0

    # the KL guard's undo: the policy is back where it was before the update, to the bit
    ppo.restore_policy(kept)
    assert changed(ppo.policy, pol_before) == (set(), set())
    assert torch.equal(ppo.make_experience(samples).logprobs, exp.logprobs)

    # the saved adapter is what vLLM and the store expect
    folder = ppo.save_policy(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
