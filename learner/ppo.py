"""PPO on a LoRA adapter: the policy learns to raise the reward model's score, close to the base.

    policy     = frozen base + trainable policy LoRA (starts from the adapter serving now)
    reference  = the same base with the adapter switched off (peft `disable_adapter()`): no copy
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
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM

from learner.policy_config import LoRAConfig, PolicyConfig
from learner.token_logprobs import chosen_logprobs
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
def _frozen_params(module: nn.Module) -> dict[str, tuple[nn.Module, str, nn.Parameter]]:
    """Frozen parameters by a name that ignores peft's wrapping (`base_model.model.`, `.base_layer`)."""
    out = {}
    for mod_name, mod in module.named_modules():
        for pname, p in mod._parameters.items():
            if p is None or p.requires_grad:
                continue
            name = f"{mod_name}.{pname}".replace(".base_layer", "")
            for prefix in ("base_model.model.", "model."):
                if name.startswith(prefix):
                    name = name[len(prefix):]
            out[name] = (mod, pname, p)
    return out


@torch.no_grad()
def share_frozen_weights(src: nn.Module, dst: nn.Module) -> int:
    """Point dst's frozen base weights at src's identical tensors; returns how many were shared.

    Policy, critic and reward model all run on the same frozen base: one copy in memory
    instead of three (Gemma 3 270M in fp32: 1.1 GB instead of 3.2 GB). Only tensors with the
    same name, shape and values are shared, so a different checkpoint is left alone."""
    have = {n: p for n, (_, _, p) in _frozen_params(src).items()}
    shared = 0
    for name, (mod, pname, p) in _frozen_params(dst).items():
        q = have.get(name)
        if q is not None and q is not p and q.shape == p.shape and q.dtype == p.dtype and torch.equal(q, p):
            mod._parameters[pname] = q
            shared += 1
    return shared


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


def load_policy(model_path: Path | str, cfg: LoRAConfig, init_adapter: Path | str | None = None):
    """Frozen base + trainable LoRA: a fresh one, or the adapter now serving to continue from."""
    base = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    if init_adapter is not None:
        return PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True)
    return get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                           target_modules=list(cfg.target_modules), bias="none"))


def answer_logprobs(policy, ids: torch.Tensor, mask: torch.Tensor, P: int, temperature: float) -> torch.Tensor:
    """log π(y_t | x, y_<t) at temperature T for each answer token: (B, R).

    Runs the decoder, then the LM head only on the answer positions: with Gemma's 262k-token
    vocabulary, logits over the prompt would cost more memory than the whole model (and the
    answers' logits live in a reused buffer: learner/token_logprobs.py)."""
    lm = policy.get_base_model()                                     # the LoRA layers live inside it
    h = lm.get_decoder()(input_ids=ids, attention_mask=mask,
                         position_ids=position_ids(mask), use_cache=False).last_hidden_state  # (B, P+R, H)
    cap = getattr(lm.config, "final_logit_softcapping", None)
    return chosen_logprobs(h[:, P - 1: -1], lm.get_output_embeddings(), ids[:, P:], temperature, cap)  # (B, R)


