"""The prose anchor (learner/prose_anchor.py) on the tiny model: its loss is the policy's mean KL per
position from the base's coarsened next-token distribution on the base model's texts beyond a free
drift, its gradient zero at the base, and updates on it bring a policy that drifted back towards the
base's prose; the texts come from the real vLLM engine."""

from __future__ import annotations

import math

import pytest
import torch

from learner.policy_config import PolicyConfig
from learner.policy_model import load_policy
from learner.policy_trainer import PolicyTrainer
from learner.prose_anchor import TOP_K, ProseAnchor, sample_prose
from learner.rollout import RolloutEngine
from learner.tokenization import load_tokenizer

# texts of the tiny model's vocabulary, of different lengths (the batch is padded)
TEXTS = ["The harbour is quiet in the morning.", "Cats sleep.", "A good recipe is a small promise to the cook."]


@pytest.fixture(scope="module")
def texts(tiny_model_path):
    tok = load_tokenizer(tiny_model_path)
    return [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


def coarse_by_hand(model, text: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, KL) per position of the model against the base, each coarsened to the base's
    top TOP_K tokens and the rest, from both models' full logits (not the learner's path)."""
    row = torch.tensor([text])
    p = torch.softmax(model(input_ids=row).logits[0, :-1].float(), -1)
    with model.disable_adapter():
        b = torch.softmax(model(input_ids=row).logits[0, :-1].float(), -1)
    q, ids = b.topk(TOP_K, -1)
    p_top = p.gather(1, ids)
    q_rest, p_rest = 1 - q.sum(1), 1 - p_top.sum(1)
    ce = -(q * p_top.log()).sum(1) - q_rest * p_rest.log()
    entropy = -(q * q.log()).sum(1) - q_rest * q_rest.log()
    return ce, ce - entropy


def drift(policy, seed: int = 0) -> None:
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(seed))


def test_the_loss_is_the_coarse_kl_per_position_batch_by_batch(tiny_model_path, texts):
    policy = load_policy(tiny_model_path, PolicyConfig())
    drift(policy)
    anchor = ProseAnchor(policy, texts, batch=2)                 # batches: texts 0-1, then text 2
    first, second = anchor.loss(policy), anchor.loss(policy)
    with torch.no_grad():
        _, kl = zip(*(coarse_by_hand(policy, t) for t in texts))
    assert first.item() == pytest.approx(float(torch.cat(kl[:2]).mean()), rel=1e-4)
    assert second.item() == pytest.approx(float(kl[2].mean()), rel=1e-4)
    assert first.requires_grad
    assert anchor.kl == pytest.approx((first.item() + second.item()) / 2, rel=1e-6)


def test_drift_within_the_free_kl_costs_nothing_and_beyond_it_pulls_as_before(tiny_model_path, texts):
    policy = load_policy(tiny_model_path, PolicyConfig())
    drift(policy)
    kl = ProseAnchor(policy, texts, batch=4).loss(policy).item()
    lora_b = [p for name, p in policy.named_parameters() if "lora_B" in name]

    def gradient(free_kl: float) -> tuple[float, list[torch.Tensor]]:
        policy.zero_grad()
        loss = ProseAnchor(policy, texts, batch=4, free_kl=free_kl).loss(policy)
        if loss.requires_grad:
            loss.backward()
        return loss.item(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in lora_b]

    inside, g_inside = gradient(1.01 * kl)
    assert inside == 0.0 and all(float(g.abs().max()) == 0.0 for g in g_inside)
    beyond, g_beyond = gradient(0.5 * kl)
    _, g_full = gradient(0.0)
    assert beyond == pytest.approx(0.5 * kl, rel=1e-4)
    assert all(torch.allclose(a, b) for a, b in zip(g_beyond, g_full)) and float(g_full[0].abs().max()) > 0


def test_at_the_base_the_kl_is_zero_and_nothing_moves(tiny_model_path, texts):
    """A policy that is the base (fresh LoRA) gets no gradient from the anchor: it neither pulls nor
    adds noise to the algorithm's updates, and cannot learn the texts by heart."""
    policy = load_policy(tiny_model_path, PolicyConfig())       # fresh LoRA: B = 0, the base exactly
    anchor = ProseAnchor(policy, texts, batch=4)
    loss = anchor.loss(policy)
    if loss.requires_grad:                                       # an exact 0 comes without a graph
        loss.backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p)
             for name, p in policy.named_parameters() if "lora_B" in name]
    assert grads and max(float(g.abs().max()) for g in grads) < 1e-6
    assert anchor.kl == pytest.approx(0.0, abs=1e-6)
    policy.zero_grad()                                           # the sampled tokens' NLL would move it
    row = torch.tensor([texts[0]])
    nll = -torch.log_softmax(policy(input_ids=row).logits[0, :-1], -1).gather(1, row[0, 1:, None]).mean()
    nll.backward()
    assert max(float(p.grad.abs().max()) for name, p in policy.named_parameters() if "lora_B" in name) > 1e-4


