"""PPO on a LoRA adapter: the policy learns to raise the reward model's score, close to the base.

    policy     = frozen base + trainable policy LoRA (starts from the adapter serving now)
    reference  = the starting adapter (frozen), or the base with the adapter off (learner/policy_model.py)
    critic     = the base + its own value LoRA + a value head initialised to zero (the frozen base
                 weights of policy, critic and reward model are one set of tensors in memory)
    rollouts   = vLLM (learner/rollout.py), with the current LoRA saved under a new name and id;
                 the log-probs used for training are recomputed here, never taken from vLLM

One iteration (`PPOTrainer.step`), in the notation of Huang et al., "The N Implementation
Details of RLHF with PPO" (2022), and Ziegler et al. (2019):

    sample y ~ π(·|x) at temperature T                                    (vLLM)
    logp_t  = log π(y_t | x, y_<t) at the same T, ref_t the same without the LoRA
    score   = RM(x, text(y)) normalised; minus `missing_eos_penalty` if y was cut off without EOS
    r_t     = -β (logp_t - ref_t)     + score at the final token t = |y| - 1
    A_t     = GAE(r, V; γ, λ), whitened over the batch; returns R_t = A_t + V_t (before whitening)
    L_pg    = mean_t max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε)),  ρ_t = exp(logp'_t - logp_t)
    L_v     = ½ mean_t max((V'_t - R_t)², (clip(V'_t, V_t - ε_v, V_t + ε_v) - R_t)²)
    loss    = L_pg + c_v L_v;  several epochs over minibatches; gradients clipped
    β      <- adaptive KL controller toward a target KL per answer

Measure it:  .venv/bin/python bench/learner.py --models tiny   (step time, tokens/s, beside TRL)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModel

from learner.policy_config import PolicyConfig
from learner.policy_model import answer_logprobs, by_length, logprobs_with_reference, share_frozen_weights, trimmed
from learner.policy_trainer import PolicyTrainer
from learner.tokenization import pad_prompt_response, position_ids

log = logging.getLogger(__name__)

@dataclass
class PPOConfig(PolicyConfig):
    """Hyperparameters of PPO on the policy LoRA (the learner's, not the operator's)."""

    value_lora_r: int = 8
    """Rank of the critic's own LoRA."""
    learning_rate: float = 3e-4
    """AdamW learning rate for policy LoRA, value LoRA and value head."""
    rollout_batch_size: int = 32
    """Prompts sampled per iteration (one answer each)."""
    minibatch_size: int = 8
    """Answers per optimiser step."""
    ppo_epochs: int = 4
    """Passes over one iteration's rollouts."""
    gamma: float = 1.0
    """Discount (1: the reward at the end counts fully for every token)."""
    lam: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO ratio clip ε."""
    clip_range_value: float = 0.2
    """Value clip ε_v around the rollout's values."""
    vf_coef: float = 0.1
    """Weight c_v of the value loss."""
    init_kl_coef: float = 0.1
    """Initial β of the per-token KL penalty (the learner carries the adapted β across rounds)."""
    adaptive_kl: bool = True
    """Adapt β toward target_kl (Ziegler et al.); fixed β otherwise."""
    target_kl: float = 2.0
    """Target KL(policy || reference) per answer, in nats (kept below the operator's kl_budget)."""
    kl_horizon: int = 256
    """Answers over which the adaptive controller moves β by at most ±20 %·n/horizon."""


