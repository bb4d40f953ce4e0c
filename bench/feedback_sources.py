"""Does adding users' corrected answers, or an AI judge's choices, to a few human events help?

    .venv/bin/python bench/feedback_sources.py                       # gemma-3-270m, 100 human events
    .venv/bin/python bench/feedback_sources.py --model tiny --taste word:happy --human-events 100 \
        --demonstrations 50 --judge-pairs 60 --heldout 40 --learner-config fast.json   # a check (minutes)

A simulated user with one hidden taste (--taste, harness/user.py and harness/tastes.py: by default the
answer names a colour) gives feedback on two base-model answers per question (vLLM, temperature 1),
until --human-events thumbs and pairwise choices. Three learners then run one round each, every one
fresh (its own store and adapter folder), in a process of its own, with the same split of users into
training and held-out, the same algorithm (--algorithm) and the same human events:

- human: those events only;
- human+demonstrations: plus --demonstrations corrected answers: the user rewrites other answers it
  does not like so that it likes them (bench/simulated_feedback.py `correction`), as a user of the
  chat page's "improve this answer" would;
- human+judge: plus the AI judge's choices on --judge-pairs other pairs of logged answers. The judge
  is asked as `rlhf judge` asks (judge/verdict.py VerdictClient, both orders, kept only when they
  agree) with a rubric that states the taste: by default our own serving of the base model (`rlhf
  serve`, its own broker; one letter by structured outputs), or any OpenAI-compatible --judge-url.
  Its choices become Pairwise events with source "ai", user ai:judge, sealed like the judge's,
  weighed by the learner at RLHF_JUDGE_WEIGHT.

Measured: the share of answers the taste likes ("approval") on --heldout questions the rounds never
saw, 4 answers each at temperature 1 with a fixed seed, from the base model and from each arm's
published adapter (a rejected round's candidate is measured too, and marked as not published); the
difference from the base model in points and its z; each round's status and reasons (a rejected
round is a result, not an error); the judge's agreement with the taste (how often it picked the
answer the taste likes, among the pairs the taste tells apart). On the tiny model (random weights)
the judge's verdicts are noise: it gives a letter because the choice is constrained to A or B, not
because it read the rubric (in the check run it gave the same letter in both orders for all 60 pairs,
so every verdict was inconsistent and its arm got no AI choices); a run on the tiny model only checks
that the benchmark works (`--judge-url` at harness/rule_judge.py, which prefers the longer answer,
gives that arm AI choices to train on). Whether the 270M base model is a good enough judge to help
is what its agreement figure answers.

Held-out questions come from the same templates as the training ones (harness/questions.py; the
tiny model's own prompts for tiny) with another seed, so some repeat training questions: approval is
measured on fresh answers, not unseen topics. A benchmark, not a test: on the default model and two
CPU cores it takes hours; its numbers are from one run on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.feedback_log import load_log, save_log  # noqa: E402
from bench.simulated_feedback import answer_pairs, approvals, corrected_answers, human_feedback  # noqa: E402
from feedback.event_hmac import sealed  # noqa: E402
from feedback.schema import TOPIC_FEEDBACK, Pairwise  # noqa: E402
from harness.broker import start_broker  # noqa: E402
from harness.proportions import two_proportion_z  # noqa: E402
from harness.questions import questions  # noqa: E402
from harness.server import ServerProcess  # noqa: E402
from harness.tastes import TASTES  # noqa: E402
from harness.user import Preference  # noqa: E402
from judge.main import JUDGE_CLIENT, JUDGE_USER  # noqa: E402
from judge.verdict import VerdictClient  # noqa: E402
from learner.round import Learner, LearnerConfig  # noqa: E402
from learner.tokenization import load_tokenizer, stop_strings  # noqa: E402
from rlhf.models.dialogues import tiny_prompts  # noqa: E402
from rlhf.models.registry import model_display_name, resolve_model  # noqa: E402
from rlhf.models.sizing import context_length  # noqa: E402
from rlhf.settings import Settings  # noqa: E402

ARMS = {"human": ["human"], "human+demonstrations": ["human", "demonstrations"],
        "human+judge": ["human", "judge_answers", "judge_choices"]}
# The key of every arm's split of users (learner/store.py split_of): this one holds out 4 of the 20 simulated
# users (user1, 16, 17, 18), the share LearnerConfig.heldout_fraction (0.2) expects. An earlier key held out 2, and
# with 100 human events the round had 3 held-out pairs and 8 thumbs: too few to measure the reward model.
SPLIT_KEY = "bench/feedback_sources.py: split key 3"
SEEDS = {"human": 1, "demonstrations": 2, "judge": 3, "heldout": 999}  # each source's questions: a draw of its own


def ask_list(model: str, n: int, seed: int) -> list[str]:
    """Questions for the model: the tiny model's own prompts for tiny, plain questions otherwise."""
    return tiny_prompts(n, seed=seed) if model == "tiny" else questions(n, seed=seed)


