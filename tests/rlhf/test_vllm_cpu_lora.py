"""The CPU LoRA ops plugin (rlhf/vllm_cpu_lora.py): the same results as vLLM's torch ops, on random
tensors shaped as vLLM's CPU LoRA wrapper passes them, and installed in every vLLM process."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch
from vllm import SamplingParams
from vllm.lora.ops import torch_ops as reference

from harness.loras import make_lora
from learner.policy_config import LORA_TARGETS
from learner.rollout import RolloutEngine
from learner.tokenization import encode_prompt, load_tokenizer
from rlhf import vllm_cpu_lora as ours
from rlhf.models.dialogues import tiny_prompts

SLOTS, RANK, IN, OUT = 3, 8, 24, 40


def stacked(rows: int, cols: int, seed: int) -> torch.Tensor:
    """vLLM's stacked adapter weights: (slots, 1, rows, cols)."""
    return torch.randn(SLOTS, 1, rows, cols, generator=torch.Generator().manual_seed(seed))


def tokens(n: int, seed: int, width: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


INDICES = {
    "one adapter": torch.tensor([1, 1, 1, 1, 1, 1]),
    "two adapters": torch.tensor([0, 2, 2, 0, 2, 0]),
    "every slot": torch.tensor([2, 1, 0, 0, 1, 2]),
}


@pytest.mark.parametrize("indices", INDICES.values(), ids=INDICES.keys())
def test_shrink_matches_vllm(indices):
    x, a = tokens(len(indices), 1, IN), stacked(RANK, IN, 2)
    want, got = torch.full((len(indices), RANK + 3), 7.0), torch.full((len(indices), RANK + 3), 7.0)
    reference.bgmv_shrink(x, a, want, indices, 0.5)
    ours.bgmv_shrink(x, a, got, indices, 0.5)
    torch.testing.assert_close(got, want)
    assert got[:, RANK:].eq(7.0).all()  # only the rank's columns are written


@pytest.mark.parametrize("add", [True, False])
@pytest.mark.parametrize("indices", INDICES.values(), ids=INDICES.keys())
def test_expand_matches_vllm(indices, add):
    x, b = tokens(len(indices), 3, RANK), stacked(OUT, RANK, 4)
    base = tokens(len(indices), 5, OUT + 2)  # the model's output may be wider than the adapter's
    want, got = base.clone(), base.clone()
    reference.bgmv_expand(x, b, want, indices, add)
    ours.bgmv_expand(x, b, got, indices, add)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("add", [True, False])
@pytest.mark.parametrize("indices", INDICES.values(), ids=INDICES.keys())
def test_expand_slice_matches_vllm(indices, add):
    x, b = tokens(len(indices), 6, RANK), stacked(OUT, RANK, 7)
    base = tokens(len(indices), 8, 3 * OUT)
    want, got = base.clone(), base.clone()
    reference.bgmv_expand_slice(x, b, want, indices, OUT, OUT, add)
    ours.bgmv_expand_slice(x, b, got, indices, OUT, OUT, add)
    torch.testing.assert_close(got, want)


def test_prefill_ops_spread_each_sequences_adapter_over_its_tokens():
    seq_lens, seq_slots = torch.tensor([2, 3, 1]), torch.tensor([2, 0, 2])
    n = int(seq_lens.sum())
    starts = torch.cumsum(seq_lens, 0) - seq_lens
    meta = (starts, seq_lens, seq_slots, 3, 3, n)
    x, a, b = tokens(n, 9, IN), stacked(RANK, IN, 10), stacked(OUT, RANK, 11)
    want, got = torch.zeros(n, RANK), torch.zeros(n, RANK)
    reference.sgmv_shrink(x, a, want, *meta, 2.0)
    ours.sgmv_shrink(x, a, got, *meta, 2.0)
    torch.testing.assert_close(got, want)
    want_out, got_out = tokens(n, 12, OUT), tokens(n, 12, OUT)
    reference.sgmv_expand(want, b, want_out, *meta, True)
    ours.sgmv_expand(got, b, got_out, *meta, True)
    torch.testing.assert_close(got_out, want_out)
    want_out, got_out = tokens(n, 13, 2 * OUT), tokens(n, 13, 2 * OUT)
    reference.sgmv_expand_slice(want, b, want_out, *meta, 0, OUT, False)
    ours.sgmv_expand_slice(got, b, got_out, *meta, 0, OUT, False)
    torch.testing.assert_close(got_out, want_out)


def test_a_token_without_an_adapter_gets_no_lora():
    """-1: the base model answers this token. vLLM's torch ops would apply the last slot's adapter."""
    indices = torch.tensor([1, -1, 1, -1])
    x, a, b = tokens(4, 14, IN), stacked(RANK, IN, 15), stacked(OUT, RANK, 16)
    shrunk = torch.full((4, RANK), 3.0)
    ours.bgmv_shrink(x, a, shrunk, indices, 1.0)
    assert shrunk[[1, 3]].eq(0).all()
    torch.testing.assert_close(shrunk[[0, 2]], x[[0, 2]] @ a[1, 0].T)
    base = tokens(4, 17, OUT)
    added = base.clone()
    ours.bgmv_expand(shrunk, b, added, indices, True)
    torch.testing.assert_close(added[[1, 3]], base[[1, 3]])
    torch.testing.assert_close(added[[0, 2]], base[[0, 2]] + shrunk[[0, 2]] @ b[1, 0].T)


def test_the_plugin_replaces_the_ops_in_every_vllm_process():
    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins.get("rlhf_cpu_lora") == "rlhf.vllm_cpu_lora:register"
    # a fresh interpreter, as a vLLM worker starts: vLLM's own plugin loader installs the ops
    probe = ("import json; from vllm.plugins import load_general_plugins; load_general_plugins(); "
             "from vllm.lora.punica_wrapper import punica_cpu; "
             "print(json.dumps({n: getattr(punica_cpu, n).__module__ for n in %r}))" % (ours.PATCHED,))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert modules == {name: "rlhf.vllm_cpu_lora" for name in ours.PATCHED}


def top_logprobs(outputs) -> list[list[dict[int, float]]]:
    """Per request, the top-5 log-probabilities at each answer position, up to where two runs could
    part: the caller compares positions while the chosen tokens agree."""
    return [[{t: lp.logprob for t, lp in pos.items()} for pos in out.outputs[0].logprobs] for out in outputs]


def assert_same_scores(got: list[dict[int, float]], want: list[dict[int, float]], label: str) -> None:
    """The same top-5 scores at every position up to and including the first where the argmax differs
    (a near tie may break either way in a batch of another size; the scores must still agree)."""
    for pos, (g, w) in enumerate(zip(got, want)):
        common = g.keys() & w.keys()
        assert len(common) >= 3, (label, pos)  # the 5th and 6th may swap on a near tie
        assert [g[t] for t in common] == pytest.approx([w[t] for t in common], abs=2e-3), (label, pos)
        if max(g, key=g.get) != max(w, key=w.get):
            break


@pytest.mark.timeout(600)
def test_a_batch_shared_by_two_adapters_and_the_base_model_answers_each_as_alone(tiny_model_path, tmp_path):
    """On the real engine (tiny model): the base model's requests in a batch with two adapters' requests
    (both adapter slots filled) score their answers as the base model does alone, and each adapter's as
    that adapter alone. With vLLM's CPU ops the base requests got the last slot's adapter."""
    tokenizer = load_tokenizer(tiny_model_path)
    prompts = [{"prompt_token_ids": encode_prompt(tokenizer, [{"role": "user", "content": q}])}
               for q in tiny_prompts(6, seed=4)]
    loras = [make_lora(tiny_model_path, tmp_path / name, seed=seed, target_modules=LORA_TARGETS)
             for name, seed in (("a", 1), ("b", 2))]
    engine = RolloutEngine(tiny_model_path, max_model_len=512, kv_cache_gb=0.5, max_loras=2)
    try:
        greedy = SamplingParams(max_tokens=8, temperature=0.0, logprobs=5, ignore_eos=True)
        requests = [None, *(engine.lora(path, path.name) for path in loras)]
        alone = [top_logprobs(engine.llm.generate(prompts, greedy, lora_request=lora, use_tqdm=False))
                 for lora in requests]
        mixed = engine.llm.generate(prompts * 3, greedy, lora_request=[r for r in requests for _ in prompts],
                                    use_tqdm=False)
        mixed = top_logprobs(mixed)
        for k, lora in enumerate(requests):
            for got, want in zip(mixed[k * len(prompts): (k + 1) * len(prompts)], alone[k]):
                assert_same_scores(got, want, lora.lora_name if lora else "base model")
        first = [(a[0], b[0]) for a, b in zip(alone[0], alone[1])]  # base vs adapter a, first position
        assert max(abs(a[t] - b[t]) for a, b in first for t in a.keys() & b.keys()) > 0.1  # the check can fail
    finally:
        engine.close()
