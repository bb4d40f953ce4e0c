"""Cross-entropy of the policy's next-token distribution against a teacher's kept as its top-k tokens
plus one bucket for the rest of the vocabulary (the teacher's full distribution over Gemma's 262k
tokens would not fit in memory for every position of every text).

For one position, with the teacher's probabilities q over its top-k token ids, r = 1 - Σ q on the
rest, the policy's π and S = Σ_k π_k:

    loss = -Σ_k q_k log π_k - r log(1 - S)

the cross-entropy between the two distributions coarsened to k + 1 outcomes (each top-k token, and
everything else). Its gradient with respect to the logits is π - target, where the target is q on
the top-k tokens and π · r / (1 - S) on the rest: exactly zero when the policy equals the teacher,
whichever texts are used. So, unlike the NLL of a few sampled texts, it adds no noise and does not
teach the policy those texts by heart. loss - (the teacher's entropy over the same k + 1 outcomes)
is the KL between the coarsened distributions: >= 0, and at most the KL over the whole vocabulary.

Like learner/token_logprobs.py, the logits live in a reused buffer and the backward pass turns
that buffer into the gradient of the logits (frozen float32 head without bias); otherwise the
plain autograd path runs.
"""

from __future__ import annotations

import torch

from learner.token_logprobs import buffered_logits, buffered_weight, row_chunks, softcapped

MAX_MASS = 1 - 1e-6
"""S is kept below this, so log(1 - S) stays finite when the top-k hold almost everything."""


def teacher_top_k(logits: torch.Tensor, k: int, cap: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids (N, k), probabilities q (N, k), entropy over the k + 1 coarse outcomes (N,)) of a teacher's
    logits (N, V)."""
    logp = torch.log_softmax(softcapped(logits.float(), cap), dim=-1)
    top, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    q = top.exp()
    rest = (1 - q.sum(-1)).clamp(min=0)
    entropy = -(q * top).sum(-1) - torch.xlogy(rest, rest)
    return ids, q, entropy


def _loss_rows(logp_top: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss per row, S per row) from the policy's log-probs at the teacher's top-k."""
    mass = logp_top.exp().sum(-1).clamp(max=MAX_MASS)
    rest = (1 - q.sum(-1)).clamp(min=0)
    return -(q * logp_top).sum(-1) - rest * torch.log1p(-mass), mass


class _CoarseCrossEntropy(torch.autograd.Function):
    """loss per row of h (N, H) against (ids, q) (N, k), through the head's weight (V, H)."""

    @staticmethod
    def forward(ctx, h, weight, ids, q, cap: float | None):
        n, vocab = h.shape[0], weight.shape[0]
        buf, z, lse = buffered_logits(h, weight, 1.0, cap)
        logp_top = z.gather(1, ids) - lse.unsqueeze(1)
        loss, mass = _loss_rows(logp_top, q)
        if ctx.needs_input_grad[0]:
            ctx.buf = buf  # keeps the buffer out of the pool until this graph is gone
            ctx.shape, ctx.cap = (n, vocab), cap
            ctx.save_for_backward(weight, ids, q, lse, logp_top.exp(), mass)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        weight, ids, q, lse, p_top, mass = ctx.saved_tensors
        n, vocab = ctx.shape
        z = ctx.buf[: n * vocab].view(n, vocab)  # softcap(logits), as the forward left it
        cap = ctx.cap
        rest = (1 - q.sum(-1)).clamp(min=0)
        rest_scale = 1 - rest / (1 - mass)     # π - π·r/(1 - S) off the top-k
        for rows in row_chunks(n, vocab):
            zc, g = z[rows], grad[rows].unsqueeze(1)
            slope = 1 - (zc / cap).square() if cap else None
            zc.sub_(lse[rows].unsqueeze(1)).exp_().mul_(rest_scale[rows].unsqueeze(1) * g)
            zc.scatter_(1, ids[rows], (p_top[rows] - q[rows]) * g)   # π - q on the top-k
            if slope is not None:
                zc.mul_(slope)
        grad_h = z @ weight
        del ctx.buf  # the buffer is free for the next pass
        return grad_h, None, None, None, None


def coarse_cross_entropy(h: torch.Tensor, head: torch.nn.Module, ids: torch.Tensor, q: torch.Tensor,
                         cap: float | None = None) -> torch.Tensor:
    """Per row of h (N, H): the cross-entropy of softmax(softcap(head(h))) against the teacher's top-k
    (ids, q) (N, k) and the rest bucket. (N,)"""
    weight = buffered_weight(head, h)
    if weight is None:
        logp = torch.log_softmax(softcapped(head(h).float(), cap), dim=-1)
        return _loss_rows(logp.gather(1, ids), q)[0]
    return _CoarseCrossEntropy.apply(h, weight, ids, q, cap)