def trimmed(ids: torch.Tensor, mask: torch.Tensor, P: int, rows: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """These rows of a prompt-left-padded, answer-right-padded batch, without the columns that are
    padding in every one of them: (ids, mask, column where the answers now start). Rows of
    similar length then cost what their own tokens cost, not the longest prompt and answer of
    the whole batch."""
    m = mask[rows]
    real = m.any(0).nonzero().squeeze(-1)
    first = min(int(real[0]), P - 1) if real.numel() else P - 1
    last = max(int(real[-1]) + 1, P + 1) if real.numel() else P + 1
    return ids[rows][:, first:last], m[:, first:last], P - first


def by_length(mask: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Row indices in chunks of `size`, rows of similar length together (for no-grad passes)."""
    order = torch.argsort(mask.sum(1), stable=True)
    return list(order.split(size))


@torch.no_grad()
def logprobs_with_reference(policy, ids: torch.Tensor, mask: torch.Tensor, P: int, response_mask: torch.Tensor,
                            chunk: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Policy and reference (adapter off) log-probs (B, R) of every answer token, zero on padding;
    computed `chunk` rows at a time, rows of similar length together, each chunk trimmed."""
    logprobs, ref_logprobs = torch.zeros_like(response_mask), torch.zeros_like(response_mask)
    for rows in by_length(mask, chunk):
        b_ids, b_mask, b_P = trimmed(ids, mask, P, rows)
        R = b_ids.shape[1] - b_P
        logprobs[rows, :R] = answer_logprobs(policy, b_ids, b_mask, b_P, temperature)
        with policy.disable_adapter():  # the reference: the same weights with the LoRA off
            ref_logprobs[rows, :R] = answer_logprobs(policy, b_ids, b_mask, b_P, temperature)
    return logprobs * response_mask, ref_logprobs * response_mask


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
class PPOTrainer:
    def __init__(self, model_path: Path | str, tokenizer, cfg: PPOConfig, reward_model, *,
                 init_adapter: Path | str | None = None, workdir: Path | str, kl_coef: float | None = None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.rm = reward_model.eval()
        for p in self.rm.parameters():
            p.requires_grad_(False)
        torch.manual_seed(cfg.seed)
        self.policy = load_policy(model_path, cfg, init_adapter)
        self.critic = ValueModel(model_path, cfg)
        decoder = self.policy.get_base_model().get_decoder()
        n_critic = share_frozen_weights(decoder, self.critic.backbone)
        n_rm = share_frozen_weights(decoder, self.rm.backbone)
        log.debug("sharing frozen base weights: %d tensors with the critic, %d with the reward model", n_critic, n_rm)
        self.params = [p for p in [*self.policy.parameters(), *self.critic.parameters()] if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, eps=1e-5, fused=True)
        beta = cfg.init_kl_coef if kl_coef is None or not cfg.adaptive_kl else kl_coef
        self.kl_ctl = (AdaptiveKLController(beta, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl
                       else FixedKLController(beta))
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(cfg.seed)
        self.iteration = 0

    # -- KL guard ------------------------------------------------------------------------------
    @torch.no_grad()
    def policy_state(self) -> dict[str, torch.Tensor]:
        """A copy of the trainable policy weights (the LoRA): small, kept to undo an update."""
        return {n: p.detach().clone() for n, p in self.policy.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def restore_policy(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.policy.named_parameters())
        for n, t in state.items():
            params[n].copy_(t)

    # -- rollout side ------------------------------------------------------------------------
    def save_policy(self, folder: Path | str) -> Path:
        """The policy LoRA as a PEFT folder (adapter_model.safetensors + adapter_config.json)."""
        folder = Path(folder)
        self.policy.save_pretrained(str(folder))
        return folder

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
                new_logprobs = answer_logprobs(self.policy, ids, mask, P, cfg.temperature)   # (b, R)
                new_values = self.critic(ids, mask, P)                                        # (b, R)
                pg_loss, clipfrac, approxkl = policy_loss(new_logprobs, exp.logprobs[mb, :R],
                                                          exp.advantages[mb, :R], rmask, cfg.clip_range)
                v_loss, vf_clipfrac = value_loss(new_values, exp.values[mb, :R], exp.returns[mb, :R], rmask,
                                                 cfg.clip_range_value)
                loss = pg_loss + cfg.vf_coef * v_loss
                self.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
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
        folder = self.save_policy(self.workdir / f"iter-{self.iteration}")
        batch = self.rng.sample(prompts, min(cfg.rollout_batch_size, len(prompts)))
        if len(batch) < cfg.rollout_batch_size:  # few prompts: sample them again
            batch += [self.rng.choice(prompts) for _ in range(cfg.rollout_batch_size - len(batch))]
        samples = engine.generate(batch, temperature=cfg.temperature, max_tokens=cfg.max_new_tokens,
                                  lora=engine.lora(folder, f"rollout-{self.iteration}"),
                                  seed=self.rng.randrange(2**31))
        t1 = time.perf_counter()
        exp = self.make_experience(samples)
        t2 = time.perf_counter()
        upd = self.train_on(exp)
        t3 = time.perf_counter()
        mean_kl = exp.kl.mean().item()
        beta = self.kl_ctl.value
        self.kl_ctl.update(mean_kl, len(samples))
        shutil.rmtree(folder, ignore_errors=True)
        n_tokens = int(exp.response_mask.sum().item())
        return {**upd, "score": exp.scores.mean().item(), "kl": mean_kl, "kl_coef": beta,
                "non_score_reward": (exp.rewards.sum(1) - exp.scores).mean().item(),
                "eos_fraction": exp.finished.float().mean().item(),
                "response_tokens": n_tokens / len(samples), "tokens": n_tokens,
                "time_rollout": t1 - t0, "time_score": t2 - t1, "time_update": t3 - t2,
                "tokens_per_s": n_tokens / max(t3 - t0, 1e-9)}

    # -- measurement for the gate -------------------------------------------------------------
    @torch.no_grad()
    def answer_kl(self, samples) -> list[float]:
        """Σ_t log π/π_ref over each sampled answer: Monte-Carlo KL(policy || reference) per answer."""
        if not samples:
            return []
        self.policy.eval()
        ids, mask, _, rmask, P = pad_prompt_response([s.prompt_ids for s in samples],
                                                     [s.response_ids for s in samples], self.pad_id)
        lp, ref = logprobs_with_reference(self.policy, ids, mask, P, rmask, self.cfg.forward_batch_size,
                                          self.cfg.temperature)
        return (lp - ref).sum(1).tolist()