def test_a_restarted_anchor_keeps_the_texts_and_base_and_starts_again(tiny_model_path, texts):
    """The next round reuses the texts and the base distributions, from the first batch, with no estimates."""
    policy = load_policy(tiny_model_path, PolicyConfig())
    anchor = ProseAnchor(policy, texts, batch=2)
    first = anchor.loss(policy).item()
    anchor.loss(policy)
    again = anchor.restarted()
    assert again.texts is anchor.texts and again.base is anchor.base and math.isnan(again.kl)
    assert again.loss(policy).item() == pytest.approx(first, rel=1e-6)
    assert len(anchor.kls) == 2                                  # the old round's estimates stay its own


def test_the_kl_lies_between_zero_and_the_exact_kl_on_the_texts(tiny_model_path, texts):
    policy = load_policy(tiny_model_path, PolicyConfig())
    anchor = ProseAnchor(policy, texts, batch=4)
    assert math.isnan(anchor.kl)                                 # no update yet
    drift(policy)
    anchor.loss(policy)
    assert 0.01 < anchor.kl <= exact_kl(policy, texts, every_position=False) + 1e-6


def exact_kl(policy, texts: list[list[int]], every_position: bool = True) -> float:
    """KL(base || policy) per position over the whole vocabulary, at every position of these texts (or
    only those that predict one of their tokens)."""
    end = None if every_position else -1
    with torch.no_grad():
        rows = [torch.tensor([t]) for t in texts]
        logp = [torch.log_softmax(policy(input_ids=r).logits[0, :end].float(), -1) for r in rows]
        with policy.disable_adapter():
            base = [torch.log_softmax(policy(input_ids=r).logits[0, :end].float(), -1) for r in rows]
    kls = [(b.exp() * (b - p)).sum(-1) for b, p in zip(base, logp)]
    return float(torch.cat(kls).mean())


def base_samples(policy, tok, n: int, tokens: int) -> list[list[int]]:
    """n texts the base model writes from <bos> (transformers' sampler, seeded)."""
    torch.manual_seed(0)
    with torch.no_grad(), policy.disable_adapter():
        out = policy.generate(input_ids=torch.full((n, 1), tok.bos_token_id), do_sample=True, max_new_tokens=tokens,
                              min_new_tokens=tokens, pad_token_id=tok.pad_token_id)
    return out.tolist()


def test_updates_on_the_anchor_bring_a_drifted_policy_back_to_the_base(tiny_model_path):
    """The anchor alone (the algorithm's loss 0) on texts the base model wrote: the exact KL to the
    base, over the whole vocabulary at every position of other base texts, falls below half of
    where the drift left it."""
    tok = load_tokenizer(tiny_model_path)
    cfg = PolicyConfig(learning_rate=3e-3, anchor_coef=1.0, anchor_batch=8)
    trainer = PolicyTrainer()
    trainer.init_policy(tiny_model_path, tok, cfg, None)
    trainer.init_optimizer(trainer.policy)
    samples = base_samples(trainer.policy, tok, 40, 16)
    train, held = samples[:32], samples[32:]
    assert exact_kl(trainer.policy, held) == pytest.approx(0.0, abs=1e-6)
    drift(trainer.policy)
    drifted = exact_kl(trainer.policy, held)
    assert drifted > 0.05
    trainer.set_prose_anchor(ProseAnchor(trainer.policy, train, cfg.anchor_batch))
    for _ in range(40):
        trainer.optimise(torch.zeros(()))
    assert exact_kl(trainer.policy, held) < 0.5 * drifted


def test_the_texts_come_from_the_base_model_in_the_real_engine(tiny_model_path):
    tok = load_tokenizer(tiny_model_path)
    engine = RolloutEngine(tiny_model_path, max_model_len=512, kv_cache_gb=0.5)
    try:
        texts = sample_prose(engine, tok, 6, 12, seed=1)
        again = sample_prose(engine, tok, 6, 12, seed=1)
    finally:
        engine.close()
    assert texts and all(t[0] == tok.bos_token_id and 2 <= len(t) <= 13 for t in texts)
    assert all(tok.eos_token_id not in t for t in texts)
    assert texts == again                                        # seeded
    assert len({tuple(t) for t in texts}) > 1                    # sampled, not one greedy text
