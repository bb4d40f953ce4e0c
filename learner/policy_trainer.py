"""What every policy algorithm's trainer shares (PPO, RLOO, DPO, online DPO, KTO).

    class RLOOTrainer(PolicyTrainer):
        def __init__(...):
            self.init_policy(model_path, tokenizer, cfg, init_adapter, reward_model=rm, workdir=workdir)
            self.init_optimizer(self.policy)
        def step(self, engine, prompts):
            samples = self.sample(engine, self.prompt_batch(prompts, n), n=k, name="rollout")

The round uses the same four methods on every algorithm: `policy_state` / `restore_policy` (the
KL guard undoes an update that crossed the budget), `save_policy` (the candidate's folder) and
`answer_kl` (the gate's KL to the reference: the starting adapter, or the base). The reward model,
when the algorithm has one, is frozen and reads the policy's frozen base weights (one copy in memory).
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import torch
from torch import nn

from learner.kl_guard import mean_and_standard_error
from learner.policy_config import PolicyConfig
from learner.policy_model import POLICY, kl_to_reference, load_policy, share_frozen_weights
from learner.prose_anchor import ProseAnchor
from learner.tokenization import pad_prompt_response

log = logging.getLogger(__name__)


class PolicyTrainer:
    cfg: PolicyConfig
    anchor: ProseAnchor | None = None
    samples_before_update = True
    """Whether `step` samples answers from the policy before its update and reports their KL to the
    reference as `kl` (PPO, RLOO, online DPO); otherwise the round samples the policy after it (DPO, KTO)."""

    def init_policy(self, model_path: Path | str, tokenizer, cfg: PolicyConfig, init_adapter: Path | str | None,
                    *, reward_model: nn.Module | None = None, workdir: Path | str | None = None,
                    reference_adapter: Path | str | None = None) -> None:
        """The policy LoRA (fresh, or the adapter serving now to continue from), its reference (the
        frozen `reference_adapter`, or the base), the frozen reward model sharing its base weights, the
        folder for rollout adapters, and the seeded random order."""
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        torch.manual_seed(cfg.seed)
        self.policy = load_policy(model_path, cfg, init_adapter, reference_adapter)
        if reward_model is not None:
            self.rm = reward_model.eval()
            for p in self.rm.parameters():
                p.requires_grad_(False)
            n = share_frozen_weights(self.decoder(), self.rm.backbone)
            log.debug("sharing frozen base weights: %d tensors with the reward model", n)
        if workdir is not None:
            self.workdir = Path(workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(cfg.seed)
        self.iteration = 0

    def decoder(self) -> nn.Module:
        """The policy's frozen base decoder (what a critic or reward model can share)."""
        return self.policy.get_base_model().get_decoder()

    def init_optimizer(self, *modules: nn.Module) -> None:
        """Fused AdamW over the trainable parameters (the LoRA, and e.g. a critic's) of these modules."""
        self.params = [p for m in modules for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.cfg.learning_rate, eps=1e-5, fused=True)

    def scale_learning_rate(self, factor: float) -> None:
        """Multiply the learning rate of every parameter group by `factor` (the KL guard's back-off)."""
        for group in self.optimizer.param_groups:
            group["lr"] *= factor

    def set_prose_anchor(self, anchor: ProseAnchor) -> None:
        """From now on every update also keeps the anchor's texts of the base model likely (learner/prose_anchor.py)."""
        self.anchor = anchor

    def optimise(self, loss: torch.Tensor) -> None:
        """One optimiser step on this loss (plus the prose anchor's, weighted, once it is set), gradients
        clipped to `max_grad_norm`."""
        self.optimizer.zero_grad()
        if self.anchor is not None:
            loss = loss + self.cfg.anchor_coef * self.anchor.loss(self.policy)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()

    # -- rollouts ------------------------------------------------------------------------------
    def prompt_batch(self, prompts: list[list[int]], size: int) -> list[list[int]]:
        """`size` prompts, each at most once while there are enough; fewer prompts are sampled again."""
        batch = self.rng.sample(prompts, min(size, len(prompts)))
        return batch + [self.rng.choice(prompts) for _ in range(size - len(batch))]

    def sample(self, engine, batch: list[list[int]], *, n: int, name: str):
        """n vLLM answers per prompt from the current LoRA, saved under a new name and id for this
        iteration (vLLM caches adapters by id) and deleted afterwards."""
        cfg = self.cfg
        folder = self.save_policy(self.workdir / f"iter-{self.iteration}")
        try:
            return engine.generate(batch, n=n, temperature=cfg.temperature, max_tokens=cfg.max_new_tokens,
                                   lora=engine.lora(folder, f"{name}-{self.iteration}"),
                                   seed=self.rng.randrange(2**31))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- what the round uses -------------------------------------------------------------------
    @torch.no_grad()
    def policy_state(self) -> dict[str, torch.Tensor]:
        """A copy of the trainable policy weights (the LoRA): small, kept to undo an update."""
        return {n: p.detach().clone() for n, p in self.policy.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def restore_policy(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.policy.named_parameters())
        for n, t in state.items():
            params[n].copy_(t)

    def save_policy(self, folder: Path | str) -> Path:
        """The policy LoRA as a PEFT folder (adapter_model.safetensors + adapter_config.json); the
        reference LoRA is not saved."""
        folder = Path(folder)
        self.policy.save_pretrained(str(folder), selected_adapters=[POLICY])
        return folder

    def sampled_kl(self, engine, prompts: list[list[int]]) -> tuple[float, float]:
        """Mean KL to the reference of one answer each to `kl_prompts` of these prompts, sampled from the
        policy as it is now, and the standard error of that mean."""
        samples = self.sample(engine, self.prompt_batch(prompts, self.cfg.kl_prompts), n=1, name="kl")
        return mean_and_standard_error(self.answer_kl(samples))

    def answer_kl(self, samples) -> list[float]:
        """KL(policy ‖ reference) of each answer sampled from the policy: the KL over the whole
        vocabulary at each of its tokens, summed (`kl_to_reference`)."""
        if not samples:
            return []
        self.policy.eval()
        ids, mask, _, rmask, P = pad_prompt_response([s.prompt_ids for s in samples],
                                                     [s.response_ids for s in samples], self.pad_id)
        return kl_to_reference(self.policy, ids, mask, P, rmask, self.cfg.forward_batch_size,
                               self.cfg.temperature).tolist()


class UnchangedPolicy(PolicyTrainer):
    """A policy stage with nothing to learn: the policy as it starts (the supervised steps' policy, in a
    round whose other feedback forms no pair), loaded for the gate's figures and the candidate's folder."""

    def __init__(self, model_path: Path | str, tokenizer, cfg: PolicyConfig, init_adapter: Path | str | None, *,
                 reference_adapter: Path | str | None = None):
        self.init_policy(model_path, tokenizer, cfg, init_adapter, reference_adapter=reference_adapter)
