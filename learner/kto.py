"""KTO on a LoRA adapter: the policy learns from thumbs (unpaired good and bad answers), no rollouts.

    policy     = frozen base + trainable policy LoRA (starts from the adapter serving now)
    reference  = the starting adapter (frozen), or the base with the adapter off (learner/policy_model.py)
    data       = the round's training feedback, each example with the round's capped weight w:
                 a thumb up is one desirable answer, a thumb down one undesirable answer (weight w);
                 a pairwise choice is one desirable (the chosen) and one undesirable (the rejected)
                 answer, each with the choice's weight w
    answers    = logged texts tokenised as the reward model reads them (EOS if serving stopped on it)

The loss, after Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization"
(2024, arXiv 2402.01306):

    r(x, y)  = logπ(y|x) - logπ_ref(y|x)       summed over the answer's tokens (padding ignored)
    z_ref    = max(0, mean_i r(x_i, y_{i+1}))   KL(π || π_ref) estimated on mismatched pairs of the
               minibatch (prompt i with the answer of item i+1, cyclically), without gradients
    v(x, y)  = λ_D σ(β (r - z_ref))  if y is desirable,  λ_U σ(β (z_ref - r))  if undesirable
    L_KTO    = Σ_i w_i (λ_i - v_i) / Σ_i w_i   over a minibatch
             = Σ_i w_i λ_i (1 - σ(±β (r_i - z_ref))) / Σ_i w_i

Class weights for unbalanced ups and downs (the paper: λ_D n_D / (λ_U n_U) in [1, 4/3]), with
n_D, n_U the weighted counts (sums of the round's weights) of the training set: the ratio
n_D / n_U is moved to the nearest end of [1, 4/3] by lowering one weight, the other staying 1:
    n_D / n_U > 4/3   ->  λ_D = (4/3) n_U / n_D,  λ_U = 1
    n_D / n_U < 1     ->  λ_D = 1,  λ_U = n_D / n_U
    otherwise         ->  λ_D = λ_U = 1

The reference log-probs of every answer are computed once, without gradients, when the trainer
starts; those of the mismatched pairs for each minibatch (they change with the minibatch).

The round's stats, for KTO:
    score           mean of ±β(r - z_ref) (+ desirable, - undesirable) over the step's answers before
                    their updates: > 0 when the policy sides with the label
    kl              mean z_ref of the step's minibatches (the mismatched-pair KL estimate); the round
                    replaces it with the KL sampled after the update when the KL guard is on
    kl_coef         β (fixed)
    policy_loss     mean L_KTO of the step's minibatches
    clipfrac        0: nothing is clipped
    eos_fraction, response_tokens   of the step's answers;  time_rollout 0;  time_score: the reference
                    pass (first step only);  time_update
`heldout_accuracy` is the share of held-out pairs (learner/dpo.py `preference_pairs`) where the
chosen answer's r is larger than the rejected one's (the round's `kto_heldout_accuracy`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from learner.dpo import (
    DPOConfig,
    answer_logprob_sums,
    encode_answers,
    implicit_reward_accuracy,
    logprob_sums_with_reference,
)
from learner.logged_feedback_trainer import LoggedFeedbackTrainer

log = logging.getLogger(__name__)


@dataclass
class KTOConfig(DPOConfig):
    """Hyperparameters of KTO on the policy LoRA: DPO's (learner/dpo.py), an example being one labelled
    answer; `minibatch_size` is also the batch the KL estimate z_ref is taken on."""

    beta: float = 0.1
    """β of the implicit reward r = logπ - logπ_ref (the paper's default; larger: stays closer to the reference)."""
    kl_backoffs_after_supervised: int | None = None
    """As `kl_backoffs` (KTO was not measured with fewer)."""


# ------------------------------------------------------------------------------------------
# The data: feedback examples -> weighted desirable / undesirable answers
# ------------------------------------------------------------------------------------------
@dataclass
class LabelledAnswer:
    messages: list[dict]
    response: str
    finish_reason: str | None
    desirable: bool
    weight: float


def labelled_answers(examples: list[dict], weights: list[float] | None = None) -> list[LabelledAnswer]:
    """Thumbs up/down as desirable/undesirable; a pairwise choice as one of each, both with its weight."""
    weights = [1.0] * len(examples) if weights is None else weights
    out = []
    for ex, w in zip(examples, weights):
        if ex["type"] == "thumbs":
            out.append(LabelledAnswer(ex["messages"], ex["response"], ex["finish_reason"], bool(ex["label"]), w))
        elif ex["type"] == "pairwise":
            out.append(LabelledAnswer(ex["messages"], ex["chosen"], ex["chosen_finish"], True, w))
            out.append(LabelledAnswer(ex["messages"], ex["rejected"], ex["rejected_finish"], False, w))
    return out


# ------------------------------------------------------------------------------------------
# The math (pure functions on tensors; tests compare them with hand-computed values)
# ------------------------------------------------------------------------------------------
def class_weights(weights: torch.Tensor, desirable: torch.Tensor) -> tuple[float, float]:
    """(λ_D, λ_U) so that λ_D n_D / (λ_U n_U) is in [1, 4/3], n the weighted counts; the larger weight is 1.
    A class that is absent keeps weight 1 (its term never appears)."""
    n_d, n_u = float(weights[desirable].sum()), float(weights[~desirable].sum())
    if n_d <= 0 or n_u <= 0:
        return 1.0, 1.0
    ratio = n_d / n_u
    if ratio > 4 / 3:
        return (4 / 3) / ratio, 1.0
    if ratio < 1:
        return 1.0, ratio
    return 1.0, 1.0


def kl_estimate(logp_mismatched: torch.Tensor, ref_mismatched: torch.Tensor) -> torch.Tensor:
    """z_ref = max(0, mean (logπ - logπ_ref)) over mismatched (prompt, answer) pairs, detached: ()."""
    return (logp_mismatched - ref_mismatched).mean().clamp(min=0).detach()


def kto_loss(logp: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, z_ref: torch.Tensor, beta: float,
             lambda_d: float, lambda_u: float, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ w_i λ_i (1 - σ(±β (r_i - z_ref))) / Σ w_i with r = logπ - logπ_ref, + for desirable answers.

    logp, ref, weights: (B,); desirable: (B,) bool. Returns (loss, ±β (r - z_ref) (B,))."""
    sign = desirable.float() * 2 - 1                                        # (B,) +1 / -1
    margin = sign * beta * ((logp - ref) - z_ref)                           # (B,)
    lam = torch.where(desirable, torch.tensor(lambda_d), torch.tensor(lambda_u))
    return (weights * lam * (1 - torch.sigmoid(margin))).sum() / weights.sum(), margin


# ------------------------------------------------------------------------------------------
# Trainer (PPOTrainer's public interface: the round runs any of them)
# ------------------------------------------------------------------------------------------
class KTOTrainer(LoggedFeedbackTrainer):
    def __init__(self, model_path: Path | str, tokenizer, cfg: KTOConfig, examples: list[dict],
                 weights: list[float] | None = None, *, init_adapter: Path | str | None = None,
                 reference_adapter: Path | str | None = None, workdir: Path | str | None = None):
        items = labelled_answers(examples, weights)
        if not items:
            raise ValueError("KTO has no labelled answers: no thumbs and no pairwise choices in the round's "
                             "training feedback")
        self.init_policy(model_path, tokenizer, cfg, init_adapter, reference_adapter=reference_adapter,
                         workdir=workdir)
        self.init_optimizer(self.policy)
        self._order: list[int] = []
        t = time.perf_counter()
        self.prompts, self.answers = encode_answers(tokenizer, [(a.messages, a.response, a.finish_reason)
                                                                for a in items], cfg.max_length)
        self.weights = torch.tensor([a.weight for a in items], dtype=torch.float32)        # (N,)
        self.desirable = torch.tensor([a.desirable for a in items])                        # (N,) bool
        self.lambda_d, self.lambda_u = class_weights(self.weights, self.desirable)
        self.policy.eval()
        _, self.ref = logprob_sums_with_reference(self.policy, self.prompts, self.answers, self.pad_id,
                                                  cfg.forward_batch_size, cfg.temperature)  # (N,)
        self._time_reference = time.perf_counter() - t
        log.info("KTO: %d desirable and %d undesirable answers, λ_D %.3f λ_U %.3f, reference log-probs in %.1f s",
                 int(self.desirable.sum()), int((~self.desirable).sum()), self.lambda_d, self.lambda_u,
                 self._time_reference)

    def heldout_accuracy(self, examples: list[dict]) -> float:
        """Share of held-out pairs whose chosen answer has the larger implicit reward r; NaN without pairs."""
        return implicit_reward_accuracy(self.policy, self.tokenizer, examples, self.cfg)

    def step(self, engine=None, prompts=None) -> dict:
        """One iteration: `examples_per_step` labelled answers in minibatches. `engine` and `prompts` are
        unused (the round passes them to every algorithm; KTO samples nothing)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        idx = self.next_indices(min(cfg.examples_per_step, len(self.weights)))
        stats = defaultdict(list)
        for i in range(0, len(idx), cfg.minibatch_size):
            mb = idx[i: i + cfg.minibatch_size]
            prompts_mb = [self.prompts[j] for j in mb]
            mismatched = [self.answers[j] for j in mb[1:] + mb[:1]]   # prompt i with the answer of item i+1
            self.policy.eval()
            lp_mis, ref_mis = logprob_sums_with_reference(self.policy, prompts_mb, mismatched, self.pad_id,
                                                          cfg.forward_batch_size, cfg.temperature)
            z_ref = kl_estimate(lp_mis, ref_mis)
            self.policy.train()
            logp = answer_logprob_sums(self.policy, prompts_mb, [self.answers[j] for j in mb], self.pad_id,
                                       cfg.temperature)                                        # (b,)
            loss, margin = kto_loss(logp, self.ref[mb], self.desirable[mb], z_ref, cfg.beta, self.lambda_d,
                                    self.lambda_u, self.weights[mb])
            self.optimise(loss)
            stats["policy_loss"].append(loss.item())
            stats["score"] += margin.tolist()
            stats["kl"].append(z_ref.item())
        return {**self.step_stats(stats, [self.answers[j] for j in idx], t0), "answers": len(idx),
                "lambda_desirable": self.lambda_d, "lambda_undesirable": self.lambda_u}
