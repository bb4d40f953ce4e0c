"""KTO's data and loss as pure functions (the math is written out in learner/kto.py): the KTO trainer's,
and DPO's for the thumbs that make no pair (learner/dpo.py).

    labelled_answers   feedback examples -> weighted desirable / undesirable answers
    class_weights      (λ_D, λ_U) for unbalanced ups and downs
    kl_estimate        z_ref on mismatched pairs
    kto_loss           Σ w_i λ_i (1 - σ(±β (r_i - z_ref))) / Σ w_i
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