# ------------------------------------------------------------------------------------------
# The math (pure functions on tensors; tests compare them with hand-computed values)
# ------------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries; padding stays 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if n > 1:
        var = var * n / (n - 1)  # unbiased, as TRL
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_penalised_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                         scores: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -β·(logp_t - ref_t), plus the score at each answer's last token.

    logprobs, ref_logprobs, mask: (B, R); scores: (B,). Returns rewards (B, R) and the
    per-token KL estimate (B, R) (zero on padding)."""
    kl = (logprobs - ref_logprobs) * mask                       # (B, R)
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)                 # (B,) index of the final token
    rewards[torch.arange(rewards.shape[0]), last] += scores
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded answers (B, R).

    δ_t = r_t + γ V_{t+1} - V_t (V after the last token = 0);  A_t = δ_t + γλ A_{t+1}.
    Returns advantages and returns R_t = A_t + V_t, both zero on padding."""
    values = values * mask
    rewards = rewards * mask
    B, R = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(R)):
        next_v = values[:, t + 1] if t + 1 < R else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        last = last * mask[:, t]  # padding carries nothing back
        adv[:, t] = last
    return adv, (adv + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, float, float]:
    """Clipped surrogate. Returns (loss, clip fraction, approx KL ½(Δlogp)²)."""
    ratio = torch.exp(logprobs - old_logprobs)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(pg1, pg2), mask)
    clipfrac = masked_mean((pg2 > pg1).float(), mask).item()
    approxkl = 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask).item()
    return loss, clipfrac, approxkl


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float) -> tuple[torch.Tensor, float]:
    """Clipped value loss ½·max((V - R)², (V_clipped - R)²). Returns (loss, value clip fraction)."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    l1 = (values - returns) ** 2
    l2 = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(l1, l2), mask)
    return loss, masked_mean((l2 > l1).float(), mask).item()


class AdaptiveKLController:
    """Ziegler et al. (2019): β ← β·(1 + clip(KL/target - 1, ±0.2)·n/horizon)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------
class ValueModel(nn.Module):
    """Critic: base model + its own LoRA + a linear head, zero-initialised so V ≡ 0 at the start."""

    def __init__(self, model_path: Path | str, cfg: PPOConfig):
        super().__init__()
        base = AutoModel.from_pretrained(str(model_path), dtype=torch.float32)
        self.backbone = get_peft_model(base, LoraConfig(r=cfg.value_lora_r, lora_alpha=2 * cfg.value_lora_r,
                                                        lora_dropout=0.0, target_modules=list(cfg.target_modules)))
        self.head = nn.Linear(base.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, P: int) -> torch.Tensor:
        """V(s_t) for each answer token t, from the state before it: (B, R)."""
        h = self.backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                          use_cache=False).last_hidden_state
        return self.head(h[:, P - 1: -1]).squeeze(-1)             # (B, R)



# ------------------------------------------------------------------------------------------
# Hand-off from rollout to update (OpenRLHF's `Experience`)
# ------------------------------------------------------------------------------------------
@dataclass
class Experience:
    ids: torch.Tensor            # (B, P+R) prompt left-padded to P, answer right-padded to R
    mask: torch.Tensor           # (B, P+R) attention mask
    P: int                       # column where every answer starts
    response_mask: torch.Tensor  # (B, R) 1 on generated tokens (incl. the final EOS), 0 on padding
    logprobs: torch.Tensor       # (B, R) policy log-probs at rollout time (trainer-computed)
    ref_logprobs: torch.Tensor   # (B, R) reference (adapter off) log-probs
    values: torch.Tensor         # (B, R) critic's V(s_t) at rollout time
    rewards: torch.Tensor        # (B, R) -β·KL per token + score at the final token
    advantages: torch.Tensor     # (B, R) GAE, whitened
    returns: torch.Tensor        # (B, R) GAE + V (regression target of the critic)
    scores: torch.Tensor         # (B,) normalised reward-model score, after the missing-EOS penalty
    kl: torch.Tensor             # (B,) Σ_t (logp_t - ref_t): sampled KL(policy || reference) per answer
    finished: torch.Tensor       # (B,) bool: ended with EOS


