"""What every LoRA the learner trains shares in its hyperparameters, and what every policy algorithm shares.

    LoRAConfig        the adapter and its optimiser: rank, scaling, target layers, learning rate, clipping, seed
    PolicyConfig      + what makes the algorithms comparable and the gate fair to each: iterations per round,
                      the answer length and temperature of sampling and of training log-probs, the KL guard,
                      the missing-EOS penalty, the no-grad batch size

Each algorithm's config (learner/ppo.py, rloo.py, dpo.py, online_dpo.py, kto.py) and the supervised
steps' (learner/sft.py) add their own fields, or give a shared one another default.
"""

from __future__ import annotations

from dataclasses import dataclass

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoRAConfig:
    """A LoRA adapter the learner trains, and its optimiser."""

    lora_r: int = 8
    """Rank of a new LoRA (an adapter to continue from keeps its own rank)."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    target_modules: tuple[str, ...] = LORA_TARGETS
    """Linear layers that get LoRA weights (vLLM serves LoRA on these for Llama and Gemma)."""
    learning_rate: float = 3e-4
    """AdamW learning rate."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    seed: int = 0
    """Seed of the LoRA initialisation, shuffling and sampling."""


@dataclass
class PolicyConfig(LoRAConfig):
    """The policy LoRA, trained by one of the round's algorithms (the learner's settings, not the operator's)."""

    steps: int = 8
    """Iterations per round."""
    max_new_tokens: int = 48
    """Longest answer sampled (in rollouts and by the gate); answers cut off here get the missing-EOS penalty."""
    temperature: float = 1.0
    """Sampling temperature; training log-probs use the same one (logits / T)."""
    kl_stop_fraction: float = 0.8
    """KL guard (learner/kl_guard.py): when an update pushes the policy's sampled KL to the reference
    above this share of the operator's `kl_budget` (and above the previous iteration's), the round
    undoes that update (0 disables the guard)."""
    kl_backoffs: int = 2
    """Undone updates after which the KL guard halves the learning rate and goes on; the next one
    ends the iterations with the policy from before it."""
    kl_backoffs_after_supervised: int | None = None
    """`kl_backoffs` in a round whose policy stage starts from the supervised steps' policy (None: the same)."""
    kl_prompts: int = 16
    """Prompts sampled once each to measure the KL after an update, for algorithms that sample
    nothing themselves (DPO, KTO)."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the (normalised) score of an answer cut off without EOS."""
    anchor_coef: float = 1.0
    """Weight of the prose anchor (learner/prose_anchor.py) in every update's loss: the policy's KL from
    the base's next-token distribution on plain text the base model wrote, beyond `anchor_free_kl`;
    0 turns it off."""
    anchor_free_kl: float = 0.02
    """Nats per position the policy may drift from the base on the anchor's texts before the anchor
    pulls (about 2 % of perplexity on them)."""
    anchor_texts: int = 32
    """Texts the base model writes for the prose anchor, once per learner (they depend on the base only)."""
    anchor_tokens: int = 48
    """Longest prose-anchor text, in tokens."""
    anchor_batch: int = 2
    """Prose-anchor texts per update."""
    forward_batch_size: int = 8
    """Sequences per no-grad forward pass (scoring, reference log-probs, the gate's KL); Gemma's 262k-token
    vocabulary makes the logits of 8 answers of 48 tokens 400 MB."""
