"""log π(token) through a large LM head, in logits buffers that are reused instead of reallocated.

Gemma 3's head has 262k outputs: the logits of one minibatch of 8 answers x 48 tokens are 400 MB,
and autograd's softcap, log-softmax and their gradients add several more tensors of that size.
glibc serves every block above 32 MB with a fresh mmap and unmaps it on free, so each pass
faults gigabytes of pages in again: measured on the 2-core VM (Gemma 3 270M, one forward +
backward of 8 answers), 600k-830k page faults per pass, 2-2.5 s alone and 7-11 s once the vLLM
rollout engine was up beside it.

Here the logits are written into a buffer kept from pass to pass, softcap, temperature and
log-softmax happen in place, and the backward pass turns the same buffer into the gradient of
the logits before one matmul with the head's weights. Elementwise work runs a few rows at a
time, so its temporaries are small blocks glibc keeps in its heap. The head's weights must be
frozen (the policy trains LoRA adapters only); otherwise, or for a head with a bias, the plain
autograd path runs. `position_kl` (no gradient) puts the policy's and the reference's logits in two
such buffers for the KL between their whole next-token distributions.
"""

from __future__ import annotations

import sys

import torch

CHUNK_BYTES = 8 * 2**20
"""Elementwise work is done this many bytes of logits at a time (below glibc's mmap threshold)."""


class LogitsBuffers:
    """Flat float32 buffers for (tokens, vocabulary) logits. A buffer is free again when nothing but
    the pool refers to it: a pass that kept it for its backward releases it when its graph goes."""

    def __init__(self):
        self.pool: list[torch.Tensor] = []

    def take(self, numel: int) -> torch.Tensor:
        for i in range(len(self.pool)):
            # references: the pool's list and getrefcount's argument; more means a graph holds it
            if sys.getrefcount(self.pool[i]) == 2:
                if self.pool[i].numel() < numel:
                    self.pool[i] = torch.empty(0)  # free the smaller one before allocating: never both
                    self.pool[i] = torch.empty(numel)
                return self.pool[i]
        self.pool.append(torch.empty(numel))
        return self.pool[-1]


BUFFERS = LogitsBuffers()


def row_chunks(n_rows: int, vocab: int) -> list[slice]:
    step = max(1, CHUNK_BYTES // (4 * vocab))
    return [slice(a, min(a + step, n_rows)) for a in range(0, n_rows, step)]


def buffered_logits(h: torch.Tensor, weight: torch.Tensor, temperature: float, cap: float | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the buffer, z = softcap(h W^T) / T in it (N, V), logsumexp of each row of z (N,))."""
    n, vocab = h.shape[0], weight.shape[0]
    buf = BUFFERS.take(n * vocab)
    z = buf[: n * vocab].view(n, vocab)
    torch.mm(h, weight.t(), out=z)
    lse = torch.empty(n)
    for rows in row_chunks(n, vocab):
        zc = z[rows]
        if cap:
            zc.div_(cap).tanh_().mul_(cap)
        if temperature != 1.0:
            zc.div_(temperature)
        lse[rows] = torch.logsumexp(zc, dim=-1)
    return buf, z, lse


class _ChosenLogProb(torch.autograd.Function):
    """log softmax(softcap(h W^T) / T) at the chosen token, for rows of h: (N, H) -> (N,)."""

    @staticmethod
    def forward(ctx, h, weight, targets, temperature: float, cap: float | None):
        n, vocab = h.shape[0], weight.shape[0]
        buf, z, lse = buffered_logits(h, weight, temperature, cap)
        chosen = z.gather(1, targets.unsqueeze(1)).squeeze(1)
        if ctx.needs_input_grad[0]:
            ctx.buf = buf  # keeps the buffer out of the pool until this graph is gone
            ctx.shape = (n, vocab)
            ctx.temperature, ctx.cap = temperature, cap
            ctx.save_for_backward(weight, targets, lse)
        return chosen - lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        weight, targets, lse = ctx.saved_tensors
        n, vocab = ctx.shape
        z = ctx.buf[: n * vocab].view(n, vocab)  # softcap(logits) / T, as the forward left it
        T, cap = ctx.temperature, ctx.cap
        for rows in row_chunks(n, vocab):
            zc, g = z[rows], grad[rows].unsqueeze(1)
            # d softcap(x)/dx = 1 - (softcap(x)/cap)^2, from the values still in the buffer
            slope = 1 - (zc * (T / cap)).square_() if cap else None
            zc.sub_(lse[rows].unsqueeze(1)).exp_().mul_(-g)        # -g·softmax
            zc.scatter_add_(1, targets[rows].unsqueeze(1), g)      # + g at the chosen token
            if T != 1.0:
                zc.div_(T)
            if slope is not None:
                zc.mul_(slope)
        grad_h = z @ weight
        del ctx.buf  # the buffer is free for the next pass
        return grad_h, None, None, None, None


@torch.no_grad()
def position_kl(h: torch.Tensor, h_ref: torch.Tensor, head: torch.nn.Module, temperature: float = 1.0,
                cap: float | None = None) -> torch.Tensor:
    """KL(softmax(z) ‖ softmax(z_ref)) over the whole vocabulary at each row, z = softcap(head(h)) / T
    and z_ref the same of h_ref: (N, H) twice -> (N,). Both rows' logits sit in reused buffers."""
    weight = buffered_weight(head, h)
    if weight is None:
        logp = torch.log_softmax(softcapped(head(h).float(), cap) / temperature, dim=-1)
        logq = torch.log_softmax(softcapped(head(h_ref).float(), cap) / temperature, dim=-1)
        return (logp.exp() * (logp - logq)).sum(-1)
    _buf, z, lse = buffered_logits(h, weight, temperature, cap)
    _buf_ref, z_ref, lse_ref = buffered_logits(h_ref, weight, temperature, cap)  # a second buffer: _buf is held
    kl = torch.empty(h.shape[0])
    for rows in row_chunks(h.shape[0], weight.shape[0]):
        logp = z[rows] - lse[rows].unsqueeze(1)
        logq = z_ref[rows] - lse_ref[rows].unsqueeze(1)
        kl[rows] = (logp.exp() * (logp - logq)).sum(-1)
    return kl


def softcapped(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return torch.tanh(logits / cap) * cap if cap else logits


def buffered_weight(head: torch.nn.Module, h: torch.Tensor) -> torch.Tensor | None:
    """The head's weight when the buffered passes apply (a frozen float32 weight, no bias, float32
    hidden states); None: use plain autograd."""
    weight = getattr(head, "weight", None)
    plain = (weight is None or weight.requires_grad or getattr(head, "bias", None) is not None
             or weight.dtype != torch.float32 or h.dtype != torch.float32)
    return None if plain else weight


def chosen_logprobs(h: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, temperature: float = 1.0,
                    cap: float | None = None) -> torch.Tensor:
    """log softmax(softcap(head(h)) / temperature) at `targets`: h (..., H), targets (...) -> (...)."""
    weight = buffered_weight(head, h)
    if weight is None:
        logits = softcapped(head(h).float(), cap)
        if temperature != 1.0:
            logits = logits / temperature
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    shape = targets.shape
    out = _ChosenLogProb.apply(h.reshape(-1, h.shape[-1]), weight, targets.reshape(-1), temperature, cap)
    return out.view(shape)
