"""The policy model: a trainable LoRA on the frozen base, and the log-probs every algorithm needs.

    policy     = load_policy(model_path, cfg, init_adapter, reference_adapter)
                                                              frozen base + LoRA (fresh, or the serving one)
    reference  = the starting adapter (policy@v0, the SFT model) as a second, frozen LoRA on the same
                 base when the round's start descends from it; else the same model with the adapter
                 switched off (peft `disable_adapter()`). No copy of the base either way.
    as_reference(policy)                                      a context in which the policy is the reference
    answer_logprobs(policy, ids, mask, P, T, answer_mask)     log π(y_t | x, y_<t) per answer token (the LM head
                                                              on the mask's real tokens only)
    logprobs_with_reference(...)                              policy and reference, rows of similar length together
    kl_to_reference(...)                                      each answer's KL to the reference, exact per token
    share_frozen_weights(src, dst)                            one copy of the frozen base for policy, critic, RM

Batches are prompt-left-padded to column P and answer-right-padded (learner/tokenization.py
`pad_prompt_response`); `trimmed` drops the columns that are padding in every row of a chunk.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from learner.policy_config import LoRAConfig
from learner.token_logprobs import chosen_logprobs, position_kl
from learner.tokenization import position_ids


def _frozen_params(module: nn.Module) -> dict[str, tuple[nn.Module, str, nn.Parameter]]:
    """Frozen parameters by a name that ignores peft's wrapping (`base_model.model.`, `.base_layer`)."""
    out = {}
    for mod_name, mod in module.named_modules():
        for pname, p in mod._parameters.items():
            if p is None or p.requires_grad:
                continue
            name = f"{mod_name}.{pname}".replace(".base_layer", "")
            for prefix in ("base_model.model.", "model."):
                if name.startswith(prefix):
                    name = name[len(prefix):]
            out[name] = (mod, pname, p)
    return out


@torch.no_grad()
def share_frozen_weights(src: nn.Module, dst: nn.Module) -> int:
    """Point dst's frozen base weights at src's identical tensors; returns how many were shared.

    Policy, critic and reward model all run on the same frozen base: one copy in memory
    instead of three (Gemma 3 270M in fp32: 1.1 GB instead of 3.2 GB). Only tensors with the
    same name, shape and values are shared, so a different checkpoint is left alone."""
    have = {n: p for n, (_, _, p) in _frozen_params(src).items()}
    shared = 0
    for name, (mod, pname, p) in _frozen_params(dst).items():
        q = have.get(name)
        if q is not None and q is not p and q.shape == p.shape and q.dtype == p.dtype and torch.equal(q, p):
            mod._parameters[pname] = q
            shared += 1
    return shared



REFERENCE = "reference"   # the frozen reference LoRA's name inside the policy's PeftModel
POLICY = "default"        # the trainable policy LoRA's name (peft's default; saved at the folder's top)


def load_policy(model_path: Path | str, cfg: LoRAConfig, init_adapter: Path | str | None = None,
                reference_adapter: Path | str | None = None):
    """Frozen base + trainable LoRA: a fresh one, or the adapter now serving to continue from; with
    `reference_adapter`, that LoRA too, frozen, as the reference (`as_reference`)."""
    base = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    if init_adapter is not None:
        policy = PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True)
    else:
        policy = get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules=list(cfg.target_modules), bias="none"))
    if reference_adapter is not None:
        policy.load_adapter(str(reference_adapter), adapter_name=REFERENCE, is_trainable=False)
        policy.set_adapter(POLICY)  # the policy stays the active, trainable adapter
    return policy


@contextmanager
def as_reference(policy):
    """Within this context the policy computes the reference: its frozen reference LoRA when it has
    one, else the base (adapter off). The policy LoRA is active and trainable again afterwards."""
    if REFERENCE not in policy.peft_config:
        with policy.disable_adapter():
            yield
        return
    policy.set_adapter(REFERENCE, inference_mode=True)
    try:
        yield
    finally:
        policy.set_adapter(POLICY)


