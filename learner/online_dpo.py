"""Online DPO on a LoRA adapter: fresh pairs from the current policy, ranked by the reward model, then DPO's loss.

    policy     = frozen base + trainable policy LoRA (starts from the adapter serving now)
    reference  = the starting adapter (frozen), or the base with the adapter off (learner/policy_model.py)
    rollouts   = vLLM (learner/rollout.py): k answers per prompt from the current LoRA, saved under a new
                 name and id; the prompts come from the round's pool, drawn by the users' capped weights
    judge      = the round's reward model (normalised scores, minus `missing_eos_penalty` for an answer
                 cut off without EOS): the best-scored answer is y_w, the worst y_l (with k = 2: the
                 higher and the lower); a pair whose scores differ by less than `min_score_gap` says
                 nothing the reward model can tell apart and is dropped

One iteration (`OnlineDPOTrainer.step`), after Guo et al., "Direct Language Model Alignment from
Online AI Feedback" (2024, arXiv 2402.04792) and Xiong et al., "Iterative Preference Learning from
Human Feedback" (2024, arXiv 2312.11456, 2405.07863):

    sample y_1..y_k ~ π(·|x) at temperature T for each prompt x               (vLLM, n = k)
    (y_w, y_l)  = the best and the worst answer by reward-model score
    logπ(y|x)   = Σ_t log π(y_t | x, y_<t) over the sampled tokens at T; logπ_ref without the LoRA
    h           = (logπ(y_w) - logπ_ref(y_w)) - (logπ(y_l) - logπ_ref(y_l))
    L           = mean over the iteration's pairs of -log σ(β h)                 (learner/dpo.py `dpo_loss`)
    `epochs` passes over minibatches of the iteration's pairs; gradients clipped; β fixed

Why the best and the worst of k = 4 by default, not two answers: the reward model ranks every
pair, also two answers that differ only in what it fits as noise, and DPO weighs every kept pair
alike. The extremes of four answers differ most in what the reward model learned (Xiong et al.'s
iterative DPO takes the best and worst of 8). docs/learner.md has the tiny model's rounds behind
the defaults.

Unlike offline DPO the answers are the policy's own, so the log-ratio of the sampled answers is a
sampled KL to the reference: the round's KL guard works as for RLOO. The pairs need no human to
have seen both answers: the reward model learned the users' taste, the policy learns from its
ranking of what it writes now (no logged answer of an older policy).

The stats (`step` returns them; the round logs them as for the other algorithms):
    score           mean reward-model score of the iteration's answers (before its updates)
    kl              mean Σ_t (logπ - logπ_ref) of the sampled answers: sampled KL(policy || reference)
    kl_coef         β (fixed)
    policy_loss     mean DPO loss of the iteration's minibatches
    margin          mean implicit-reward margin β h of the pairs (before the updates: 0 for a fresh LoRA)
    score_gap       mean reward-model score difference of the kept pairs
    pairs           pairs kept (prompts whose best and worst answers scored at least `min_score_gap` apart)
`heldout_accuracy` is the share of held-out logged pairs with β h > 0, as for DPO.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from learner.dpo import answer_logprob_sums, dpo_loss, implicit_reward_accuracy, logprob_sums_with_reference
from learner.policy_config import PolicyConfig
from learner.policy_trainer import PolicyTrainer

log = logging.getLogger(__name__)


@dataclass
class OnlineDPOConfig(PolicyConfig):
    """Hyperparameters of online DPO on the policy LoRA (the learner's, not the operator's)."""

    beta: float = 0.5
    """β of the implicit reward β (logπ - logπ_ref) (larger: stays closer to the reference). Larger than
    offline DPO's: the loss saturates once β h is a few units, and the policy's own answers give
    every iteration new pairs to push, so a small β lets the sampled KL run (on the tiny model, β 0.1
    crossed a KL budget of 5 within 9 iterations in one round, while moving the taste less)."""
    rollout_prompts: int = 16
    """Prompts sampled per iteration, `num_samples` answers each."""
    num_samples: int = 4
    """k: answers per prompt, at least 2; the best and the worst by score make the prompt's pair."""
    minibatch_size: int = 4
    """Pairs per optimiser step (8 sequences, as the other algorithms' minibatches)."""
    epochs: int = 2
    """Passes over one iteration's pairs."""
    min_score_gap: float = 1.0
    """Pairs whose best and worst scores (normalised: std 1 on the serving policy's answers) differ by
    less are dropped: inside one standard deviation the ranking is mostly what the reward model fits
    as noise (on the tiny model, a gap of 0.5 moved the taste less than 1.0)."""
    max_length: int = 512
    """Longest prompt + answer in tokens of the held-out logged pairs (as DPO's)."""


