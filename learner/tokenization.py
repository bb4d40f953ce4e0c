"""Turning prompts and answers into token ids, the same way serving does, and padding them.

Serving renders the chat template to text and tokenizes it with `add_special_tokens=False`
(adding `<bos>` only if the template did not), and stops on EOS or the model card's stop
strings; the learner does exactly the same, so the reward model and the policy see what
serving saw. Rollouts hand vLLM token ids, never text.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from rlhf.models.card import model_card


def load_tokenizer(model_path: Path | str):
    tok = AutoTokenizer.from_pretrained(str(model_path))
    if tok.pad_token_id is None:
        raise ValueError("the model's tokenizer has no pad token; the learner needs EOS distinct from pad")
    return tok


def stop_strings(model_path: Path | str) -> list[str]:
    """Stop strings serving uses for this model (its model card; e.g. the base Gemma's Q/A transcript)."""
    return list(model_card(Path(model_path)).get("stop", []))


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Chat template -> ids with exactly one <bos> in front (as serving's `engine.render`)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def encode_response(tokenizer, text: str, finished: bool) -> list[int]:
    """An answer's text as the reward model reads it: its tokens, then EOS if it finished.

    Logged answers and rollouts both go through this (from their text), so the reward model
    sees them the same way whether serving stopped on EOS or on a stop string."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if finished and tokenizer.eos_token_id is not None else ids


def encode_feedback_answer(tokenizer, messages: list[dict], response: str, finish_reason: str | None,
                           max_length: int) -> tuple[list[int], list[int]]:
    """A logged answer as the learner trains on it: (prompt ids, answer ids), the answer with EOS if
    serving stopped on it (finish_reason "stop"), cut to `max_length`, the prompt cut from the left
    so both fit in `max_length`."""
    p = encode_prompt(tokenizer, messages)
    r = encode_response(tokenizer, response, finished=finish_reason == "stop")[:max_length]
    return p[max(0, len(p) + len(r) - max_length):], r


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and attention mask, sequences left-aligned."""
    width = max(1, max(map(len, seqs)))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def pad_pairs(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """(prompt, answer) id lists -> right-padded ids (B, T), attention mask (B, T), answer mask (B, T)."""
    ids, mask = pad_right([p + a for p, a in pairs], pad_id)
    answer = torch.zeros_like(mask)
    for i, (p, a) in enumerate(pairs):
        answer[i, len(p): len(p) + len(a)] = 1
    return ids, mask, answer


PASS_COST_PER_LAYER = 3.6e8
"""Fixed cost of one more forward + backward pass, per decoder layer, in units of (parameters x
tokens) of work. Measured on the 2-core machine: Gemma 3 270M (18 layers, ~100M parameters
outside the embedding) steps fastest on feedback-sized batches when a pass costs ~64 padded
tokens (0.83x the time of one batch padded to the longest), the 2-layer tiny model when it
never splits (a pass costs more there than the padding it saves)."""


def pass_cost_tokens(model, layers: int) -> int:
    """What one more pass of this model costs, in padded tokens (for `length_buckets`)."""
    params = sum(p.numel() for p in model.parameters())
    params -= sum(p.numel() for p in model.get_input_embeddings().parameters())
    return max(1, round(PASS_COST_PER_LAYER * layers / max(params, 1)))


def length_buckets(lengths: list[int], row_cost: int, max_rows: int | None = None) -> list[list[int]]:
    """Split sequences into groups of similar length, each padded to its own longest: indices per group.

    Padding a whole batch to its longest sequence wastes a third of the work on feedback-sized
    texts. Sorted by length, the groups are contiguous runs chosen to minimise
    Σ_groups (rows × longest + row_cost): `row_cost` is what one more forward pass costs in
    padded tokens (its fixed overhead), so a cheap model per token (the tiny one) keeps one
    group and a large one splits. `max_rows` caps a group's size (memory). Exact dynamic
    programme over the sorted lengths, O(n²)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    cap = n if max_rows is None else max(1, max_rows)
    best = [0.0] + [float("inf")] * n   # best[j]: cost of grouping the j shortest
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = max(1, lengths[order[j - 1]])
        for i in range(max(0, j - cap), j):
            c = best[i] + (j - i) * longest + row_cost
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]: j])
        j = cut[j]
    return groups[::-1]


def pad_prompt_response(prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Prompts left-padded to P, responses right-padded to R, so every response starts at column P.

    Returns ids (B, P+R), attention mask (B, P+R), response ids (B, R), response mask (B, R), P.
    """
    P = max(map(len, prompts))
    R = max(1, max(map(len, responses)))
    B = len(prompts)
    ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    mask = torch.zeros((B, P + R), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p): P] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p): P] = 1
        if r:
            ids[i, P: P + len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, P: P + len(r)] = 1
    return ids, mask, ids[:, P:], mask[:, P:].float(), P


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the right-most real token in each row (B,)."""
    T = attention_mask.shape[1]
    idx = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return (idx * attention_mask.long()).max(dim=1).values