def arm_settings(args) -> dict:
    """The settings every arm's learner shares beside its folders (the rest: RLHF_* or the defaults)."""
    budget = {} if args.kl_budget is None else {"kl_budget": args.kl_budget}
    return {"learner_algorithm": args.algorithm, **budget}


def taste(args) -> Preference:
    return Preference.named(args.taste)


def rubric(pref: Preference) -> str:
    """The judge's rubric: the taste, said plainly."""
    if pref.taste:
        rule = TASTES[pref.taste].description
    elif pref.word:
        rule = f"contains the word {pref.word!r}"
    else:
        rule = f"has at most {pref.max_words} words"
    return (f"You compare two answers to the same question. The better answer is the one of which this is "
            f"{'false' if pref.opposite else 'true'}: it {rule}. Nothing else matters.")


# ------------------------------------------------------------------------------ workers (own processes)
def engine_for(args):
    """A vLLM engine on the model, for sampling answers (vLLM is imported only by the workers that sample)."""
    from learner.rollout import RolloutEngine

    path = resolve_model(args.model)
    engine = RolloutEngine(path, max_model_len=context_length(path, args.max_model_len), stop=stop_strings(path),
                           kv_cache_gb=args.kv_cache_gb, max_loras=2)
    return engine, load_tokenizer(path)


def sample_worker(args, state: Path) -> dict:
    """The users' events of each source, on base-model answers, into state/*.jsonl."""
    pref, model, mt = taste(args), model_display_name(args.model), args.max_tokens
    engine, tok = engine_for(args)
    try:
        human, counts = human_feedback(engine, tok, ask_list(args.model, 3 * args.human_events, SEEDS["human"]), pref,
                                       limit=args.human_events, seed=SEEDS["human"], model=model, max_tokens=mt)
        demos = corrected_answers(engine, tok, ask_list(args.model, 4 * args.demonstrations, SEEDS["demonstrations"]),
                                  pref, limit=args.demonstrations, seed=SEEDS["demonstrations"], model=model,
                                  max_tokens=mt)
        answers, pairs = answer_pairs(engine, tok, ask_list(args.model, 2 * args.judge_pairs, SEEDS["judge"]),
                                      limit=args.judge_pairs, seed=SEEDS["judge"], model=model, max_tokens=mt)
    finally:
        engine.close()
    save_log(state / "human.jsonl", human)
    save_log(state / "demonstrations.jsonl", demos)
    save_log(state / "judge_answers.jsonl", answers)
    (state / "judge_pairs.json").write_text(json.dumps([[a.response_id, b.response_id] for a, b in pairs]))
    return {**counts, "demonstrations": sum(1 for t, _ in demos if t == TOPIC_FEEDBACK), "judge_pairs": len(pairs)}


