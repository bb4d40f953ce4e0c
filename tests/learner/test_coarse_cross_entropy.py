"""The coarse cross-entropy (learner/coarse_cross_entropy.py): its value against the formula over full
softmaxes, the buffered backward pass against autograd's, a zero gradient where the policy is the
teacher, and the coarse KL between 0 and the full KL."""

from __future__ import annotations

import pytest
import torch

from learner.coarse_cross_entropy import coarse_cross_entropy, teacher_top_k

N, H, V, K = 7, 16, 300, 10


def head(seed: int) -> torch.nn.Linear:
    lin = torch.nn.Linear(H, V, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(V, H, generator=torch.Generator().manual_seed(seed)))
    lin.weight.requires_grad_(False)   # frozen float32 head without bias: the buffered path
    return lin


def hidden(seed: int) -> torch.Tensor:
    return torch.randn(N, H, generator=torch.Generator().manual_seed(seed)).requires_grad_()


@pytest.mark.parametrize("cap", [None, 5.0])
def test_the_loss_is_the_cross_entropy_of_the_coarsened_distributions(cap):
    lm = head(0)
    teacher = hidden(1).detach()
    ids, q, entropy = teacher_top_k(lm(teacher), K, cap)
    h = hidden(2)
    loss = coarse_cross_entropy(h, lm, ids, q, cap)
    logits = lm(h.detach())
    logits = torch.tanh(logits / cap) * cap if cap else logits
    p = torch.softmax(logits, -1)
    p_top, rest_p = p.gather(1, ids), 1 - p.gather(1, ids).sum(1)
    by_hand = -(q * p_top.log()).sum(1) - (1 - q.sum(1)) * rest_p.log()
    assert loss.detach() == pytest.approx(by_hand, rel=1e-4)
    # the teacher's coarse entropy, by hand from its full softmax
    t_logits = lm(teacher)
    t = torch.softmax(torch.tanh(t_logits / cap) * cap if cap else t_logits, -1)
    top = t.topk(K, -1).values
    assert entropy == pytest.approx(-(top * top.log()).sum(1) - (1 - top.sum(1)) * (1 - top.sum(1)).log(), rel=1e-4)


@pytest.mark.parametrize("cap", [None, 5.0])
def test_the_buffered_backward_equals_autograd(cap):
    lm = head(3)
    ids, q, _ = teacher_top_k(lm(hidden(4).detach()), K, cap)
    weights = torch.rand(N, generator=torch.Generator().manual_seed(5))   # an uneven upstream gradient
    h_fast = hidden(6)
    (coarse_cross_entropy(h_fast, lm, ids, q, cap) * weights).sum().backward()
    h_plain = hidden(6)
    trainable = torch.nn.Linear(H, V, bias=False)
    trainable.weight = torch.nn.Parameter(lm.weight.detach().clone())   # a trainable head: the plain path
    (coarse_cross_entropy(h_plain, trainable, ids, q, cap) * weights).sum().backward()
    assert torch.allclose(h_fast.grad, h_plain.grad, rtol=1e-4, atol=1e-6)
    assert h_fast.grad.abs().max() > 1e-3


def test_no_gradient_where_the_policy_is_the_teacher():
    """Whatever the texts: a policy equal to the teacher is not pushed anywhere (a sampled-token NLL would be)."""
    lm = head(7)
    h = hidden(8)
    ids, q, _ = teacher_top_k(lm(h.detach()), K)
    coarse_cross_entropy(h, lm, ids, q).sum().backward()
    assert h.grad.abs().max() < 1e-5
    h2 = hidden(8)
    nll = -torch.log_softmax(lm(h2), -1).gather(1, ids[:, :1]).sum()   # the teacher's likeliest tokens as samples
    nll.backward()
    assert h2.grad.abs().max() > 1e-2


def test_the_coarse_kl_lies_between_zero_and_the_full_kl():
    lm = head(9)
    teacher, student = hidden(10).detach(), hidden(11).detach()
    ids, q, entropy = teacher_top_k(lm(teacher), K)
    coarse = coarse_cross_entropy(student, lm, ids, q) - entropy
    t, s = torch.log_softmax(lm(teacher), -1), torch.log_softmax(lm(student), -1)
    full = (t.exp() * (t - s)).sum(-1)
    assert (coarse >= -1e-5).all() and (coarse <= full + 1e-5).all()
    assert coarse.mean() > 0.1
    same = coarse_cross_entropy(teacher, lm, ids, q) - entropy
    assert same.abs().max() < 1e-5
