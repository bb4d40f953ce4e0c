"""Every policy algorithm on the same recorded feedback, side by side: approval on held-out questions, KL, time, CPU.

    .venv/bin/python bench/algorithms.py                                  # gemma-3-270m; colour, sentence, place
    .venv/bin/python bench/algorithms.py --model tiny --tastes colour --questions 80 --algorithms dpo,kto
    .venv/bin/python bench/algorithms.py --tastes colour --log OUT/colour/log.jsonl   # reuse a recorded log
    .venv/bin/python bench/algorithms.py --trl                            # also TRL's trainers' step times

For each taste (harness/tastes.py: `colour`, `sentence`, `place`, `number`; also `word:WORD`, `max-words:K`):

1. Record. `rlhf up` starts in a folder of its own on free ports (broker, serving, a learner that
   never starts a round: its trigger is set out of reach). Simulated users (`--users` ids) with the
   hidden taste ask `--questions` questions through the public HTTP API, two answers each (n=2),
   and send pairwise choices or thumbs through /v1/feedback (harness/user.py `converse`), at most
   `--events` feedback events. With `--corrections S`, a user who likes neither answer corrects one
   of them a share S of the time instead (a demonstration: the answer's first sentence and a short
   sentence of their own with what they like, harness/tastes.py); each correction is one of the
   events. The sealed events serving wrote are read back from the broker and saved as
   OUT/<taste>/log.jsonl (bench/feedback_log.py), then `rlhf up` stops. Printed then: how the taste
   falls on the log's answers (`taste_spread`): the share liked, and how often the two answers to
   one question differ, beside how often they would if each were liked by chance. Far fewer says
   the question decides, not the sample: few pairs, logged or sampled.
2. Learn. For each of `--algorithms`, a process of its own (this script with `--worker learn`, so
   no engine or memory leaks from one to the next): a fresh learner (own store and adapter folder;
   the same settings, learner config and split key for all) publishes the starting adapter as
   `rlhf learn` does when it starts, ingests the log, starts its vLLM engine, has the base model
   write the prose anchor's texts and computes its own distributions on them (learner/prose_anchor.py;
   a learner keeps both after its first round), and runs one round.
   `round s` is from the end of the ingest to the published adapter (or the gate's rejection): in
   this offline replay, the time from the last feedback to a published adapter, for a learner
   whose engine is already up (as after its first round). `CPU s` is the CPU time of the worker and
   its engine processes over the same span (on two cores at most twice `round s`); `others` the
   cores other processes used meanwhile (bench/machine_load.py): times from a busy machine compare badly.
   `ppl +%`: how much the candidate's perplexity on a fixed reference text rose over the start's
   (the round's reference, policy@v0 where the model has one), and `(base)` over the bare base
   model's (the round's own offline figures, learner/offline_figures.py): the capability kept.
3. Judge. One vLLM engine (`--worker judge`) samples the policy the users talked to (`start`: the
   starting adapter policy@v0 where the model has one, else the base model with serving's
   preamble) and each algorithm's adapter, published or rejected by the gate, on `--heldout`
   held-out questions: a fixed share of the question space (by a hash of the text) that phase 1
   never asks, and none of the log's questions. `--samples` answers per question at temperature 1,
   the same seeds for every policy; approval is the share of answers the taste likes, and `z` the
   two-proportion z of an adapter against the start. `capitals`: the share of answers to 30
   capital-of-country questions (harness/capitals.py; 4 each, at the model card's sampling defaults,
   as serving answers a request that sets none) that name the capital: the other capability kept.
   Where the model has a starting adapter, the bare base model with serving's preamble is judged
   too (`base` in the table's head line).
4. TRL (`--trl`, needs `trl==1.16.0`): see bench/trl_steps.py; TRL's DPOTrainer, KTOTrainer, RLOOTrainer
   and OnlineDPOTrainer on the log's data beside ours, seconds per step (`--trl-parts` picks some;
   with `--algorithms ""` only these run).

Prints one table per taste and writes OUT/results.json (after each taste, so a later failure keeps
what was measured). A benchmark, not a test: on the default model and two cores it takes hours.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

# This script runs from bench/, which holds a module named `learner`: the project comes first on the path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import feedback_log  # noqa: E402
from bench.feedback_log import EVENT_KEY, load_log, log_counts, questions_of, taste_spread  # noqa: E402
from bench.trl_steps import PARTS as TRL_PARTS  # noqa: E402
from bench.trl_steps import compare_steps, steps_table  # noqa: E402
from harness.capitals import CAPITAL_QUESTIONS, capital_accuracy  # noqa: E402
from harness.proportions import two_proportion_z  # noqa: E402
from harness.questions import questions as everyday_questions  # noqa: E402
from harness.up import UpProcess  # noqa: E402
from harness.user import Preference, converse  # noqa: E402
from harness.waiting import wait_until  # noqa: E402
from rlhf.models.dialogues import tiny_prompts  # noqa: E402

log = logging.getLogger("bench.algorithms")
ALGORITHMS = ("ppo", "rloo", "dpo", "online-dpo", "kto")
# The same held-out users for every learner: this key holds out a typical 4 of user0..user19
SPLIT_KEY = "bench/algorithms.py: the split key of every learner 2"
HELDOUT_SHARE = 0.2  # of the question space, asked only by the judge
CAPITAL_TOKENS = 24  # answers to the capital questions: the capital comes in the first words
CAPITAL_SAMPLES = 4


# ------------------------------------------------------------------------------------------ questions
def question_pool(model: str, n: int, seed: int) -> list[str]:
    """Questions in the model's world: the tiny model's own topics, everyday questions for real models."""
    return tiny_prompts(n, seed) if model == "tiny" else everyday_questions(n, seed)


def held_out(question: str) -> bool:
    """Whether a question belongs to the judge's side of the question space (a hash of its text)."""
    return hashlib.sha256(question.encode()).digest()[0] < HELDOUT_SHARE * 256


