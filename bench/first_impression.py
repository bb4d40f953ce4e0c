"""First-impression benchmark: what a new user sees when they ask the default model everyday questions.

    .venv/bin/python bench/first_impression.py [--model gemma-3-270m] [--n 2] [--only base,preamble,policy@v0]

A fixed set of questions (capitals of ten well-known countries, colours, counts, greetings,
simple how-to), each asked `--n` times in one request at default settings (no temperature or
top_p sent: the model card's defaults apply; max_tokens 64 keeps run-on answers from taking
minutes), streamed, one request at a time, by:

- base T=1          the bare base model (`RLHF_PREAMBLE=none`) at OpenAI's defaults, temperature
                    1 and top_p 1: what the chat page got before the model card had defaults
- base              the bare base model at the model card's sampling defaults
- preamble          the base model with the model card's preamble (the default for the base model)
- policy@v0         the starting adapter (asked for by name, without the preamble; skipped when
                    the adapter store has no policy@v0: the learner publishes it on first start)

Per configuration and per kind of question: share of single clean answers (ended on EOS or a stop
string, one non-empty line, no transcript markup), share correct (where there is one right answer;
greetings: answered with a greeting), mean answer length in words, median time to first token.
Starts its own broker and `rlhf serve` (twice: without and with the preamble). A benchmark, not
a test: answers are sampled, so shares move by a few points between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.broker import start_broker
from harness.capitals import CAPITALS as ALL_CAPITALS
from harness.server import ServerProcess
from learner.publish import OutboxSender
from learner.starting_adapter import publish_starting_adapter
from learner.store import Store
from rlhf.models.registry import model_display_name, resolve_model
from rlhf.settings import get_settings

# the first ten of harness/capitals.py (France ... Canada), each by its first accepted name
CAPITALS = {country: names[0] for country, names in list(ALL_CAPITALS.items())[:10]}
COLOURS = {"the sky on a sunny day": "blue", "grass": "green", "snow": "white", "a banana": "yellow"}
COUNTS = {"How many legs does a dog have?": r"\b(four|4)\b", "How many days are in a week?": r"\b(seven|7)\b",
          "How many legs does a spider have?": r"\b(eight|8)\b", "How many months are in a year?": r"\b(twelve|12)\b"}
GREETINGS = ["Hi! How are you today?", "Hello!", "Good evening!"]
HOW_TO = ["How do I boil an egg?", "How do I plant a tree?", "How can I fall asleep faster?"]
GREETING_RE = r"\b(hi|hello|hey|good (morning|afternoon|evening|day)|(i am|i'm) (doing )?(well|fine|good|great))\b"
MARKUP = ("Question:", "Answer:")
MAX_TOKENS = 64
OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}


@dataclass(frozen=True)
class Question:
    kind: str
    text: str
    right: str | None  # a regex a correct answer matches (None: no single right answer)


def question_set() -> list[Question]:
    qs = [Question("capital", f"What is the capital of {c}?", rf"\b{cap}\b") for c, cap in CAPITALS.items()]
    qs += [Question("colour", f"What colour is {t}?", rf"\b{c}\b") for t, c in COLOURS.items()]
    qs += [Question("count", q, r) for q, r in COUNTS.items()]
    qs += [Question("greeting", g, GREETING_RE) for g in GREETINGS]
    qs += [Question("how-to", h, None) for h in HOW_TO]
    return qs


def clean(text: str, finish_reason: str | None) -> bool:
    """One answer that ended by itself (EOS or a stop string), on one non-empty line, without transcript markup."""
    t = text.strip()
    return finish_reason == "stop" and bool(t) and "\n" not in t and not any(m in t for m in MARKUP)


def correct(q: Question, text: str) -> bool | None:
    return None if q.right is None else re.search(q.right, text, re.IGNORECASE) is not None


def ask(client: httpx.Client, url: str, model: str, q: Question, n: int, sampling: dict) -> list[dict]:
    """One streamed request with n choices; returns per choice text, finish reason and time to first token."""
    texts, finish, first = [""] * n, [None] * n, None
    start = time.perf_counter()
    body = {"model": model, "messages": [{"role": "user", "content": q.text}], "n": n, "stream": True,
            "max_tokens": MAX_TOKENS, "user": "first-impression", **sampling}
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for c in json.loads(line[6:]).get("choices", []):
                if c["delta"].get("content"):
                    first = first or time.perf_counter() - start
                    texts[c["index"]] += c["delta"]["content"]
                if c.get("finish_reason"):
                    finish[c["index"]] = c["finish_reason"]
    return [{"kind": q.kind, "question": q.text, "text": t, "finish": f, "ttft": first,
             "clean": clean(t, f), "correct": correct(q, t)} for t, f in zip(texts, finish)]


def measure(url: str, model: str, n: int, label: str, sampling: dict) -> list[dict]:
    answers = []
    with httpx.Client(timeout=300) as client:
        ask(client, url, model, Question("warm-up", "Hello!", None), 1, sampling)
        for q in question_set():
            for a in ask(client, url, model, q, n, sampling):
                answers.append({**a, "config": label})
                print(f"  [{label}] {q.text} -> {a['text'].strip()[:80]!r} ({a['finish']})", flush=True)
    return answers


def summary_rows(answers: list[dict]) -> list[tuple]:
    """(config, kind, answers, clean share, correct share or None, mean words, median ttft s)."""
    rows = []
    configs = list(dict.fromkeys(a["config"] for a in answers))
    kinds = list(dict.fromkeys(a["kind"] for a in answers)) + ["all"]
    for config in configs:
        for kind in kinds:
            sel = [a for a in answers if a["config"] == config and (kind == "all" or a["kind"] == kind)]
            graded = [a["correct"] for a in sel if a["correct"] is not None]
            rows.append((config, kind, len(sel), sum(a["clean"] for a in sel) / len(sel),
                         sum(graded) / len(graded) if graded else None,
                         statistics.mean(len(a["text"].split()) for a in sel),
                         statistics.median(a["ttft"] for a in sel if a["ttft"] is not None)))
    return rows


def markdown(rows: list[tuple]) -> str:
    out = ["| configuration | questions | answers | single clean answer | correct | words per answer | time to first token |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for config, kind, count, clean_share, right, words, ttft in rows:
        out.append(f"| {config} | {kind} | {count} | {clean_share:.0%} | {'-' if right is None else f'{right:.0%}'} "
                   f"| {words:.1f} | {ttft:.2f} s |")
    return "\n".join(out)


def publish_policy_v0(tmp: Path, bootstrap: str, model_path: Path, name: str) -> set[str]:
    """Publish the prepared starting adapter into this run's own adapter store and broker, as the
    learner does on its first start; returns the versions published (none if it is not prepared)."""
    os.environ.update({"RLHF_DATA_DIR": str(tmp / "data"), "RLHF_ADAPTER_DIR": str(tmp / "adapters"),
                       "RLHF_KAFKA_BOOTSTRAP": bootstrap})
    get_settings.cache_clear()
    settings = get_settings()
    store = Store.open(settings, 0.2)
    try:
        version = publish_starting_adapter(store, settings, model_path, name)
        if version is None:
            print("no starting adapter prepared (`rlhf model prepare`): policy@v0 is skipped", flush=True)
            return set()
        sender = OutboxSender(settings)
        sender.flush(store)
        sender.close()
        return {version}
    finally:
        store.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--n", type=int, default=2, help="answers per question (one request, n choices)")
    p.add_argument("--only", default="base T=1,base,preamble,policy@v0", help="configurations to run, comma separated")
    p.add_argument("--json", help="also write every answer to this file")
    args = p.parse_args()
    wanted = set(args.only.split(","))
    model_path = resolve_model(args.model)
    name = model_display_name(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="rlhf-bench-first-"))
    broker = start_broker(tmp / "broker.log")
    answers: list[dict] = []
    try:
        adapters = publish_policy_v0(tmp, broker.bootstrap, model_path, name) if "policy@v0" in wanted else set()
        # (server environment, [(label, model asked for, sampling sent)])
        runs = [({"RLHF_PREAMBLE": "none"}, [("base T=1", name, OPENAI_DEFAULTS), ("base", name, {})]),
                ({}, [("preamble", name, {})] + ([("policy@v0", "policy@v0", {})] if "policy@v0" in adapters else []))]
        for env, configs in runs:
            configs = [c for c in configs if c[0] in wanted]
            if not configs:
                continue
            server = ServerProcess({"RLHF_MODEL": args.model, "RLHF_MAX_MODEL_LEN": "1024",
                                    "RLHF_DATA_DIR": str(tmp / "data"), "RLHF_ADAPTER_DIR": str(tmp / "adapters"),
                                    "RLHF_KAFKA_BOOTSTRAP": broker.bootstrap,
                                    "RLHF_LOG_LEVEL": "WARNING", **env}, tmp / "serve.log")
            try:
                server.start(600)
                for label, model, sampling in configs:
                    answers += measure(server.url, model, args.n, label, sampling)
            finally:
                server.stop()
    finally:
        broker.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(answers, indent=2))
    print()
    print(f"{name}, n={args.n} per question, default sampling (the model card's)")
    print(markdown(summary_rows(answers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
