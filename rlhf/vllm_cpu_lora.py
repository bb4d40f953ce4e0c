"""A vLLM plugin: LoRA on CPU as one matrix product per adapter instead of one weight copy per token.

vLLM's CPU backend applies LoRA with plain torch ops (`vllm.lora.ops.torch_ops`): for every
token of a batch it gathers that token's adapter matrices (`weights[indices]`, a (tokens, out, rank)
copy) and multiplies token by token (`einsum("bi,boi->bo")`). That runs for each LoRA'd layer at
every decode step. A batch usually holds one or two adapters, so this module groups the tokens by
adapter slot and multiplies each group by its slot's matrix once. Measured on the 2-core VM with
Gemma 3 270M and its starting adapter, 42 prompts x 4 answers of at most 48 tokens (the gate's
sampling): 36-47 s with vLLM's ops, 10-12 s with these, against 17-25 s for three times as many
tokens from the base model. `bench/lora_sampling.py` (a random rank-8 LoRA on every layer, answers
mostly running to 48 tokens): 120 -> 228 tokens a second, the base model's speed (236).

The results are those of vLLM's ops (tests/rlhf/test_vllm_cpu_lora.py compares them on random
tensors), with one difference, a fix: a token whose index is -1 gets no LoRA, as vLLM documents for
the index ("-1 means no lora should be applied") and its GPU kernels do. vLLM's torch ops index slot
-1, the last adapter slot: once every slot holds an adapter (serving keeps RLHF_MAX_LORAS of them),
the base model's answers in a batch shared with adapters' answers were computed with the last slot's
adapter. On the tiny model with two adapters loaded in two slots, the base model's scores in such a
batch moved by up to 0.65 nats (the engine test in tests/rlhf/test_vllm_cpu_lora.py fails so with
vLLM's ops). Registered as a `vllm.general_plugins` entry point (pyproject.toml), which vLLM loads
in every one of its processes, the worker included. The ops branch on the batch's adapter slots, so
they run eagerly: serving's and the learner's engines both set `enforce_eager`.
"""

from __future__ import annotations

import torch

NO_LORA = -1
"""A token's adapter index when it is answered by the base model."""

PATCHED = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")
"""The ops vLLM's CPU LoRA wrapper imports by name, replaced there."""


def groups(indices: torch.Tensor) -> list[tuple[int, torch.Tensor | None]]:
    """(adapter slot, the rows that use it) for each slot in the batch; rows None when all do."""
    first = int(indices[0])
    if bool((indices == first).all()):
        return [(first, None)]
    return [(slot, (indices == slot).nonzero().squeeze(1)) for slot in torch.unique(indices).tolist()]


def matrix(stacked: torch.Tensor, slot: int, dtype: torch.dtype) -> torch.Tensor:
    """One slot's (out, in) matrix from vLLM's stacked (slots, 1, out, in) or (slots, out, in) weights."""
    w = stacked[slot]
    return (w[0] if w.dim() == 3 else w).to(dtype)


def project(inputs: torch.Tensor, stacked: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype):
    """Yield (rows, inputs[rows] @ W[slot].T) per adapter slot in use; rows None means every row.
    Rows without an adapter yield None as the product."""
    x = inputs.to(dtype)
    for slot, rows in groups(indices):
        part = x if rows is None else x.index_select(0, rows)
        yield rows, None if slot == NO_LORA else part @ matrix(stacked, slot, dtype).T


def write(output: torch.Tensor, rows: torch.Tensor | None, cols: slice, value: torch.Tensor | None, add: bool):
    """output[rows, cols] = value (or += value); a None value is no LoRA: nothing added, zeros set."""
    if value is None:
        if add:
            return
        value = torch.zeros((), dtype=output.dtype)
    if rows is None:
        if add:
            output[:, cols] += value
        else:
            output[:, cols] = value
    elif add:
        output[rows, cols] += value
    else:
        output[rows, cols] = value


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    rank = lora_a_weights.shape[-2]
    for rows, value in project(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype):
        write(output_tensor, rows, slice(0, rank), None if value is None else scaling * value, add=False)


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    if inputs.shape[0] == 1 and output_tensor.shape[0] != 1:  # one row broadcast over the output
        return _reference().bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs)
    width = min(lora_b_weights.shape[-2], output_tensor.shape[1])  # adapter and model may pad differently
    for rows, value in project(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype):
        write(output_tensor, rows, slice(0, width), None if value is None else value[:, :width], add_inputs)


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int,
                      slice_size: int, add_inputs: bool = True):
    cols = slice(slice_offset, slice_offset + slice_size)
    for rows, value in project(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype):
        write(output_tensor, rows, cols, value, add_inputs)


def _per_token(lora_indices_tensor, seq_len_tensor) -> torch.Tensor:
    return torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)


def sgmv_shrink(inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, scaling):
    bgmv_shrink(inputs, lora_a_weights, output_tensor, _per_token(lora_indices_tensor, seq_len_tensor), scaling)


def sgmv_expand(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, add_inputs: bool = False):
    bgmv_expand(inputs, lora_b_weights, output_tensor, _per_token(lora_indices_tensor, seq_len_tensor), add_inputs)


def sgmv_expand_slice(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                      batches, max_seq_length, token_nums, slice_offset, slice_size, add_inputs: bool = False):
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, _per_token(lora_indices_tensor, seq_len_tensor),
                      slice_offset, slice_size, add_inputs)


def _reference():
    from vllm.lora.ops import torch_ops

    return torch_ops


def register() -> None:
    """Put these ops into vLLM's CPU LoRA wrapper (idempotent; a vLLM without it is left alone)."""
    try:
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError:
        return
    ours = globals()
    for name in PATCHED:
        if hasattr(punica_cpu, name):
            setattr(punica_cpu, name, ours[name])