def users_questions(model: str, n: int) -> list[str]:
    return [q for q in question_pool(model, 20 * n, seed=1) if not held_out(q)][:n]


def judge_questions(model: str, n: int, asked: set[str]) -> list[str]:
    """Up to `n` distinct held-out questions, none of them in the log."""
    out: list[str] = []
    for q in question_pool(model, 50 * n, seed=999):
        if held_out(q) and q not in asked and q not in out:
            out.append(q)
    return out[:n]


# ------------------------------------------------------------------------------------------ 1. record
def record(pref: Preference, args, folder: Path) -> Path:
    """Phase 1: users with the taste talk to `rlhf up`; their sealed events, read back from its broker, as JSONL."""
    env = {"RLHF_DATA_DIR": str(folder / "up" / "data"), "RLHF_ADAPTER_DIR": str(folder / "up" / "adapters"),
           "RLHF_EVENT_HMAC_KEY": EVENT_KEY, "RLHF_FEEDBACK_RATE_LIMIT": "0",
           "RLHF_LEARNER_MIN_FEEDBACK": str(10**9), "RLHF_LEARNER_INTERVAL_S": str(10**12)}

    def echo(line: str) -> None:
        if args.verbose or line.startswith("rlhf up:"):
            print("   | " + line.rstrip(), flush=True)

    up = UpProcess(env, args.model, echo=echo)
    t0 = time.monotonic()
    try:
        up.start(timeout=1800)
        print(f"  `rlhf up` ready after {time.monotonic() - t0:.0f} s", flush=True)
        if (folder / "up" / "adapters" / "policy").is_dir():  # the learner published the starting adapter
            wait_until(lambda: httpx.get(up.url + "/v1/adapters", timeout=10).json().get("active"), 120, 1.0,
                       "serving to answer with the starting adapter")
        sent = {"pairwise": 0, "thumbs": 0, "demonstration": 0, "asked": 0}
        lock = threading.Lock()

        def feedback_sent() -> int:
            return sent["pairwise"] + sent["thumbs"] + sent["demonstration"]

        def user_turn(client: httpx.Client, i: int, q: str) -> None:
            with lock:
                if feedback_sent() >= args.events:
                    return  # enough feedback: the rest of the questions are not asked
                sent["asked"] += 1
            kind = converse(client, pref, q, seed=i, user=f"user{i % args.users}", rng=random.Random(i),
                            max_tokens=args.max_tokens, corrections=args.corrections)
            with lock:
                if kind:
                    sent[kind] += 1
                if sent["asked"] % 25 == 0:
                    print(f"  users: {sent['asked']} questions asked, {sent['pairwise']} pairwise, "
                          f"{sent['thumbs']} thumbs and {sent['demonstration']} corrections sent "
                          f"({time.monotonic() - t0:.0f} s)", flush=True)

        t_users = time.monotonic()
        qs = users_questions(args.model, args.questions)
        with httpx.Client(base_url=up.url, timeout=600) as client, ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i_q: user_turn(client, *i_q), enumerate(qs)))
        print(f"  users done in {time.monotonic() - t_users:.0f} s: {sent}", flush=True)

        # serving sends its events to the broker in the background: wait until all of them are there
        want = {"interactions": 2 * sent["asked"], "feedback": feedback_sent()}
        deadline = time.monotonic() + 120
        while True:
            events = feedback_log.recorded(up.bootstrap)
            counts = log_counts(events)
            got = {"interactions": counts["interactions"], "feedback": sum(counts.values()) - counts["interactions"]}
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(2)
        if got != want:  # e.g. a request that failed after serving logged it: learn from what was recorded
            print(f"  warning: the broker holds {got} events, the users made {want}", flush=True)
        events = feedback_log.recorded(up.bootstrap, max_feedback=args.events)
    finally:
        up.stop()
    path = folder / "log.jsonl"
    feedback_log.save_log(path, events)
    print(f"  recorded {log_counts(events)} in {path}", flush=True)
    return path


