"""LoRA adapters for the tiny model, made with peft: random, trained on examples, or answering a marker word.

    make_lora(model_path, out, seed)                  random weights: a valid adapter, nothing more
    train_lora(model_path, out, examples)             supervised steps on (messages, answer) pairs
    marker_lora(model_path, out, prompts, word)       greedy answer `word` to each prompt, by a wide margin

Only `marker_lora` is meant to change answers: a random LoRA may or may not change the greedy
answer, depending on float numerics.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner.policy_config import LORA_TARGETS
from learner.tokenization import encode_prompt

ALL_LINEAR = LORA_TARGETS
"""Every linear layer of a Llama or Gemma block: the layers the learner trains."""


def make_lora(model_path: Path, out: Path, seed: int, rank: int = 8,
              target_modules: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A PEFT LoRA (on q_proj/v_proj unless told) with random (not zero) A and B."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target_modules),
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)  # adapter_model.safetensors + adapter_config.json (+ README.md)
    return out


def _rows(tok, examples: list[tuple[list[dict], str]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids as serving renders them, answer ids + EOS) per example."""
    return [(encode_prompt(tok, messages), tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
            for messages, answer in examples]


def _loss(model, tok, batch: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens (the prompt is context only)."""
    width = max(len(p) + len(a) for p, a in batch)
    ids = torch.full((len(batch), width), tok.eos_token_id)  # (B, T)
    labels = torch.full((len(batch), width), -100)  # (B, T); -100: no loss (prompt, padding)
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
    for b, (p, a) in enumerate(batch):
        ids[b, :len(p) + len(a)] = torch.tensor(p + a)
        labels[b, len(p):len(p) + len(a)] = torch.tensor(a)
        mask[b, :len(p) + len(a)] = 1
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def _peft(model_path: Path, target_modules) -> tuple:
    tok = AutoTokenizer.from_pretrained(model_path)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path),
                           LoraConfig(r=8, lora_alpha=16, target_modules=list(target_modules), lora_dropout=0.0))
    return tok, model


def train_lora(model_path: Path, out: Path, examples: list[tuple[list[dict], str]], *, steps: int = 60,
               lr: float = 3e-3, seed: int = 0, target_modules=("q_proj", "v_proj")) -> Path:
    """Supervised steps on liked answers, 8 random examples per step."""
    torch.manual_seed(seed)
    tok, model = _peft(model_path, target_modules)
    rows = _rows(tok, examples)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = [rows[i] for i in torch.randint(len(rows), (min(8, len(rows)),), generator=g).tolist()]
        loss = _loss(model, tok, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    return out


def _min_margin(model, rows: list[tuple[list[int], list[int]]]) -> float:
    """Smallest lead, in logits, of an answer token over the runner-up, teacher-forced over all rows."""
    lead = float("inf")
    for p_ids, a_ids in rows:
        logits = model(input_ids=torch.tensor([p_ids + a_ids])).logits[0, len(p_ids) - 1:-1]  # (A, V)
        target = torch.tensor(a_ids)
        chosen = logits.gather(1, target[:, None])[:, 0]  # (A,)
        others = logits.scatter(1, target[:, None], float("-inf")).max(dim=1).values  # (A,)
        lead = min(lead, (chosen - others).min().item())
    return lead


def marker_lora(model_path: Path, out: Path, prompts: list[str], word: str = "zoo", *, margin: float = 1.0,
                max_steps: int = 400, seed: int = 0) -> Path:
    """A LoRA whose greedy answer to each of `prompts` is `word`.

    Trained until, at every step of every answer (`word`, then EOS), the right token's logit
    leads the runner-up by `margin`: greedy decoding then follows that path on any machine, since
    float differences between kernels are orders of magnitude smaller. Checked by a greedy
    generation before it is saved. Pick a word the base model cannot say, e.g. with a letter its
    training text never has ("z" for the tiny model: its logit trails the top one by ~10)."""
    torch.manual_seed(seed)
    tok, model = _peft(model_path, ALL_LINEAR)
    rows = _rows(tok, [([{"role": "user", "content": p}], word) for p in prompts])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    lead = float("-inf")
    for step in range(max_steps):
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                lead = _min_margin(model, rows)
            if lead >= margin:
                break
        model.train()
        loss = _loss(model, tok, rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
    else:
        raise RuntimeError(f"marker LoRA: the answer leads by {lead:.2f} after {max_steps} steps (wanted {margin})")
    with torch.no_grad():
        for (p_ids, a_ids), prompt in zip(rows, prompts):
            said = model.generate(torch.tensor([p_ids]), attention_mask=torch.ones(1, len(p_ids), dtype=torch.long),
                                  max_new_tokens=len(a_ids), do_sample=False, pad_token_id=tok.pad_token_id)
            text = tok.decode(said[0, len(p_ids):], skip_special_tokens=True)
            if text.strip() != word:
                raise RuntimeError(f"marker LoRA answers {prompt!r} with {text!r}, not {word!r}")
    model.save_pretrained(out)
    return out
