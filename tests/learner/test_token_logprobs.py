"""chosen_logprobs: the reused-buffer path gives the plain autograd path's values and gradients,
and its logits buffers are reused, never shared by two passes still waiting for their backward.
position_kl: the KL between two rows' full next-token distributions, as full softmaxes give it."""

from __future__ import annotations

import pytest
import torch

from learner.token_logprobs import BUFFERS, chosen_logprobs, position_kl, row_chunks

VOCAB = 2**18 + 3   # Gemma-sized rows: several elementwise chunks per call


def plain_logits(h, head, temperature, cap):
    logits = head(h)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits / temperature


def plain(h, head, targets, temperature, cap):
    logits = plain_logits(h, head, temperature, cap)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def case(seed: int, rows: int = 3, cols: int = 7, hidden: int = 16):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden, VOCAB, bias=False).requires_grad_(False)
    head.weight.copy_(torch.randn(VOCAB, hidden, generator=g) * 0.5)
    h = torch.randn(rows, cols, hidden, generator=g)
    targets = torch.randint(0, VOCAB, (rows, cols), generator=g)
    upstream = torch.randn(rows, cols, generator=g)
    return head, h, targets, upstream


@pytest.mark.parametrize("temperature,cap", [(1.0, None), (0.7, None), (1.0, 30.0), (1.3, 5.0)])
def test_same_values_and_gradients_as_autograd(temperature, cap):
    head, h, targets, upstream = case(0)
    assert len(row_chunks(h.shape[0] * h.shape[1], VOCAB)) > 2
    h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
    ours = chosen_logprobs(h1, head, targets, temperature, cap)
    ref = plain(h2, head, targets, temperature, cap)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-3, atol=1e-4)  # float32 sums over 262k logits


def test_a_trainable_head_takes_the_plain_path_and_gets_its_gradient():
    head, h, targets, upstream = case(1)
    head.weight.requires_grad_(True)
    (chosen_logprobs(h, head, targets, 1.0, None) * upstream).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_buffers_are_reused_and_never_shared_by_pending_passes():
    head, h, targets, upstream = case(2)
    BUFFERS.pool.clear()
    a, b = h.clone().requires_grad_(), h.clone().requires_grad_()
    out_a = chosen_logprobs(a, head, targets)
    out_b = chosen_logprobs(b, head, targets * 0 + 5)         # a second pass before the first's backward
    assert len(BUFFERS.pool) == 2
    (out_a * upstream).sum().backward()
    (out_b * upstream).sum().backward()
    ref_a, ref_b = h.clone().requires_grad_(), h.clone().requires_grad_()
    (plain(ref_a, head, targets, 1.0, None) * upstream).sum().backward()
    (plain(ref_b, head, targets * 0 + 5, 1.0, None) * upstream).sum().backward()
    torch.testing.assert_close(a.grad, ref_a.grad, rtol=1e-3, atol=1e-4)  # float32 sums over 262k logits
    torch.testing.assert_close(b.grad, ref_b.grad, rtol=1e-3, atol=1e-4)  # float32 sums over 262k logits
    with torch.no_grad():                                       # both backwards done: both buffers free
        chosen_logprobs(h, head, targets)
        chosen_logprobs(h, head, targets)
    dropped = chosen_logprobs(h.clone().requires_grad_(), head, targets)
    del dropped                                                 # a graph dropped without backward frees its buffer
    chosen_logprobs(h.clone().requires_grad_(), head, targets).sum().backward()
    assert len(BUFFERS.pool) == 2


@pytest.mark.parametrize("temperature,cap", [(1.0, None), (0.7, 30.0)])
def test_position_kl_is_the_kl_of_the_full_softmaxes(temperature, cap):
    head, h, _, _ = case(3, rows=4, cols=3)
    h, h_ref = h.reshape(-1, h.shape[-1]), h.reshape(-1, h.shape[-1]).flip(0) * 0.8
    logp = torch.log_softmax(plain_logits(h, head, temperature, cap).double(), dim=-1)
    logq = torch.log_softmax(plain_logits(h_ref, head, temperature, cap).double(), dim=-1)
    by_hand = (logp.exp() * (logp - logq)).sum(-1).float()
    assert by_hand.min() > 0.1  # the two rows' distributions differ: there is a KL to get right
    torch.testing.assert_close(position_kl(h, h_ref, head, temperature, cap), by_hand, rtol=1e-4, atol=1e-4)
    assert position_kl(h, h, head, temperature, cap).abs().max() < 1e-4  # no KL from a distribution to itself
    head.weight.requires_grad_(True)  # the plain path: same values
    torch.testing.assert_close(position_kl(h, h_ref, head, temperature, cap), by_hand, rtol=1e-4, atol=1e-4)