# ------------------------------------------------------------------------------------------ 2. learn
def learn_worker(spec: dict) -> dict:
    """One algorithm's round on the log, in this process: a fresh learner, as `rlhf learn` would be."""
    from bench.machine_load import own_cpu_seconds
    from learner.policy_model import load_policy
    from learner.round import Learner, LearnerConfig
    from learner.starting_adapter import publish_starting_adapter
    from rlhf.settings import Settings

    folder = Path(spec["folder"])
    extra = {"kl_budget": spec["kl_budget"]} if spec.get("kl_budget") is not None else {}
    settings = Settings(model=spec["model"], data_dir=folder / "data", adapter_dir=folder / "adapters",
                        kafka_bootstrap="127.0.0.1:9", event_hmac_key=EVENT_KEY, learner_split_key=SPLIT_KEY,
                        learner_algorithm=spec["algorithm"], **extra)
    cfg = LearnerConfig.from_file(spec["learner_config"]) if spec.get("learner_config") else LearnerConfig()
    learner = Learner(settings, cfg)
    try:
        start = publish_starting_adapter(learner.store, settings, learner.model_path, learner.model_name)
        t = time.perf_counter()
        stored = learner.store.ingest(load_log(spec["log"]))
        if stored.refused:
            raise SystemExit(f"{stored.refused} events of the log were refused: recorded with another "
                             "RLHF_EVENT_HMAC_KEY than this bench's")
        ingest_s = time.perf_counter() - t
        log.info("%s: ingested %d events in %.1f s; starting the engine", spec["algorithm"], stored.new, ingest_s)
        learner.engine  # noqa: B018 - started before the clock, as in a learner that has run a round before
        if learner.policy_cfg.anchor_coef > 0 or learner.cfg.sft.anchor_coef > 0:
            # likewise: the prose anchor's texts and the base's distributions on them, made at a first round
            learner.prose_anchor(load_policy(learner.model_path, learner.policy_cfg))
        cpu0, t0 = own_cpu_seconds(), time.perf_counter()
        result = learner.run_round()
        round_s, cpu_s = time.perf_counter() - t0, own_cpu_seconds() - cpu0
        adapter = result.candidate_dir
        if result.version:
            (rel,) = learner.store.db.execute("SELECT path FROM adapters WHERE version=?", (result.version,)).fetchone()
            adapter = settings.adapter_dir / rel
        m = result.metrics
        return {"status": result.status, "reasons": result.reasons, "version": result.version,
                "adapter": str(adapter) if adapter else None, "start": start, "round_s": round_s, "cpu_s": cpu_s,
                "ingest_s": ingest_s, "feedback": m.get("feedback_count"), "kl": m.get("kl_candidate"),
                "reward_gain": m.get("reward_gain"), "rm_accuracy": m.get("rm_accuracy"),
                "metrics": {k: v for k, v in m.items() if isinstance(v, (int, float, str, type(None)))}}
    finally:
        learner.close()


