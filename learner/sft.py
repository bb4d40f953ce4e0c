"""Supervised fine-tuning of the policy LoRA on demonstrations: (prompt ids -> answer ids).

    trainer = SFTTrainer(model_path, tokenizer, SFTConfig())          # fresh LoRA (or init_adapter=...)
    pairs = [encode_demonstration(tokenizer, messages, answer), ...]  # (prompt ids, answer ids + EOS)
    stats = trainer.train(pairs)
    trainer.save(folder)                                              # a PEFT folder for the adapter store

The loss is the mean negative log-likelihood of the answer tokens only: the prompt is context,
not something the policy should learn to write. Used by `rlhf model prepare` for the starting
adapter (the base model's own answers under the preamble) and reusable for users' demonstrations.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from learner.policy_config import LoRAConfig
from learner.policy_model import answer_logprobs, load_policy
from learner.prose_anchor import ProseAnchor
from learner.tokenization import encode_prompt, encode_response, pad_prompt_response

log = logging.getLogger(__name__)


@dataclass
class SFTConfig(LoRAConfig):
    """Hyperparameters of supervised LoRA training on demonstrations."""

    learning_rate: float = 2e-4
    """AdamW learning rate."""
    epochs: int = 2
    """Passes over the demonstrations."""
    batch_size: int = 8
    """Demonstrations per optimiser step."""
    anchor_coef: float = 5.0
    """Weight of the prose anchor (learner/prose_anchor.py) in each step's loss, when the caller sets
    one (the round does): the policy learns the demonstrations without losing the base's prose. On the
    default model's colour corrections, 1 left perplexity on the reference text 17.7 % over the base's,
    5 left it 8.9 % over (README, "Corrections with the prose anchor")."""


def encode_demonstration(tokenizer, messages: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids as serving renders them, answer ids + EOS): the answer as the chat template
    writes an assistant turn after that prompt (e.g. the Q/A transcript's leading space), without
    the template's trailing whitespace, then EOS."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    turn = full[len(prompt):] if full.startswith(prompt) else answer
    return encode_prompt(tokenizer, messages), encode_response(tokenizer, turn.rstrip(), finished=True)


def answer_nll(policy, ids: torch.Tensor, mask: torch.Tensor, answer_mask: torch.Tensor, P: int) -> torch.Tensor:
    """Mean -log π(y_t | x, y_<t) over the answer tokens of a batch (a scalar)."""
    logp = answer_logprobs(policy, ids, mask, P, 1.0, answer_mask)    # (B, R)
    return -(logp * answer_mask).sum() / answer_mask.sum().clamp(min=1.0)


class SFTTrainer:
    def __init__(self, model_path: Path | str, tokenizer, cfg: SFTConfig | None = None, *,
                 init_adapter: Path | str | None = None):
        self.cfg = cfg = cfg or SFTConfig()
        self.pad_id = tokenizer.pad_token_id
        torch.manual_seed(cfg.seed)
        self.policy = load_policy(model_path, cfg, init_adapter)
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, fused=True)
        self.rng = random.Random(cfg.seed)
        self.anchor: ProseAnchor | None = None

    def set_prose_anchor(self, anchor: ProseAnchor) -> None:
        """From now on every step also keeps the anchor's texts of the base model likely."""
        self.anchor = anchor

    def batch_loss(self, pairs: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        ids, mask, _, answer_mask, P = pad_prompt_response([p for p, _ in pairs], [a for _, a in pairs], self.pad_id)
        return answer_nll(self.policy, ids, mask, answer_mask, P)

    def train(self, pairs: list[tuple[list[int], list[int]]]) -> dict:
        """`epochs` passes over the (prompt ids, answer ids) pairs; returns each epoch's mean loss and timing."""
        cfg, start, steps, epoch_losses = self.cfg, time.perf_counter(), 0, []
        self.policy.train()
        order = list(range(len(pairs)))
        per_epoch = -(-len(pairs) // cfg.batch_size)
        for epoch in range(cfg.epochs):
            self.rng.shuffle(order)
            losses = []
            for b in range(0, len(order), cfg.batch_size):
                loss = self.batch_loss([pairs[i] for i in order[b: b + cfg.batch_size]])
                self.optimizer.zero_grad()
                total = loss + cfg.anchor_coef * self.anchor.loss(self.policy) if self.anchor is not None else loss
                total.backward()
                torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                losses.append(loss.item())
                if len(losses) % 10 == 0:
                    log.info("sft epoch %d/%d: step %d/%d, loss %.3f, %.0f s so far", epoch + 1, cfg.epochs,
                             len(losses), per_epoch, losses[-1], time.perf_counter() - start)
            steps += len(losses)
            epoch_losses.append(sum(losses) / max(1, len(losses)))
            log.info("sft epoch %d/%d: mean answer loss %.3f", epoch + 1, cfg.epochs, epoch_losses[-1])
        self.policy.eval()
        return {"examples": len(pairs), "steps": steps, "epoch_losses": epoch_losses,
                "anchor_kl": self.anchor.kl if self.anchor is not None else float("nan"),
                "seconds": time.perf_counter() - start}

    def save(self, folder: Path | str) -> Path:
        """The LoRA as a PEFT folder (adapter_model.safetensors + adapter_config.json)."""
        folder = Path(folder)
        self.policy.save_pretrained(str(folder))
        return folder