def arm_worker(args, state: Path, arm: str) -> dict:
    """One fresh learner, one round on the arm's events; its result."""
    folder = state / "arms" / arm
    settings = Settings(model=args.model, data_dir=folder / "data", adapter_dir=folder / "adapters",
                        max_model_len=args.max_model_len, kafka_bootstrap="127.0.0.1:9",  # publishing only queues
                        learner_split_key=SPLIT_KEY, **arm_settings(args))
    cfg = LearnerConfig.from_file(args.learner_config) if args.learner_config else LearnerConfig()
    learner = Learner(settings, cfg)
    try:
        events = [ev for source in ARMS[arm] for ev in load_log(state / f"{source}.jsonl")]
        stored = learner.store.ingest([(t, sealed(e, settings.event_hmac_key)) for t, e in events])
        if stored.refused or stored.pending:  # the benchmark's own events: any loss is its bug
            raise SystemExit(f"{arm}: {stored.refused} events refused, {stored.pending} feedback events without "
                             f"their answer")
        result = learner.run_round()
    finally:
        learner.close()
    adapter = None
    if result.version:
        name, number = result.version.split("@")
        adapter = str(settings.adapter_dir / name / number)
    elif result.candidate_dir:
        adapter = str(result.candidate_dir)
    return {"status": result.status, "reasons": result.reasons, "version": result.version, "adapter": adapter,
            "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str, type(None)))}}


def heldout_worker(args, state: Path) -> dict:
    """Approval of the base model and of each arm's adapter (or rejected candidate) on held-out questions."""
    arms = json.loads((state / "arms.json").read_text())
    held = ask_list(args.model, args.heldout, SEEDS["heldout"])
    pref = taste(args)
    engine, tok = engine_for(args)
    try:
        def liked(lora=None) -> list[bool]:
            return approvals(engine, tok, held, pref, lora=lora, n=4, seed=50_000, max_tokens=args.max_tokens)

        out = {"base": liked()}
        for arm, r in arms.items():
            if r.get("adapter") and Path(r["adapter"]).exists():
                out[arm] = liked(engine.lora(r["adapter"], arm.replace("+", "-")))
    finally:
        engine.close()
    return out


WORKERS = {"sample": sample_worker, "heldout": heldout_worker}


def run_worker(part: str, state: Path, what: str) -> dict:
    """This script with --worker in a process of its own (its own memory, threads and engine); its JSON result."""
    print(f"-- {what}", flush=True)
    t = time.monotonic()
    out = state / f"worker-{part.replace('+', '-')}.json"
    done = subprocess.run([sys.executable, __file__, "--worker", part, "--state", str(state)])
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"{what} failed (exit {done.returncode}); its log is above")
    print(f"   {what}: {time.monotonic() - t:.0f} s", flush=True)
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------ the judge
async def judge_pairs(url: str, model: str, pref: Preference, pairs: list, *, letters_only: bool,
                      concurrency: int = 4) -> tuple[list, dict]:
    """Both orders of every pair asked of the judge; (Pairwise events with source ai, the tallies)."""
    client = VerdictClient(url, model, rubric(pref), timeout_s=600, letters_only=letters_only)
    gate = asyncio.Semaphore(concurrency)
    tally = {"decided": 0, "inconsistent": 0, "unparsed": 0, "error": 0, "taste_tells_apart": 0,
             "decided_where_taste_tells_apart": 0, "agrees_with_taste": 0}

    async def one(a, b):
        async with gate:
            v = await client.compare([m.model_dump() for m in a.messages], a.response, b.response)
        tally[v.outcome] += 1
        la, lb = pref.likes(a.response), pref.likes(b.response)
        tally["taste_tells_apart"] += la != lb
        if v.outcome != "decided":
            return None
        if la != lb:
            tally["decided_where_taste_tells_apart"] += 1
            tally["agrees_with_taste"] += (v.winner == "a") == la
        chosen, rejected = (a, b) if v.winner == "a" else (b, a)
        return (TOPIC_FEEDBACK, Pairwise(chosen_response_id=chosen.response_id,
                                         rejected_response_id=rejected.response_id,
                                         conversation_id=chosen.conversation_id, user=JUDGE_USER, client=JUDGE_CLIENT,
                                         source="ai"))

    try:
        made = await asyncio.gather(*(one(a, b) for a, b in pairs))
    finally:
        await client.close()
    return [ev for ev in made if ev is not None], tally