# ------------------------------------------------------------------------------------------ 3. judge
def judge_worker(spec: dict) -> dict:
    """The start policy and each adapter on the held-out questions, in one engine: liked answers per policy."""
    from learner.rollout import RolloutEngine
    from learner.starting_adapter import prepared
    from learner.tokenization import encode_prompt, load_tokenizer, stop_strings
    from rlhf.models.card import model_card, preamble_messages, sampling_defaults, with_preamble
    from rlhf.models.registry import resolve_model
    from rlhf.models.sizing import context_length
    from rlhf.settings import Settings

    settings = Settings(model=spec["model"])
    path = resolve_model(spec["model"])
    tok = load_tokenizer(path)
    pref = Preference.named(spec["taste"])
    engine = RolloutEngine(path, max_model_len=context_length(path, settings.max_model_len),
                           max_lora_rank=settings.max_lora_rank, kv_cache_gb=settings.kv_cache_gb, seed=0,
                           stop=stop_strings(path))
    try:
        start = prepared(settings, path)
        card = model_card(path)
        preamble = preamble_messages(card, settings.preamble)
        card_sampling = sampling_defaults(card)  # what a user who sets nothing gets from serving
        capital_qs, countries = [q for q, _ in CAPITAL_QUESTIONS], [c for _, c in CAPITAL_QUESTIONS]

        def encoded(questions: list[str], with_the_preamble: bool) -> list[list[int]]:
            chats = [[{"role": "user", "content": q}] for q in questions]
            return [encode_prompt(tok, with_preamble(c, preamble) if with_the_preamble else c) for c in chats]

        # (held-out questions, capital questions) as ids, without and with the preamble
        prompts = {p: (encoded(spec["questions"], p), encoded(capital_qs, p)) for p in (False, True)}

        # what users talked to: serving answers with policy@v0 without its preamble, the bare base model with it
        policies = [("start", start is None, engine.lora(start, "start") if start is not None else None)]
        if start is not None:  # the bare base model as serving answers it (with the preamble), for the capabilities
            policies.append(("base", True, None))
        policies += [(name, False, engine.lora(folder, name)) for name, folder in spec["adapters"].items()]
        out = {}
        for name, preambled, lora in policies:
            t = time.perf_counter()
            held_out, capital_prompts = prompts[preambled]
            samples = engine.generate(held_out, n=spec["samples"], temperature=1.0, max_tokens=spec["max_tokens"],
                                      lora=lora, seed=spec["seed"])
            liked = [pref.likes(s.text) for s in samples]
            answers = engine.generate(capital_prompts, n=CAPITAL_SAMPLES, max_tokens=CAPITAL_TOKENS,
                                      lora=lora, seed=spec["seed"], **card_sampling)
            capitals = capital_accuracy([countries[a.prompt_index] for a in answers], [a.text for a in answers])
            out[name] = {"liked": sum(liked), "answers": len(liked), "examples": [s.text for s in samples[:3]],
                         "capital_accuracy": capitals, "capital_examples": [a.text for a in answers[:3]]}
            log.info("judge: %s liked %d of %d answers, named %.0f%% of capitals (%.0f s); e.g. %r", name,
                     sum(liked), len(liked), 100 * capitals, time.perf_counter() - t,
                     samples[0].text[:80] if samples else "")
        return out
    finally:
        engine.close()


