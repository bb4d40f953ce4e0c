"""The vLLM plugin that lets an idle engine sleep (rlhf/vllm_idle.py), on a real engine and the tiny model.

After a `generate`, vLLM's worker process waits for the next step. Without the plugin it spins
for a second after every batch (on a quiet machine about one CPU-second; measured 0.3-0.6 on a
loaded one); with it, it sleeps after 50 ms. The test reads the worker's CPU time, not the clock.
"""

from __future__ import annotations

import time
from importlib.metadata import entry_points

import psutil
import pytest

from learner.rollout import RolloutEngine
from learner.tokenization import encode_prompt, load_tokenizer, stop_strings
from rlhf.models.dialogues import tiny_prompts

IDLE_CPU_S = 0.25
"""CPU-seconds an idle worker may use in the second after a generate (spinning would take most of one)."""


def worker_cpu_seconds() -> float:
    workers = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("VLLM::Worker")]
    assert workers, "no vLLM worker process under this test"
    return sum(p.cpu_times().user + p.cpu_times().system for p in workers)


def test_the_plugin_is_registered_for_every_vllm_process():
    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins.get("rlhf_idle_spin") == "rlhf.vllm_idle:register"


@pytest.mark.timeout(600)
def test_an_idle_engine_does_not_spin_after_generating(tiny_model_path):
    tokenizer = load_tokenizer(tiny_model_path)
    engine = RolloutEngine(tiny_model_path, max_model_len=512, stop=stop_strings(tiny_model_path), kv_cache_gb=0.5)
    try:
        prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in tiny_prompts(16, seed=5)]
        for attempt in range(3):
            assert engine.generate(prompts, n=2, max_tokens=32, seed=attempt)
            before = worker_cpu_seconds()
            time.sleep(1.0)
            idle = worker_cpu_seconds() - before
            assert idle < IDLE_CPU_S, f"the worker used {idle:.2f} CPU-s in the second after generate #{attempt}"
    finally:
        engine.close()
