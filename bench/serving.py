"""Serving benchmark: this server vs vLLM's own OpenAI server vs plain transformers `generate`.

    .venv/bin/python bench/serving.py [--model tiny|gemma-3-270m|PATH] [--requests 64] [--max-tokens 32]

Same model, same prompts, same max_tokens (ignore_eos so every request generates exactly that
many tokens), in one run. Prints requests/s and p50/p99 latency at concurrency 1, 8 and 32, and
the ratios: ours / vLLM serve (target: within 10%) and ours / transformers (target: several x).
A benchmark, not a test: numbers on a shared 2-core machine are noisy; compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.broker import start_broker  # noqa: E402
from harness.server import ServerProcess  # noqa: E402
from rlhf.models.registry import model_display_name, resolve_model  # noqa: E402

PROMPTS = ["Tell me about cats.", "What do you think of rain?", "Do you like music?", "Why are trees nice?",
           "Say something about the sea.", "Can you describe snow?", "What is good about tea?", "Tell me about stars."]


async def run_load(url: str, model: str, concurrency: int, n_requests: int, max_tokens: int) -> dict:
    lat: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        async def one(i: int):
            nonlocal errors
            async with sem:
                t = time.perf_counter()
                r = await client.post(url + "/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    "max_tokens": max_tokens, "temperature": 1.0, "seed": i, "ignore_eos": True})
                if r.status_code != 200:
                    errors += 1
                lat.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n_requests)))
        wall = time.perf_counter() - start
    return summarize(lat, wall, errors)


def summarize(lat: list[float], wall: float, errors: int = 0) -> dict:
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    return {"rps": len(lat) / wall, "p50": statistics.median(lat), "p99": p99, "errors": errors}


def bench_transformers(path: Path, concurrency: int, n_requests: int, max_tokens: int) -> dict:
    """Plain HF generate, batching `concurrency` prompts at a time (its best case)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    lat = []
    start = time.perf_counter()
    for b in range(0, n_requests, concurrency):
        batch = [PROMPTS[i % len(PROMPTS)] for i in range(b, min(n_requests, b + concurrency))]
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                         add_generation_prompt=True) for p in batch]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=True,
                           pad_token_id=tok.pad_token_id)
        lat += [time.perf_counter() - t] * len(batch)
    return summarize(lat, time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", default="1,8,32")
    args = ap.parse_args()
    path = resolve_model(args.model)
    name = model_display_name(args.model)
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, dict[int, dict]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="rlhf-bench-serving-"))
    # A real broker, as in production: every completion publishes its Interaction events.
    broker = start_broker(tmp / "broker.log")

    # 1. this server
    server = ServerProcess({"RLHF_MODEL": args.model, "RLHF_MAX_MODEL_LEN": "1024", "RLHF_DATA_DIR": str(tmp / "data"),
                            "RLHF_KAFKA_BOOTSTRAP": broker.bootstrap, "RLHF_ALLOW_IGNORE_EOS": "true"}, tmp / "serve.log")
    try:
        server.start(300)
        asyncio.run(run_load(server.url, name, 4, 8, args.max_tokens))  # warm-up
        results["rlhf serve"] = {c: asyncio.run(run_load(server.url, name, c, args.requests, args.max_tokens))
                                 for c in levels}
    finally:
        server.stop()
        broker.stop()

    # 2. vLLM's own OpenAI server, same engine settings
    server = ServerProcess({}, tmp / "vllm.log", [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--served-model-name", name,
        "--port", "{port}", "--max-model-len", "1024", "--enforce-eager", "--enable-lora", "--max-lora-rank", "16",
        "--max-loras", "4", "--gpu-memory-utilization", "0.1", "--max-num-seqs", "64", "--disable-log-stats"],
        port_env=None, ready_path="/health")
    try:
        server.start(300)
        asyncio.run(run_load(server.url, name, 4, 8, args.max_tokens))
        results["vllm serve"] = {c: asyncio.run(run_load(server.url, name, c, args.requests, args.max_tokens))
                                 for c in levels}
    finally:
        server.stop()

    # 3. transformers generate (fewer requests at concurrency 1: it is slow)
    results["transformers"] = {c: bench_transformers(path, c, max(c, args.requests // (4 if c == 1 else 1)),
                                                     args.max_tokens) for c in levels}

    print(f"\nmodel={name} max_tokens={args.max_tokens} requests={args.requests}")
    print(f"{'server':<14}{'conc':>5}{'req/s':>9}{'p50 s':>9}{'p99 s':>9}{'errors':>8}")
    for server, by_c in results.items():
        for c, r in by_c.items():
            print(f"{server:<14}{c:>5}{r['rps']:>9.2f}{r['p50']:>9.3f}{r['p99']:>9.3f}{r['errors']:>8}")
    print(f"\n{'conc':>5}{'ours/vllm':>11}{'ours/transformers':>19}")
    for c in levels:
        ours = results["rlhf serve"][c]["rps"]
        print(f"{c:>5}{ours / results['vllm serve'][c]['rps']:>11.2f}{ours / results['transformers'][c]['rps']:>19.2f}")


if __name__ == "__main__":
    main()