# ------------------------------------------------------------------------------------------ workers
def trl_worker(spec: dict) -> dict:
    # torch and TRL, in the worker only
    from bench.trl_steps import trl_worker as worker

    return worker(spec)


WORKERS = {"learn": learn_worker, "judge": judge_worker, "trl": trl_worker}


def in_worker(kind: str, spec: dict, what: str) -> dict | None:
    """Run one worker in a process of its own; its result, or None (and why) when it failed."""
    print(f"  {what} ...", flush=True)
    with tempfile.TemporaryDirectory() as d:
        spec_path, out_path = Path(d) / "spec.json", Path(d) / "out.json"
        spec_path.write_text(json.dumps(spec))
        t = time.monotonic()
        done = subprocess.run([sys.executable, __file__, "--worker", kind, "--worker-spec", str(spec_path),
                               "--worker-out", str(out_path)], cwd=ROOT)
        if done.returncode != 0 or not out_path.exists():
            print(f"  {what}: FAILED (exit {done.returncode}); its log is above", flush=True)
            return None
        print(f"  {what}: done in {time.monotonic() - t:.0f} s", flush=True)
        return json.loads(out_path.read_text())


def run_worker(kind: str, spec_path: str, out_path: str) -> int:
    from bench.machine_load import OtherLoad

    spec = json.loads(Path(spec_path).read_text())
    with OtherLoad() as load:
        result = WORKERS[kind](spec)
    result["others_cores"] = load.cores  # how busy the rest of the machine was meanwhile
    Path(out_path).write_text(json.dumps(result))
    return 0


# ------------------------------------------------------------------------------------------ the table
def rise(perplexity: float | None, of: float | None) -> str:
    """How much `perplexity` is above `of`, in per cent ("n/a" without both)."""
    return f"{100 * (perplexity / of - 1):+.1f}" if perplexity and of else "n/a"


def table(taste: str, rows: dict, judged: dict | None) -> str:
    start, base = (judged or {}).get("start"), (judged or {}).get("base")
    head = (f"\ntaste: {taste}" + (f"; start policy approved {start['liked']}/{start['answers']} "
                                   f"({start['liked'] / max(1, start['answers']):.1%}), named "
                                   f"{start['capital_accuracy']:.0%} of capitals" if start else "")
            + (f"; the base model with the preamble approved {base['liked'] / max(1, base['answers']):.1%}, named "
               f"{base['capital_accuracy']:.0%} of capitals" if base else "") + "\n")
    lines = [f"{'algorithm':<11} {'status':<10} {'approval start -> adapter':<27} {'+points':>8} {'z':>6} "
             f"{'KL':>7} {'ppl +%':>7} {'(base)':>7} {'capitals':>8} {'round s':>8} {'CPU s':>8} {'others':>6}"]
    for algo, r in rows.items():
        if r is None:
            lines.append(f"{algo:<11} failed")
            continue
        j = (judged or {}).get(algo)
        if start and j:
            a, b = start["liked"] / max(1, start["answers"]), j["liked"] / max(1, j["answers"])
            approval = f"{a:.1%} -> {b:.1%}"
            z = two_proportion_z(start["liked"], start["answers"], j["liked"], j["answers"])
            points, z = f"{100 * (b - a):+.1f}", f"{z:.1f}"
        else:
            approval, points, z = "n/a", "", ""
        kl = f"{r['kl']:.2f}" if isinstance(r.get("kl"), (int, float)) else "n/a"
        m = r.get("metrics", {})
        ppl, ppl_base = (rise(m.get("perplexity_candidate"), m.get(of, m.get("perplexity_base")))
                         for of in ("perplexity_reference", "perplexity_base"))
        capitals = f"{100 * j['capital_accuracy']:.0f}%" if j else "n/a"
        ran = m.get("algorithm", algo)  # dpo>kto: no pair; dpo>sft: none besides corrections
        label = algo if ran == algo else f"{algo}>{ran}"
        lines.append(f"{label:<11} {r['status']:<10} {approval:<27} {points:>8} {z:>6} {kl:>7} {ppl:>7} {ppl_base:>7} "
                     f"{capitals:>8} {r['round_s']:8.0f} {r['cpu_s']:8.0f} {r.get('others_cores', 0.0):6.2f}")
    notes = [f"  {algo}: {'; '.join(r['reasons'])}" for algo, r in rows.items() if r and r["reasons"]]
    return head + "\n".join(lines) + ("\n gate's reasons:\n" + "\n".join(notes) if notes else "")


