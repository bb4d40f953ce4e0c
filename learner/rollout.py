"""Rollouts with vLLM inside the learner: one offline `vllm.LLM` engine, LoRA-enabled.

Every new set of policy weights gets a NEW LoRA name and id (`lora()`): vLLM caches adapters
and prefix blocks by id, so reloading new weights under an old id could sample from the old
policy. The engine runs in its own process (vLLM spawns the engine core); scripts that create
one need the `if __name__ == "__main__":` guard.

On x86 vLLM's CPU worker leaves one core to its scheduler process and computes on the rest,
which on a 2-core machine is one thread. The learner samples and trains in turn, never at once,
so its engine computes on every core (`VLLM_CPU_NUM_OF_RESERVED_CPU=0` unless the environment
sets it): Gemma 3 270M, 16 prompts x 2 answers of at most 48 tokens took 23.5-27.2 s instead of
35.4-37.8 s on the 2-core VM.

    engine = RolloutEngine(model_path, max_model_len=512)
    samples = engine.generate([prompt_ids, ...], temperature=1.0, max_tokens=48,
                              lora=engine.lora("/path/to/peft_adapter", "policy-step-3"))
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest

from rlhf.models.sizing import vllm_scheduling

log = logging.getLogger(__name__)

RESERVED_CPUS = "VLLM_CPU_NUM_OF_RESERVED_CPU"


@dataclass
class Sample:
    prompt_index: int        # which of the prompts passed to generate()
    prompt_ids: list[int]
    response_ids: list[int]  # generated ids (the policy's actions), incl. EOS / the stop string's tokens
    text: str                # decoded answer, without EOS or the stop string
    finished: bool           # stopped on EOS or a stop string (False: cut off at max_tokens)
    answer_index: int = 0    # which of the n answers to that prompt


class RolloutEngine:
    def __init__(self, model_path: Path | str, *, max_model_len: int = 512, max_lora_rank: int = 16,
                 max_loras: int = 2, gpu_memory_utilization: float = 0.1, kv_cache_gb: float = 0.0,
                 seed: int = 0, stop: list[str] | None = None):
        self.model_path = str(model_path)
        self.stop = stop or None  # serving's stop strings for this model; EOS always stops
        log.info("starting the rollout engine (vLLM) on %s", self.model_path)
        os.environ.setdefault(RESERVED_CPUS, "0")  # read by the engine's worker when it starts
        self.llm = LLM(model=self.model_path, enable_lora=True, max_lora_rank=max_lora_rank, max_loras=max_loras,
                       enforce_eager=True, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, seed=seed, **vllm_scheduling(max_model_len, 4096),
                       kv_cache_memory_bytes=int(kv_cache_gb * 2**30) if kv_cache_gb > 0 else None)
        self.max_model_len = max_model_len
        self._ids = itertools.count(1)

    def lora(self, path: Path | str, label: str):
        """A LoRARequest with a name and id never used before in this engine."""
        lid = next(self._ids)
        return LoRARequest(f"{label}#{lid}", lid, str(path))

    def generate(self, prompts: list[list[int]], *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_tokens: int = 64, lora=None, seed: int | None = None) -> list[Sample]:
        """Sample n answers per prompt; returns them prompt by prompt (n consecutive samples each)."""
        if not prompts:
            return []
        kept = [(i, p) for i, p in enumerate(prompts) if len(p) + max_tokens <= self.max_model_len]
        if len(kept) < len(prompts):
            log.warning("skipping %d prompts longer than %d tokens", len(prompts) - len(kept),
                        self.max_model_len - max_tokens)
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                 stop=self.stop, seed=None if seed is None else seed + i)
                  for i, _ in kept]
        outs = self.llm.generate([{"prompt_token_ids": p} for _, p in kept], params, lora_request=lora,
                                 use_tqdm=False)
        samples = []
        for (i, p), out in zip(kept, outs):
            for j, c in enumerate(out.outputs):
                samples.append(Sample(i, list(p), list(c.token_ids), c.text, c.finish_reason == "stop", j))
        return samples

    def close(self) -> None:
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort; the engine process also exits with ours
            pass