def run_judge(args, state: Path) -> dict:
    """Ask the judge about every pair and write its choices: --judge-url, or our own serving of the base model
    (`rlhf serve` with a broker of its own, asked for exactly one letter, as `rlhf judge` asks it)."""
    by_id = {ev.response_id: ev for _, ev in load_log(state / "judge_answers.jsonl")}
    pairs = [(by_id[a], by_id[b]) for a, b in json.loads((state / "judge_pairs.json").read_text())]
    t = time.monotonic()
    if args.judge_url:
        print(f"-- the judge: {args.judge_model} at {args.judge_url}, {len(pairs)} pairs, both orders", flush=True)
        choices, tally = asyncio.run(judge_pairs(args.judge_url, args.judge_model, taste(args), pairs,
                                                 letters_only=False))
    else:
        print(f"-- the judge: our serving of {args.model}, {len(pairs)} pairs, both orders", flush=True)
        broker = start_broker(state / "judge" / "broker.log")
        server = ServerProcess({"RLHF_MODEL": args.model, "RLHF_DATA_DIR": str(state / "judge" / "data"),
                                "RLHF_ADAPTER_DIR": str(state / "judge" / "adapters"),
                                "RLHF_MAX_MODEL_LEN": str(args.max_model_len),
                                "RLHF_KAFKA_BOOTSTRAP": broker.bootstrap, "RLHF_LOG_LEVEL": "WARNING"},
                               state / "judge" / "serve.log")
        try:
            server.start(1800)
            choices, tally = asyncio.run(judge_pairs(server.url + "/v1", model_display_name(args.model),
                                                     taste(args), pairs, letters_only=True))
        finally:
            server.stop()
            broker.stop()
    save_log(state / "judge_choices.jsonl", choices)
    n = tally["decided_where_taste_tells_apart"]
    tally["agreement"] = tally["agrees_with_taste"] / n if n else None
    print(f"   the judge: {time.monotonic() - t:.0f} s; {tally}", flush=True)
    return tally