def ranked_pairs(scores: list[float], k: int, min_gap: float) -> list[tuple[int, int]]:
    """(chosen, rejected) sample indices for each prompt's k consecutive answers: the best-scored and the
    worst-scored (the first of equals); prompts whose best and worst are less than `min_gap` apart, or
    equal, make no pair."""
    if k < 2 or len(scores) % k:
        raise ValueError(f"online DPO needs {k} consecutive answers per prompt (k >= 2)")
    pairs = []
    for i in range(0, len(scores), k):
        group = range(i, i + k)
        best, worst = max(group, key=scores.__getitem__), min(group, key=scores.__getitem__)
        if scores[best] > scores[worst] and scores[best] - scores[worst] >= min_gap:
            pairs.append((best, worst))
    return pairs


class OnlineDPOTrainer(PolicyTrainer):
    def __init__(self, model_path: Path | str, tokenizer, cfg: OnlineDPOConfig, reward_model, *,
                 init_adapter: Path | str | None = None,
                 reference_adapter: Path | str | None = None, workdir: Path | str):
        if cfg.num_samples < 2:
            raise ValueError(f"online_dpo.num_samples must be at least 2 (got {cfg.num_samples})")
        self.init_policy(model_path, tokenizer, cfg, init_adapter, reward_model=reward_model, workdir=workdir,
                         reference_adapter=reference_adapter)
        self.init_optimizer(self.policy)

    def train_on(self, prompts: list[list[int]], chosen: list[list[int]], rejected: list[list[int]],
                 ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> dict[str, list[float]]:
        """`epochs` passes of the DPO loss over minibatches of the iteration's pairs."""
        cfg = self.cfg
        self.policy.train()
        weights = torch.ones(len(prompts))
        stats = defaultdict(list)
        for _ in range(cfg.epochs):
            order = list(range(len(prompts)))
            self.rng.shuffle(order)
            for i in range(0, len(order), cfg.minibatch_size):
                mb = order[i: i + cfg.minibatch_size]
                b = len(mb)
                logp = answer_logprob_sums(self.policy, [prompts[j] for j in mb] * 2,
                                           [chosen[j] for j in mb] + [rejected[j] for j in mb], self.pad_id,
                                           cfg.temperature)                                          # (2b,)
                loss, _ = dpo_loss(logp[:b], logp[b:], ref_chosen[mb], ref_rejected[mb], cfg.beta, weights[mb])
                self.optimise(loss)
                stats["policy_loss"].append(loss.item())
        return stats

    def step(self, engine, prompts: list[list[int]]) -> dict:
        """One iteration: k vLLM answers per prompt -> reward-model ranking -> DPO updates."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.iteration += 1
        batch = [self.rng.choice(prompts) for _ in range(cfg.rollout_prompts)]
        samples = self.sample(engine, batch, n=cfg.num_samples, name="online-dpo")
        t1 = time.perf_counter()
        with torch.no_grad():
            scores = self.rm.score_samples(samples, self.tokenizer, cfg.forward_batch_size)
        scores = [s - (0.0 if x.finished else cfg.missing_eos_penalty) for s, x in zip(scores, samples)]
        self.policy.eval()
        lp, ref = logprob_sums_with_reference(self.policy, [s.prompt_ids for s in samples],
                                              [s.response_ids for s in samples], self.pad_id,
                                              cfg.forward_batch_size, cfg.temperature)               # (2n,), (2n,)
        pairs = ranked_pairs(scores, cfg.num_samples, cfg.min_score_gap)
        w, lo = [c for c, _ in pairs], [r for _, r in pairs]
        margin = cfg.beta * ((lp[w] - ref[w]) - (lp[lo] - ref[lo]))
        t2 = time.perf_counter()
        stats = {"policy_loss": [0.0]}
        if pairs:
            stats = self.train_on([samples[i].prompt_ids for i in w], [samples[i].response_ids for i in w],
                                  [samples[i].response_ids for i in lo], ref[w], ref[lo])
        t3 = time.perf_counter()
        n_tokens = sum(len(s.response_ids) for s in samples)
        return {"policy_loss": sum(stats["policy_loss"]) / len(stats["policy_loss"]),
                "score": sum(scores) / len(scores), "kl": (lp - ref).mean().item(), "kl_coef": cfg.beta,
                "clipfrac": 0.0, "margin": margin.mean().item() if pairs else 0.0,
                "score_gap": sum(scores[c] - scores[r] for c, r in pairs) / max(1, len(pairs)),
                "pairs": len(pairs), "prompts": len(samples) // cfg.num_samples,
                "eos_fraction": sum(s.finished for s in samples) / len(samples),
                "response_tokens": n_tokens / len(samples), "tokens": n_tokens,
                "time_rollout": t1 - t0, "time_score": t2 - t1, "time_update": t3 - t2}

    def heldout_accuracy(self, examples: list[dict]) -> float:
        """Share of held-out logged pairs whose implicit-reward margin β h is > 0 (NaN: no pair)."""
        return implicit_reward_accuracy(self.policy, self.tokenizer, examples, self.cfg)
