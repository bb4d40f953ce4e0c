"""Adapter hot-swap benchmark: announcement -> first request served by the new version, under load.

    .venv/bin/python bench/swap.py [--model tiny] [--swaps 20] [--streams 8] [--max-tokens 32]

Starts its own broker and `rlhf serve` (in a temporary folder), keeps `--streams` streaming
chat requests going, and publishes `--swaps` new adapter versions one after another (random
LoRAs made with peft; each swap is a new version under a new name and LoRA id, as the
learner's would be, and signed with the development key pair serving finds in its data dir).
For every swap it reports the time from the announcement's timestamp to
the start of the first request served by the new version (a probe keeps sending 1-token
requests so this is sampled finely), and it counts failed requests over the whole run.
A benchmark, not a test: the numbers are from a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from kafka import KafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.signing import dev_key, signed  # noqa: E402
from adapters.store import write_adapter  # noqa: E402
from feedback.schema import AdapterAnnounced, encode  # noqa: E402
from harness.broker import start_broker  # noqa: E402
from harness.loras import make_lora  # noqa: E402
from harness.server import ServerProcess  # noqa: E402
from rlhf.models.registry import resolve_model  # noqa: E402

PROMPT = [{"role": "user", "content": "Tell me about cats."}]


class Load:
    """Streaming clients plus a probe; every finished request is recorded with the version that served it."""

    def __init__(self, url: str, streams: int, max_tokens: int):
        self.url, self.streams, self.max_tokens = url, streams, max_tokens
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._stream, args=(i,), daemon=True) for i in range(streams)]
        self.threads.append(threading.Thread(target=self._probe, daemon=True))

    def start(self):
        for t in self.threads:
            t.start()

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _record(self, rec: dict):
        with self.lock:
            self.records.append(rec)

    def _stream(self, i: int):
        body = {"messages": PROMPT, "max_tokens": self.max_tokens, "temperature": 1.0, "stream": True,
                "user": f"load{i}"}
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                rec = {"start": time.time(), "version": None, "error": None, "kind": "stream"}
                try:
                    models, done = set(), False
                    with client.stream("POST", self.url + "/v1/chat/completions", json=body) as r:
                        if r.status_code != 200:
                            rec["error"] = f"HTTP {r.status_code}"
                        for line in r.iter_lines():
                            if line == "data: [DONE]":
                                done = True
                            elif line.startswith("data: "):
                                chunk = json.loads(line[6:])
                                if "error" in chunk:
                                    rec["error"] = str(chunk["error"])
                                models.add(chunk.get("model"))
                    if not rec["error"] and (not done or len(models) != 1):
                        rec["error"] = f"incomplete or mixed stream: done={done} models={models}"
                    rec["version"] = models.pop() if len(models) == 1 else None
                except httpx.HTTPError as e:
                    rec["error"] = repr(e)
                rec["end"] = time.time()
                self._record(rec)

    def _probe(self):
        body = {"messages": PROMPT, "max_tokens": 1, "user": "probe"}
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                rec = {"start": time.time(), "version": None, "error": None, "kind": "probe"}
                try:
                    r = client.post(self.url + "/v1/chat/completions", json=body)
                    if r.status_code == 200:
                        rec["version"] = r.json()["model"]
                    else:
                        rec["error"] = f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    rec["error"] = repr(e)
                rec["end"] = time.time()
                self._record(rec)

    def first_served_by(self, version: str, timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                starts = [r["start"] for r in self.records if r["version"] == version]
            if starts:
                return min(starts)
            time.sleep(0.02)
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--swaps", type=int, default=20)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--gap", type=float, default=1.0, help="seconds of load between a switch and the next swap")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rlhf-bench-swap-"))
    model_path = resolve_model(args.model)
    loras = [make_lora(model_path, tmp / "src" / f"lora{i}", seed=i) for i in range(3)]
    broker = start_broker(tmp / "broker.log")
    key = dev_key(tmp / "data")  # development mode: serving trusts the pair in its data dir
    server = ServerProcess({"RLHF_MODEL": args.model, "RLHF_KAFKA_BOOTSTRAP": broker.bootstrap,
                            "RLHF_DATA_DIR": str(tmp / "data"), "RLHF_ADAPTER_DIR": str(tmp / "adapters"),
                            "RLHF_MAX_MODEL_LEN": "512", "RLHF_LOG_LEVEL": "WARNING"}, tmp / "serve.log")
    producer = None
    load = None
    try:
        url = server.start(300).url
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        load = Load(url, args.streams, args.max_tokens)
        load.start()
        time.sleep(2.0)
        latencies = []
        print(f"{'swap':>4} {'version':<14} {'announce->first served':>24}")
        for i in range(args.swaps):
            version, rel, sha = write_adapter(tmp / "adapters", "policy", loras[i % len(loras)], base_model=args.model)
            # active at once (canary 0, as `rlhf adapters publish --activate`): every stream measures the swap
            ev = signed(AdapterAnnounced(version=version, path=rel, manifest_sha256=sha, canary_fraction=0.0), key)
            producer.send("rlhf.adapters", key=ev.key(), value=encode(ev)).get(timeout=15)
            first = load.first_served_by(version, timeout_s=30)
            lat = None if first is None else first - ev.ts
            latencies.append(lat)
            print(f"{i + 1:>4} {version:<14} {'never (30 s)' if lat is None else f'{lat * 1000:8.0f} ms':>24}", flush=True)
            time.sleep(args.gap)
        load.close()
        recs = load.records
        failed = [r for r in recs if r["error"]]
        ok = [x for x in latencies if x is not None]
        summary = {
            "swaps": args.swaps, "streams": args.streams, "requests": len(recs),
            "stream_requests": sum(r["kind"] == "stream" for r in recs), "failed": len(failed),
            "swaps_never_served": sum(x is None for x in latencies),
            "announce_to_first_served_ms": {
                "min": round(min(ok) * 1000), "median": round(statistics.median(ok) * 1000),
                "p95": round(sorted(ok)[max(0, int(0.95 * len(ok)) - 1)] * 1000), "max": round(max(ok) * 1000)}
            if ok else None,
        }
        text = httpx.get(url + "/metrics", timeout=10).text
        hist = {k: float(v) for line in text.splitlines() if line.startswith("rlhf_adapter_swap_seconds_")
                and not line.startswith("rlhf_adapter_swap_seconds_bucket") for k, v in [line.split(" ")]}
        if hist.get("rlhf_adapter_swap_seconds_count"):
            summary["server_side_announce_to_switch_mean_ms"] = round(
                1000 * hist["rlhf_adapter_swap_seconds_sum"] / hist["rlhf_adapter_swap_seconds_count"])
        print(json.dumps(summary))
        if failed:
            print("first failures:", failed[:3], file=sys.stderr)
        return 0 if not failed and summary["swaps_never_served"] == 0 else 1
    finally:
        if load is not None:
            load.close()
        if producer is not None:
            producer.close(timeout=5)
        server.stop()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