# ------------------------------------------------------------------------------ report
def figure(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else "-"


def report(args, sampled: dict, judge: dict, arms: dict, liked: dict) -> tuple[str, dict]:
    base = liked["base"]
    rows, figures = [], {}
    head = (f"{'arm':<22} {'status':<10} {'approval':>9} {'vs base':>9} {'z':>6} {'KL':>6} {'RM acc':>6}  "
            f"{'examples people/ai/corrections':<31} reasons")
    rows.append(f"{'base model':<22} {'':<10} {sum(base) / len(base):9.1%}")
    for arm, r in arms.items():
        m, hits = r["metrics"], liked.get(arm)
        approval = z = diff = None
        if hits:
            approval, diff = sum(hits) / len(hits), 100 * (sum(hits) / len(hits) - sum(base) / len(base))
            z = two_proportion_z(sum(base), len(base), sum(hits), len(hits))
        note = "" if r["status"] == "published" or not hits else " (candidate, not published)"
        examples = f"{m.get('examples_user', '-')}/{m.get('examples_ai', '-')}/{m.get('examples_demonstration', '-')}"
        rows.append(f"{arm:<22} {r['status']:<10} "
                    + (f"{approval:9.1%} {diff:+8.1f}p {z:6.1f}" if hits else f"{'-':>9} {'-':>9} {'-':>6}")
                    + f" {figure(m.get('kl_candidate')):>6} {figure(m.get('rm_accuracy')):>6}  {examples:<31} "
                    + f"{'; '.join(r['reasons'])}{note}")
        figures[arm] = {"status": r["status"], "reasons": r["reasons"], "version": r["version"],
                        "approval": approval, "points_vs_base": diff, "z": z, "samples": len(hits or []),
                        "published": r["status"] == "published", "metrics": m}
    agreement = judge.get("agreement")
    lines = [head, *rows, "",
             f"human events {sampled['pairwise'] + sampled['thumbs']} ({sampled['pairwise']} pairwise, "
             f"{sampled['thumbs']} thumbs on {sampled['questions']} questions); corrected answers "
             f"{sampled['demonstrations']}; judge pairs {sampled['judge_pairs']}",
             f"judge verdicts: {judge['decided']} decided, {judge['inconsistent']} inconsistent (the orders "
             f"disagreed), {judge['unparsed']} unparsed, {judge['error']} errors; agreement with the taste "
             + (f"{agreement:.1%} on {judge['decided_where_taste_tells_apart']} decided pairs the taste tells apart"
                if agreement is not None else "n/a (no decided pair the taste tells apart)"),
             f"approval: share of {len(base)} answers per policy ({args.heldout} held-out questions x 4, temperature "
             f"1, fixed seed) the taste likes; z: two-proportion, pooled"]
    return "\n".join(lines), {"base_approval": sum(base) / len(base), "base_samples": len(base), "arms": figures}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--taste", default="colour", help="the user's taste: colour, sentence, place (harness/tastes.py), "
                   "word:WORD or max-words:K")
    p.add_argument("--human-events", type=int, default=100, help="thumbs and pairwise events every arm gets")
    p.add_argument("--demonstrations", type=int, default=50, help="corrected answers the second arm adds")
    p.add_argument("--judge-pairs", type=int, default=200, help="answer pairs the judge is asked about (third arm)")
    p.add_argument("--judge-url", help="an OpenAI-compatible API (ending in /v1) to ask instead of our own serving "
                   "of the base model, as RLHF_JUDGE_URL")
    p.add_argument("--judge-model", default="", help="the model --judge-url serves, as RLHF_JUDGE_MODEL")
    p.add_argument("--heldout", type=int, default=60, help="held-out questions approval is measured on")
    p.add_argument("--algorithm", default="dpo", help="RLHF_LEARNER_ALGORITHM of every arm")
    p.add_argument("--learner-config", help="JSON file of learner options (RLHF_LEARNER_CONFIG); default: defaults")
    p.add_argument("--kl-budget", type=float, help="RLHF_KL_BUDGET of every arm (default: the setting's)")
    p.add_argument("--max-tokens", type=int, default=48, help="answer length, tokens")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--kv-cache-gb", type=float, default=0.5, help="KV cache of this script's sampling engine")
    p.add_argument("--out", help="write the figures as JSON here (default: in the state folder)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one part in this process: sample, heldout, or an arm...
    p.add_argument("--state", help=argparse.SUPPRESS)   # ...reading and writing this folder
    args = p.parse_args()
    if args.worker:
        return worker_main(args.worker, Path(args.state))
    try:
        taste(args)
    except ValueError as e:
        p.error(str(e))
    if args.learner_config:
        args.learner_config = str(Path(args.learner_config).resolve())
    try:
        settings = Settings(**arm_settings(args))
    except ValueError as e:
        p.error(f"--algorithm or --kl-budget: {e}")
    state = Path(tempfile.mkdtemp(prefix="rlhf-feedback-sources-"))
    (state / "args.json").write_text(json.dumps(vars(args)))
    print(f"model {args.model}; the user likes answers that are {taste(args)}; algorithm {args.algorithm}; "
          f"RLHF_JUDGE_WEIGHT {settings.judge_weight} (max share {settings.judge_max_share}); KL budget "
          f"{settings.kl_budget}; state in {state}", flush=True)
    t0 = time.monotonic()
    sampled = run_worker("sample", state, "sampling the users' events on base-model answers")
    print(f"   {sampled}", flush=True)
    judge = run_judge(args, state)
    arms = {}
    for arm in ARMS:
        arms[arm] = run_worker(arm, state, f"arm {arm}: one round")
        print(f"   {arm}: {arms[arm]['status']} {arms[arm]['reasons']} {arms[arm]['version'] or ''}", flush=True)
        (state / "arms.json").write_text(json.dumps(arms))
    liked = run_worker("heldout", state, "approval on held-out questions")
    table, figures = report(args, sampled, judge, arms, liked)
    print("\n" + table, flush=True)
    out = Path(args.out) if args.out else state / "feedback_sources.json"
    out.write_text(json.dumps({"args": vars(args), "sampled": sampled, "judge": judge, "rubric": rubric(taste(args)),
                               "judge_weight": settings.judge_weight, "kl_budget": settings.kl_budget, **figures,
                               "seconds": time.monotonic() - t0}, indent=2))
    print(f"\nfigures in {out}; total {time.monotonic() - t0:.0f} s", flush=True)
    return 0


def worker_main(part: str, state: Path) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("vllm", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = argparse.Namespace(**json.loads((state / "args.json").read_text()))
    result = arm_worker(args, state, part) if part in ARMS else WORKERS[part](args, state)
    (state / f"worker-{part.replace('+', '-')}.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