# ------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------
class PPOTrainer(PolicyTrainer):
    def __init__(self, model_path: Path | str, tokenizer, cfg: PPOConfig, reward_model, *,
                 init_adapter: Path | str | None = None,
                 reference_adapter: Path | str | None = None, workdir: Path | str, kl_coef: float | None = None):
        self.init_policy(model_path, tokenizer, cfg, init_adapter, reward_model=reward_model, workdir=workdir,
                         reference_adapter=reference_adapter)
        self.critic = ValueModel(model_path, cfg)
        n_critic = share_frozen_weights(self.decoder(), self.critic.backbone)
        log.debug("sharing frozen base weights: %d tensors with the critic", n_critic)
        self.init_optimizer(self.policy, self.critic)
        beta = cfg.init_kl_coef if kl_coef is None or not cfg.adaptive_kl else kl_coef
        self.kl_ctl = (AdaptiveKLController(beta, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl
                       else FixedKLController(beta))

    # -- rollout side ------------------------------------------------------------------------
    @torch.no_grad()
    def make_experience(self, samples) -> Experience:
        """Score rollouts: trainer log-probs, reference log-probs, values, rewards, advantages."""
        cfg = self.cfg
        ids, mask, _, rmask, P = pad_prompt_response([s.prompt_ids for s in samples],
                                                     [s.response_ids for s in samples], self.pad_id)
        self.policy.eval()
        self.critic.eval()
        logprobs, ref_logprobs = logprobs_with_reference(self.policy, ids, mask, P, rmask, cfg.forward_batch_size,
                                                         cfg.temperature)
        values = torch.zeros_like(rmask)
        for rows in by_length(mask, cfg.forward_batch_size):
            b_ids, b_mask, b_P = trimmed(ids, mask, P, rows)
            values[rows, : b_ids.shape[1] - b_P] = self.critic(b_ids, b_mask, b_P)
        values = values * rmask
        finished = torch.tensor([s.finished for s in samples])
        # the reward model reads each answer's text like a logged one (tokens + EOS if finished)
        scores = torch.tensor(self.rm.score_samples(samples, self.tokenizer, cfg.forward_batch_size))
        scores = scores - cfg.missing_eos_penalty * (~finished).float()
        rewards, kl = kl_penalised_rewards(logprobs, ref_logprobs, rmask, scores, self.kl_ctl.value)
        advantages, returns = gae(rewards, values, rmask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, rmask)
        return Experience(ids, mask, P, rmask, logprobs, ref_logprobs, values, rewards, advantages, returns,
                          scores, kl.sum(1), finished)

    # -- update side -----------------------------------------------------------------------
    def train_on(self, exp: Experience) -> dict:
        """Several epochs of clipped PPO over minibatches of one iteration's rollouts."""
        cfg = self.cfg
        self.policy.train()
        self.critic.train()
        B = exp.ids.shape[0]
        stats = {"policy_loss": [], "value_loss": [], "clipfrac": [], "approxkl": [], "vf_clipfrac": []}
        for _ in range(cfg.ppo_epochs):
            order = list(range(B))
            self.rng.shuffle(order)
            for i in range(0, B, cfg.minibatch_size):
                mb = torch.tensor(order[i: i + cfg.minibatch_size])
                ids, mask, P = trimmed(exp.ids, exp.mask, exp.P, mb)  # without all-padding columns
                R = ids.shape[1] - P
                rmask = exp.response_mask[mb, :R]
                new_logprobs = answer_logprobs(self.policy, ids, mask, P, cfg.temperature, rmask)   # (b, R)
                new_values = self.critic(ids, mask, P)                                        # (b, R)
                pg_loss, clipfrac, approxkl = policy_loss(new_logprobs, exp.logprobs[mb, :R],
                                                          exp.advantages[mb, :R], rmask, cfg.clip_range)
                v_loss, vf_clipfrac = value_loss(new_values, exp.values[mb, :R], exp.returns[mb, :R], rmask,
                                                 cfg.clip_range_value)
                self.optimise(pg_loss + cfg.vf_coef * v_loss)
                stats["policy_loss"].append(pg_loss.item())
                stats["value_loss"].append(v_loss.item())
                stats["clipfrac"].append(clipfrac)
                stats["approxkl"].append(approxkl)
                stats["vf_clipfrac"].append(vf_clipfrac)
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def step(self, engine, prompts: list[list[int]]) -> dict:
        """One PPO iteration: save LoRA -> vLLM rollouts -> score -> update -> adapt β."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.iteration += 1
        samples = self.sample(engine, self.prompt_batch(prompts, cfg.rollout_batch_size), n=1, name="rollout")
        t1 = time.perf_counter()
        exp = self.make_experience(samples)
        t2 = time.perf_counter()
        upd = self.train_on(exp)
        t3 = time.perf_counter()
        mean_kl = exp.kl.mean().item()
        beta = self.kl_ctl.value
        self.kl_ctl.update(mean_kl, len(samples))
        n_tokens = int(exp.response_mask.sum().item())
        return {**upd, "score": exp.scores.mean().item(), "kl": mean_kl, "kl_coef": beta,
                "non_score_reward": (exp.rewards.sum(1) - exp.scores).mean().item(),
                "eos_fraction": exp.finished.float().mean().item(),
                "response_tokens": n_tokens / len(samples), "tokens": n_tokens,
                "time_rollout": t1 - t0, "time_score": t2 - t1, "time_update": t3 - t2,
                "tokens_per_s": n_tokens / max(t3 - t0, 1e-9)}
