"""RLOO on a LoRA adapter: PPO's clipped update without a critic, k answers per prompt instead.

    policy     = frozen base + trainable policy LoRA (starts from the adapter serving now)
    reference  = the starting adapter (frozen), or the base with the adapter off (learner/policy_model.py)
    baseline   = the other k - 1 answers to the same prompt (no value model: no critic LoRA, value
                 head or value forward/backward pass)
    rollouts   = vLLM (learner/rollout.py), k answers per prompt, with the current LoRA saved under
                 a new name and id; training log-probs are recomputed here, never taken from vLLM

One iteration (`RLOOTrainer.step`), after Ahmadian et al., "Back to Basics: Revisiting
REINFORCE Style Optimization for Learning from Human Feedback in LLMs" (2024, arXiv 2402.14740):

    sample y_1..y_k ~ π(·|x) at temperature T for each prompt x           (vLLM, n = k)
    logp_t  = log π(y_t | x, y_<t) at the same T, ref_t the same without the LoRA
    score_i = RM(x, text(y_i)) normalised; minus `missing_eos_penalty` if y_i was cut off without EOS
    R_i     = score_i - β Σ_t (logp_t - ref_t)              one reward per answer, KL included
    A_i     = R_i - 1/(k-1) Σ_{j≠i} R_j  = k/(k-1) (R_i - mean_j R_j)      leave-one-out baseline
    A_{i,t} = A_i for every token t of answer i (not whitened by default: see `whiten_advantages`)
    L_pg    = mean_t max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε)),  ρ_t = exp(logp'_t - logp_t)
    `epochs` passes over minibatches of the iteration's answers; gradients clipped; β fixed

TRL's RLOOTrainer (the bench's reference) computes the same R_i and A_i; its ratio is one per
answer (exp of the summed log-ratio), ours one per token, as PPO's: the clip then acts on each
token, and a long answer's ratio does not leave the clip range after a small change per token.

Measure it:  .venv/bin/python bench/learner.py --models tiny   (step time, tokens/s, beside TRL)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from learner.policy_config import PolicyConfig
from learner.policy_model import answer_logprobs, logprobs_with_reference, trimmed
from learner.policy_trainer import PolicyTrainer
from learner.ppo import FixedKLController, masked_whiten, policy_loss
from learner.tokenization import pad_prompt_response

log = logging.getLogger(__name__)


@dataclass
class RLOOConfig(PolicyConfig):
    """Hyperparameters of RLOO on the policy LoRA (the learner's, not the operator's)."""

    rollout_prompts: int = 16
    """Prompts sampled per iteration; each gets `num_samples` answers (16 x 2 = PPO's 32 answers)."""
    num_samples: int = 2
    """k: answers per prompt, at least 2 (each answer's baseline is the mean of the other k - 1)."""
    minibatch_size: int = 8
    """Answers per optimiser step."""
    epochs: int = 4
    """Passes over one iteration's answers (TRL's `num_iterations`)."""
    clip_range: float = 0.2
    """Ratio clip ε of the surrogate."""
    beta: float = 0.1
    """β of the KL penalty in each answer's reward, fixed (nothing is carried across rounds)."""
    whiten_advantages: bool = False
    """Scale the advantages to mean 0, std 1 over the iteration's answers. Off: leave-one-out
    advantages already have mean 0 for each prompt and the round normalises scores to std 1, while
    whitening a batch whose answers all scored nearly alike would blow its noise up to full-size steps."""


# ------------------------------------------------------------------------------------------
# The math (pure functions on tensors; tests compare them with hand-computed values)
# ------------------------------------------------------------------------------------------
def sequence_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                     mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """R_i = score_i - β Σ_t (logp_t - ref_t) over answer i's tokens (padding ignored).

    scores: (B,); logprobs, ref_logprobs, mask: (B, R). Returns R (B,) and the sampled KL per answer (B,)."""
    kl = ((logprobs - ref_logprobs) * mask).sum(1)               # (B,)
    return scores - beta * kl, kl


def leave_one_out_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """A_i = R_i - mean of the other k - 1 rewards of the same prompt.

    rewards: (B,) with the k answers of each prompt consecutive (B = prompts·k). Returns (B,)."""
    if k < 2:
        raise ValueError("leave-one-out needs at least 2 answers per prompt")
    grouped = rewards.view(-1, k)                                 # (prompts, k)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (k - 1)  # (prompts, k)
    return (grouped - baseline).reshape(-1)                       # (B,)


# ------------------------------------------------------------------------------------------
# Hand-off from rollout to update
# ------------------------------------------------------------------------------------------
@dataclass
class Experience:
    ids: torch.Tensor            # (B, P+R) prompt left-padded to P, answer right-padded to R
    mask: torch.Tensor           # (B, P+R) attention mask
    P: int                       # column where every answer starts
    response_mask: torch.Tensor  # (B, R) 1 on generated tokens (incl. the final EOS), 0 on padding
    logprobs: torch.Tensor       # (B, R) policy log-probs at rollout time (trainer-computed)
    rewards: torch.Tensor        # (B,) R_i: score - β·KL
    advantages: torch.Tensor     # (B,) A_i, leave-one-out (applied to every token of answer i)
    scores: torch.Tensor         # (B,) normalised reward-model score, after the missing-EOS penalty
    kl: torch.Tensor             # (B,) Σ_t (logp_t - ref_t): sampled KL(policy || reference) per answer
    finished: torch.Tensor       # (B,) bool: ended with EOS


# ------------------------------------------------------------------------------------------
# Trainer (the same public interface as PPOTrainer: the round runs either)
# ------------------------------------------------------------------------------------------
class RLOOTrainer(PolicyTrainer):
    def __init__(self, model_path: Path | str, tokenizer, cfg: RLOOConfig, reward_model, *,
                 init_adapter: Path | str | None = None,
                 reference_adapter: Path | str | None = None, workdir: Path | str, kl_coef: float | None = None):
        if cfg.num_samples < 2:
            raise ValueError(f"rloo.num_samples must be at least 2 (got {cfg.num_samples})")
        self.init_policy(model_path, tokenizer, cfg, init_adapter, reward_model=reward_model, workdir=workdir,
                         reference_adapter=reference_adapter)
        self.init_optimizer(self.policy)
        self.kl_ctl = FixedKLController(cfg.beta if kl_coef is None else kl_coef)

    # -- rollout side ------------------------------------------------------------------------
    @torch.no_grad()
    def make_experience(self, samples) -> Experience:
        """Score rollouts (k consecutive answers per prompt): log-probs, reference, rewards, advantages."""
        cfg = self.cfg
        k = cfg.num_samples
        if len(samples) % k or any(samples[i].prompt_index != samples[i - i % k].prompt_index
                                   for i in range(len(samples))):
            raise ValueError(f"rollouts must come as {k} consecutive answers per prompt")
        ids, mask, _, rmask, P = pad_prompt_response([s.prompt_ids for s in samples],
                                                     [s.response_ids for s in samples], self.pad_id)
        self.policy.eval()
        logprobs, ref_logprobs = logprobs_with_reference(self.policy, ids, mask, P, rmask, cfg.forward_batch_size,
                                                         cfg.temperature)
        finished = torch.tensor([s.finished for s in samples])
        # the reward model reads each answer's text like a logged one (tokens + EOS if finished)
        scores = torch.tensor(self.rm.score_samples(samples, self.tokenizer, cfg.forward_batch_size))
        scores = scores - cfg.missing_eos_penalty * (~finished).float()
        rewards, kl = sequence_rewards(scores, logprobs, ref_logprobs, rmask, self.kl_ctl.value)
        adv = leave_one_out_advantages(rewards, k)                                  # (B,)
        if cfg.whiten_advantages:
            adv = masked_whiten(adv, torch.ones_like(adv))
        return Experience(ids, mask, P, rmask, logprobs, rewards, adv, scores, kl, finished)

    # -- update side -----------------------------------------------------------------------
    def train_on(self, exp: Experience) -> dict:
        """`epochs` passes of the clipped surrogate over minibatches of one iteration's answers."""
        cfg = self.cfg
        self.policy.train()
        B = exp.ids.shape[0]
        stats = {"policy_loss": [], "clipfrac": [], "approxkl": []}
        for _ in range(cfg.epochs):
            order = list(range(B))
            self.rng.shuffle(order)
            for i in range(0, B, cfg.minibatch_size):
                mb = torch.tensor(order[i: i + cfg.minibatch_size])
                ids, mask, P = trimmed(exp.ids, exp.mask, exp.P, mb)  # without all-padding columns
                R = ids.shape[1] - P
                rmask = exp.response_mask[mb, :R]
                new_logprobs = answer_logprobs(self.policy, ids, mask, P, cfg.temperature, rmask)   # (b, R)
                advantages = exp.advantages[mb, None] * rmask                                    # (b, R)
                loss, clipfrac, approxkl = policy_loss(new_logprobs, exp.logprobs[mb, :R], advantages, rmask,
                                                       cfg.clip_range)
                self.optimise(loss)
                stats["policy_loss"].append(loss.item())
                stats["clipfrac"].append(clipfrac)
                stats["approxkl"].append(approxkl)
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def step(self, engine, prompts: list[list[int]]) -> dict:
        """One RLOO iteration: save LoRA -> k vLLM answers per prompt -> score -> update."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.iteration += 1
        samples = self.sample(engine, self.prompt_batch(prompts, cfg.rollout_prompts), n=cfg.num_samples,
                              name="rollout")
        t1 = time.perf_counter()
        exp = self.make_experience(samples)
        t2 = time.perf_counter()
        upd = self.train_on(exp)
        t3 = time.perf_counter()
        n_tokens = int(exp.response_mask.sum().item())
        return {**upd, "score": exp.scores.mean().item(), "kl": exp.kl.mean().item(), "kl_coef": self.kl_ctl.value,
                "non_score_reward": (exp.rewards - exp.scores).mean().item(),
                "advantage_abs": exp.advantages.abs().mean().item(),
                "prompts": len(samples) // cfg.num_samples,
                "eos_fraction": exp.finished.float().mean().item(),
                "response_tokens": n_tokens / len(samples), "tokens": n_tokens,
                "time_rollout": t1 - t0, "time_score": t2 - t1, "time_update": t3 - t2,
                "tokens_per_s": n_tokens / max(t3 - t0, 1e-9)}