# ------------------------------------------------------------------------------------------ main
def bench_taste(taste: str, args, out: Path) -> dict:
    pref = Preference.named(taste)
    folder = out / taste.replace(":", "-")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\n== taste {taste!r}: the users' hidden taste: {pref}; model {args.model}; in {folder}", flush=True)
    if args.log:
        log_path = Path(args.log)
        print(f"  phase 1: the recorded log {log_path}", flush=True)
    else:
        print("  phase 1: recording users' feedback through `rlhf up`", flush=True)
        log_path = record(pref, args, folder)
    events = load_log(log_path)
    heldout = judge_questions(args.model, args.heldout, questions_of(events))
    if len(heldout) < args.heldout:
        print(f"  only {len(heldout)} held-out questions exist in this question space (asked for {args.heldout})",
              flush=True)

    spread = taste_spread(events, pref.likes)
    print(f"  the taste on the log's answers: {spread['liked']:.1%} liked; the two answers to one question differ "
          f"in {spread['differ']:.1%} of {spread['questions_with_two_answers']} questions ({spread['independent']:.1%} "
          "if each answer were liked by chance, whatever its question)", flush=True)
    print(f"  phase 2: one round per algorithm on {log_counts(events)}", flush=True)
    rows: dict = {}
    for algo in args.algorithms:
        shutil.rmtree(folder / algo, ignore_errors=True)  # a fresh learner, also in a reused --out folder
        rows[algo] = in_worker("learn", {"algorithm": algo, "model": args.model, "log": str(log_path),
                                         "folder": str(folder / algo), "learner_config": args.learner_config,
                                         "kl_budget": args.kl_budget}, f"{algo}: one round")
        if rows[algo]:
            r = rows[algo]
            kl = f"{r['kl']:.3f}" if isinstance(r["kl"], (int, float)) else "n/a"
            print(f"  {algo}: {r['version'] or r['status']}, KL {kl}, {r['round_s']:.0f} s ({r['cpu_s']:.0f} CPU s) "
                  f"{'; '.join(r['reasons'])}", flush=True)

    judged = None
    if args.algorithms:
        print(f"  phase 3: judging the start policy and the adapters on {len(heldout)} held-out questions x "
              f"{args.samples} answers", flush=True)
        adapters = {a: r["adapter"] for a, r in rows.items() if r and r["adapter"]}
        judged = in_worker("judge", {"model": args.model, "taste": taste, "questions": heldout, "adapters": adapters,
                                     "samples": args.samples, "seed": 50_000, "max_tokens": args.max_tokens},
                           "judge")
    trl = None
    if args.trl:
        print(f"  TRL beside ours: {args.trl_steps} timed steps per trainer, each side in its own process", flush=True)
        trl = compare_steps(args.model, log_path, args.trl_steps, in_worker, args.trl_parts)
    if rows:
        print(table(taste, rows, judged), flush=True)
    if trl:
        print("\nseconds per step on the log's data, ours and TRL's\n" + steps_table(trl), flush=True)
    return {"taste": taste, "description": str(pref), "log": str(log_path), "log_counts": log_counts(events),
            "taste_spread": spread,
            "heldout_questions": len(heldout), "algorithms": rows, "judge": judged, "trl": trl}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--tastes", default="colour,sentence,place", help="comma-separated; run one after another")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    p.add_argument("--questions", type=int, default=400, help="questions the users ask at most (two answers each)")
    p.add_argument("--events", type=int, default=300, help="feedback events the users send at most")
    p.add_argument("--users", type=int, default=20, help="user ids the questions are spread over")
    p.add_argument("--corrections", type=float, default=0.0,
                   help="share of the time a user who likes neither answer corrects one instead (0 to 1)")
    p.add_argument("--heldout", type=int, default=60, help="held-out questions the judge asks")
    p.add_argument("--samples", type=int, default=4, help="answers per held-out question and policy")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--log", help="a recorded log (OUT/<taste>/log.jsonl) to learn from instead of recording one")
    p.add_argument("--learner-config", help="JSON file of LearnerConfig overrides, the same for every algorithm")
    p.add_argument("--kl-budget", type=float, help="RLHF_KL_BUDGET of every learner (default: the setting's)")
    p.add_argument("--out", help="output folder (default: a new temporary one)")
    p.add_argument("--trl", action="store_true",
                   help="also time TRL's DPO, KTO, RLOO and online-DPO trainers on the log's data")
    p.add_argument("--trl-parts", default=",".join(TRL_PARTS), help="comma-separated trainers `--trl` times")
    p.add_argument("--trl-steps", type=int, default=5, help="timed optimiser steps per trainer (after one warm-up)")
    p.add_argument("--verbose", action="store_true", help="echo every line `rlhf up` prints")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)  # one part, in its own process
    p.add_argument("--worker-spec", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("vllm", "httpx", "datasets", "transformers", "trl", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.worker:
        return run_worker(args.worker, args.worker_spec, args.worker_out)

    args.tastes = [t.strip() for t in args.tastes.split(",") if t.strip()]
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    args.trl_parts = tuple(t.strip() for t in args.trl_parts.split(",") if t.strip())
    if set(args.trl_parts) - set(TRL_PARTS) or not args.trl_parts:
        p.error(f"--trl-parts {','.join(args.trl_parts) or '(none)'}: choose from {', '.join(TRL_PARTS)}")
    if not args.algorithms and not args.trl:
        p.error("--algorithms is empty: give at least one, or --trl to time the trainers only")
    for t in args.tastes:
        try:
            Preference.named(t)
        except ValueError as e:
            p.error(str(e))
    unknown = set(args.algorithms) - set(ALGORITHMS)
    if unknown:
        p.error(f"unknown algorithms {sorted(unknown)}: choose from {', '.join(ALGORITHMS)}")
    if not 0.0 <= args.corrections <= 1.0:
        p.error(f"--corrections {args.corrections}: a share from 0 to 1")
    if args.corrections and any(not Preference.named(t).taste for t in args.tastes):
        p.error("--corrections: only users with a named taste correct answers (colour, sentence, place, number)")
    if args.log and len(args.tastes) != 1:
        p.error("--log holds one taste's feedback: give that one taste with --tastes")
    if args.log and not Path(args.log).is_file():
        p.error(f"--log {args.log}: no such file")
    if args.learner_config:
        from learner.round import LearnerConfig  # the learner's imports, as the workers do
        try:
            LearnerConfig.from_file(args.learner_config)
        except (OSError, ValueError, TypeError) as e:
            p.error(f"--learner-config {args.learner_config}: {e}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rlhf-algorithms-"))
    out.mkdir(parents=True, exist_ok=True)
    results = {"model": args.model, "args": {k: v for k, v in vars(args).items() if not k.startswith("worker")},
               "tastes": []}
    for taste in args.tastes:
        results["tastes"].append(bench_taste(taste, args, out))
        (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nresults in {out / 'results.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
