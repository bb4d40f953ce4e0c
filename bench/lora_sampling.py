"""Sampling under a LoRA on CPU: vLLM's own LoRA ops against ours (rlhf/vllm_cpu_lora.py), same process.

    .venv/bin/python bench/lora_sampling.py [--model gemma-3-270m] [--prompts 42] [--samples 4] [--repeats 3]

Makes a random LoRA on every layer the learner trains (rank 8, as the learner's), then starts the
learner's rollout engine twice: once with vLLM's CPU LoRA ops (`VLLM_PLUGINS` leaves ours out), once
with ours. Each engine samples `--samples` answers to each of `--prompts` questions under the LoRA,
`--repeats` times with the gate's settings (temperature 1, at most `--max-tokens` tokens, seeded),
and once from the base model for scale. Prints the median seconds and tokens per second of each,
and the ratio. A benchmark, not a test: figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.loras import make_lora  # noqa: E402
from learner.policy_config import LORA_TARGETS  # noqa: E402
from learner.rollout import RolloutEngine  # noqa: E402
from learner.tokenization import encode_prompt, load_tokenizer, stop_strings  # noqa: E402
from rlhf.models.dialogues import tiny_prompts  # noqa: E402
from rlhf.models.registry import resolve_model  # noqa: E402

KERNELS = {"vLLM's ops": "rlhf_idle_spin", "ours": "rlhf_idle_spin,rlhf_cpu_lora"}
"""VLLM_PLUGINS for each run: which of our vLLM plugins the engine's processes load."""


def run(model_path: Path, lora_dir: Path, prompts: list[list[int]], args) -> dict:
    """Seconds and generated tokens per repeat under the LoRA, and once from the base model."""
    engine = RolloutEngine(model_path, max_model_len=512, kv_cache_gb=1.0, stop=stop_strings(model_path))
    try:
        gen = dict(n=args.samples, temperature=1.0, max_tokens=args.max_tokens)
        engine.generate(prompts[:4], lora=engine.lora(lora_dir, "warm-up"), seed=0, **gen)
        runs = []
        for r in range(args.repeats):
            t = time.perf_counter()
            samples = engine.generate(prompts, lora=engine.lora(lora_dir, f"repeat-{r}"), seed=1000 * r, **gen)
            runs.append((time.perf_counter() - t, sum(len(s.response_ids) for s in samples)))
            print(f"  LoRA, repeat {r + 1}: {runs[-1][0]:.1f} s, {runs[-1][1]} tokens", flush=True)
        t = time.perf_counter()
        base = engine.generate(prompts, seed=0, **gen)
        base_run = (time.perf_counter() - t, sum(len(s.response_ids) for s in base))
        print(f"  base model: {base_run[0]:.1f} s, {base_run[1]} tokens", flush=True)
    finally:
        engine.close()
    return {"seconds": statistics.median(s for s, _ in runs),
            "tokens_per_s": statistics.median(n / s for s, n in runs), "base_tokens_per_s": base_run[1] / base_run[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--prompts", type=int, default=42)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model_path = resolve_model(args.model)
    tokenizer = load_tokenizer(model_path)
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in tiny_prompts(args.prompts, seed=4)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        lora_dir = make_lora(model_path, Path(tmp) / "lora", seed=1, rank=8, target_modules=LORA_TARGETS)
        for name, plugins in KERNELS.items():
            print(f"{name} (VLLM_PLUGINS={plugins}):", flush=True)
            os.environ["VLLM_PLUGINS"] = plugins  # read by the engine's processes when they start
            results[name] = run(model_path, lora_dir, prompts, args)
    print(f"\n{args.prompts} prompts x {args.samples} answers, at most {args.max_tokens} tokens, {args.model}:")
    for name, r in results.items():
        print(f"  {name:11s} under the LoRA: {r['seconds']:6.1f} s, {r['tokens_per_s']:6.1f} tokens/s "
              f"(base model {r['base_tokens_per_s']:.1f} tokens/s)")
    ratio = results["ours"]["tokens_per_s"] / results["vLLM's ops"]["tokens_per_s"]
    print(f"  ours / vLLM's ops: {ratio:.2f}x the tokens per second under the LoRA")


if __name__ == "__main__":
    main()
