"""A new reward model starts from its seed alone: the same `RewardConfig.seed` gives the same LoRA
and head whatever the process drew from torch's global generator before, another seed gives
another start, and creating one leaves the global generator where it was. Without that, two
learners on the same feedback train different reward models and make different rounds."""

from __future__ import annotations

import torch

from learner.reward import RewardConfig, RewardModel


def _trainable(rm: RewardModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in rm.named_parameters() if p.requires_grad}


def test_a_new_reward_model_depends_on_its_seed_only(tiny_model_path):
    torch.manual_seed(123)
    first = _trainable(RewardModel.create(tiny_model_path, RewardConfig(seed=0)))
    torch.rand(1000)                                     # the global generator elsewhere
    before = torch.random.get_rng_state()
    second = _trainable(RewardModel.create(tiny_model_path, RewardConfig(seed=0)))
    after = torch.random.get_rng_state()
    other = _trainable(RewardModel.create(tiny_model_path, RewardConfig(seed=1)))

    lora_a = [name for name in first if "lora_A" in name]
    assert lora_a and first.keys() == second.keys() == other.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert any(not torch.equal(first[name], other[name]) for name in lora_a)
    assert torch.equal(after, before)