def answer_logprobs(policy, ids: torch.Tensor, mask: torch.Tensor, P: int, temperature: float,
                    answer_mask: torch.Tensor | None = None) -> torch.Tensor:
    """log π(y_t | x, y_<t) at temperature T for each answer token: (B, R).

    Runs the decoder, then the LM head only on the answer positions: with Gemma's 262k-token
    vocabulary, logits over the prompt would cost more memory than the whole model (and the
    answers' logits live in a reused buffer: learner/token_logprobs.py). With `answer_mask` (B, R)
    the head runs on its real tokens only, and padding gets 0."""
    lm = policy.get_base_model()
    head, cap = lm.get_output_embeddings(), getattr(lm.config, "final_logit_softcapping", None)
    h, targets = answer_hidden(policy, ids, mask, P), ids[:, P:]                    # (B, R, H), (B, R)
    if answer_mask is None:
        return chosen_logprobs(h, head, targets, temperature, cap)                  # (B, R)
    real = answer_mask[:, : targets.shape[1]].bool()
    return torch.zeros(real.shape).masked_scatter(real, chosen_logprobs(h[real], head, targets[real],
                                                                        temperature, cap))


def answer_hidden(policy, ids: torch.Tensor, mask: torch.Tensor, P: int) -> torch.Tensor:
    """The decoder's last hidden state at the positions that predict each answer token: (B, R, H)."""
    lm = policy.get_base_model()                                     # the LoRA layers live inside it
    h = lm.get_decoder()(input_ids=ids, attention_mask=mask,
                         position_ids=position_ids(mask), use_cache=False).last_hidden_state  # (B, P+R, H)
    return h[:, P - 1: -1]


def trimmed(ids: torch.Tensor, mask: torch.Tensor, P: int, rows: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """These rows of a prompt-left-padded, answer-right-padded batch, without the columns that are
    padding in every one of them: (ids, mask, column where the answers now start). Rows of
    similar length then cost what their own tokens cost, not the longest prompt and answer of
    the whole batch."""
    m = mask[rows]
    real = m.any(0).nonzero().squeeze(-1)
    first = min(int(real[0]), P - 1) if real.numel() else P - 1
    last = max(int(real[-1]) + 1, P + 1) if real.numel() else P + 1
    return ids[rows][:, first:last], m[:, first:last], P - first


def by_length(mask: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Row indices in chunks of `size`, rows of similar length together (for no-grad passes)."""
    order = torch.argsort(mask.sum(1), stable=True)
    return list(order.split(size))


@torch.no_grad()
def logprobs_with_reference(policy, ids: torch.Tensor, mask: torch.Tensor, P: int, response_mask: torch.Tensor,
                            chunk: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Policy and reference (`as_reference`) log-probs (B, R) of every answer token, zero on padding;
    computed `chunk` rows at a time, rows of similar length together, each chunk trimmed."""
    logprobs, ref_logprobs = torch.zeros_like(response_mask), torch.zeros_like(response_mask)
    for rows in by_length(mask, chunk):
        b_ids, b_mask, b_P = trimmed(ids, mask, P, rows)
        R = b_ids.shape[1] - b_P
        real = response_mask[rows, :R]
        logprobs[rows, :R] = answer_logprobs(policy, b_ids, b_mask, b_P, temperature, real)
        with as_reference(policy):
            ref_logprobs[rows, :R] = answer_logprobs(policy, b_ids, b_mask, b_P, temperature, real)
    return logprobs, ref_logprobs


@torch.no_grad()
def kl_to_reference(policy, ids: torch.Tensor, mask: torch.Tensor, P: int, response_mask: torch.Tensor,
                    chunk: int, temperature: float) -> torch.Tensor:
    """KL(policy ‖ reference) of each answer (B,): Σ_t KL(π(·|x, y_<t) ‖ π_ref(·|x, y_<t)) over its tokens,
    each term over the whole vocabulary. For answers sampled from the policy it has the expectation of
    Σ_t log π/π_ref(y_t) and a smaller variance (bench/kl_estimators.py). The LM head runs on the
    answers' real tokens only."""
    lm = policy.get_base_model()
    head, cap = lm.get_output_embeddings(), getattr(lm.config, "final_logit_softcapping", None)
    kl = torch.zeros(ids.shape[0])
    for rows in by_length(mask, chunk):
        b_ids, b_mask, b_P = trimmed(ids, mask, P, rows)
        real = response_mask[rows, : b_ids.shape[1] - b_P].bool()
        h = answer_hidden(policy, b_ids, b_mask, b_P)[real]
        with as_reference(policy):
            h_ref = answer_hidden(policy, b_ids, b_mask, b_P)[real]
        per_token = torch.zeros(real.shape)
        per_token[real] = position_kl(h, h_ref, head, temperature, cap)
        kl[rows] = per_token.sum(1)
    return kl
