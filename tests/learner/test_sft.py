"""Supervised LoRA steps on demonstrations (learner/sft.py), on the tiny model: the loss counts
answer tokens only, training moves the LoRA and lowers the answers' loss, and the prose anchor
keeps the base's prose while it does."""

from __future__ import annotations

import math

import torch

from learner.prose_anchor import ProseAnchor
from learner.sft import SFTConfig, SFTTrainer, encode_demonstration
from learner.tokenization import load_tokenizer
from tests.learner.test_prose_anchor import TEXTS

PAIRS = [("What colour is the sky?", "The sky is blue."), ("Hello!", "Hello! How can I help you today?")]


def encoded(tok):
    return [encode_demonstration(tok, [{"role": "user", "content": q}], a) for q, a in PAIRS]


def test_the_loss_is_the_answer_tokens_mean_nll(tiny_model_path):
    """The same number as transformers' own loss with the prompt's labels masked out (-100)."""
    tok = load_tokenizer(tiny_model_path)
    trainer = SFTTrainer(tiny_model_path, tok, SFTConfig())
    p, a = encoded(tok)[0]
    ids = torch.tensor([p + a])
    labels = ids.clone()
    labels[0, : len(p)] = -100
    with torch.no_grad():
        ours = trainer.batch_loss([(p, a)])
        reference = trainer.policy(input_ids=ids, labels=labels).loss
    assert torch.allclose(ours, reference, atol=1e-4), (ours, reference)


def test_training_moves_the_lora_and_lowers_the_answers_loss(tiny_model_path, tmp_path):
    tok = load_tokenizer(tiny_model_path)
    trainer = SFTTrainer(tiny_model_path, tok, SFTConfig(learning_rate=1e-2, epochs=15, batch_size=2))
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    pairs = encoded(tok)
    with torch.no_grad():
        loss_before = trainer.batch_loss(pairs).item()
    stats = trainer.train(pairs)
    with torch.no_grad():
        loss_after = trainer.batch_loss(pairs).item()
    assert stats["steps"] == 15
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)
    changed = [n for n, p in trainer.policy.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed and all("lora" in n for n in changed)
    folder = trainer.save(tmp_path / "sft")
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()


def test_the_prose_anchor_keeps_the_base_prose_while_the_answers_are_learned(tiny_model_path):
    """The same steps with and without the prose anchor: both learn the answers, and with it the
    policy's KL from the base on the anchor's texts ends far lower."""
    tok = load_tokenizer(tiny_model_path)
    texts = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    pairs = encoded(tok)

    def trained(anchor_coef: float) -> tuple[dict, float, float]:
        trainer = SFTTrainer(tiny_model_path, tok, SFTConfig(learning_rate=1e-2, epochs=15, batch_size=2,
                                                              anchor_coef=anchor_coef))
        if anchor_coef > 0:
            trainer.set_prose_anchor(ProseAnchor(trainer.policy, texts, batch=len(texts)))
        with torch.no_grad():
            loss_before = trainer.batch_loss(pairs).item()
        stats = trainer.train(pairs)
        with torch.no_grad():
            loss_after = trainer.batch_loss(pairs).item()
            drift = ProseAnchor(trainer.policy, texts, batch=len(texts))
            drift.loss(trainer.policy)
        assert loss_after < 0.5 * loss_before, (anchor_coef, loss_before, loss_after)
        return stats, drift.kl, loss_after

    free, free_kl, _ = trained(0.0)
    held, held_kl, _ = trained(5.0)
    assert math.isnan(free["anchor_kl"]) and held["anchor_kl"] >= 0
    print(f"\nKL from the base on the texts: {free_kl:.4f} without the anchor, {held_kl:.4f} with it")
    assert held_kl < 0.5 * free_kl, (held_kl, free_kl)
