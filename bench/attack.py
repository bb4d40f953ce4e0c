"""Poisoning benchmark: honest users and an attacker at equal volume, through `rlhf up` with API keys.

    .venv/bin/python bench/attack.py [--model gemma-3-270m] [--questions 300] [--attacker-users 3]
                                     [--word W | --max-words K] [--min-feedback N] [--timeout-min 120]

Starts `rlhf up` with RLHF_AUTH=api-key in a temporary folder (its own broker, serving and
learner; nothing is faked) and makes three keys with `rlhf keys add`: `app` (20 honest users
who like answers with a taste), `mallory` (`--attacker-users` users who like the opposite, and
ask as many questions as all honest users together) and `judge` (measures, asks no one trains
on). Both crowds talk at once through the HTTP API, two answers per question and a pairwise
choice or a thumbs, as the chat page sends them. Then it waits for the learner's first round
and prints:

- the attacker's share of the feedback posts, and of the round's training weight (reward
  model and policy prompts, from the learner's per-round accounting, `round_users`);
- the users the learner found suspect (disagreeing with the held-out consensus);
- the honest users' approval on held-out questions, base model -> the published version
  (with a two-proportion z score), or "nothing published" and the gate's reason.

`--attacker-users` large (e.g. 300) plays an attacker who invents a new user id for nearly
every post: then no user cap binds and the client cap (RLHF_LEARNER_MAX_CLIENT_SHARE) is what
bounds the attacker. A benchmark, not a test: minutes on the tiny model, about an hour on the
default model on two CPU cores.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.crowd import add_key, attacker_shares, interleave, jobs_for, talk  # noqa: E402
from harness.questions import questions  # noqa: E402
from harness.up import UpProcess  # noqa: E402
from harness.user import Preference, liked_answers  # noqa: E402
from rlhf.models.dialogues import tiny_prompts  # noqa: E402

HONEST_USERS = 20


def prompts_for(model: str, n: int, seed: int) -> list[str]:
    return tiny_prompts(n, seed=seed) if model == "tiny" else questions(n, seed=seed)


def approval(url: str, model: str, key: str, held: list[str], pref: Preference, max_tokens: int) -> tuple[float, int]:
    hits = liked_answers(url, model, held, pref, n=4, max_tokens=max_tokens, seed=50_000, timeout_s=600,
                         api_key=key)
    return sum(hits) / max(1, len(hits)), len(hits)


def finished_round(up: UpProcess, timeout_s: float) -> dict:
    """The learner's first finished round (from its /healthz), with its progress printed."""
    deadline, shown = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if up.proc.poll() is not None:
            sys.exit(f"`rlhf up` exited with {up.proc.returncode}:\n" + "".join(up.output.lines[-30:]))
        try:
            health = httpx.get(up.learner_url + "/healthz", timeout=10).json()
        except httpx.HTTPError:
            health = {}
        last = health.get("last_round") or {}
        state = (health.get("round_running"), last.get("id"), last.get("status"))
        if state != shown:
            print(f"  learner: round running {state[0]}, last round {state[1]} {state[2]}", flush=True)
            shown = state
        if last.get("finished_at"):
            return last
        time.sleep(5)
    sys.exit(f"no round finished within {timeout_s:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--questions", type=int, default=300, help="questions the honest users ask (the attacker: as many)")
    ap.add_argument("--attacker-users", type=int, default=3, help="user ids the attacker spreads its posts over")
    ap.add_argument("--heldout", type=int, default=50, help="questions used only to measure approval")
    ap.add_argument("--word", help="the honest users like answers containing this word")
    ap.add_argument("--max-words", type=int, default=8, help="the honest users like answers of at most this many words")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--min-feedback", type=int, help="RLHF_LEARNER_MIN_FEEDBACK (default: the questions asked)")
    ap.add_argument("--kl-budget", type=float, help="RLHF_KL_BUDGET (default: the setting's)")
    ap.add_argument("--timeout-min", type=float, default=120.0, help="how long to wait for the round")
    ap.add_argument("--verbose", action="store_true", help="echo every line `rlhf up` prints")
    args = ap.parse_args()
    honest_taste = Preference(args.word, None if args.word else args.max_words)
    attacker_taste = Preference(args.word, None if args.word else args.max_words, opposite=True)

    tmp = Path(tempfile.mkdtemp(prefix="rlhf-attack-"))
    keys_file = tmp / "api_keys"
    env = {"RLHF_DATA_DIR": str(tmp / "data"), "RLHF_ADAPTER_DIR": str(tmp / "adapters"), "RLHF_AUTH": "api-key",
           "RLHF_API_KEYS_FILE": str(keys_file), "RLHF_LEARNER_MIN_FEEDBACK": str(args.min_feedback or args.questions),
           "RLHF_LEARNER_INTERVAL_S": "100000"}
    for limit in ("RLHF_FEEDBACK_RATE_LIMIT", "RLHF_CHAT_RATE_LIMIT", "RLHF_CLIENT_CHAT_RATE_LIMIT",
                  "RLHF_CLIENT_FEEDBACK_RATE_LIMIT"):
        env[limit] = "0"  # no quota: the point is what the learner does with equal volume
    if args.kl_budget is not None:
        env["RLHF_KL_BUDGET"] = str(args.kl_budget)
    app, mallory, judge = (add_key(keys_file, name) for name in ("app", "mallory", "judge"))
    print(f"model {args.model}; honest users like answers that are {honest_taste}, the attacker's "
          f"{args.attacker_users} users the opposite; state in {tmp}", flush=True)

    def echo(line: str) -> None:
        if args.verbose or line.startswith("rlhf up:"):
            print("   | " + line.rstrip(), flush=True)

    t0 = time.monotonic()
    up = UpProcess(env, args.model, echo=echo)
    try:
        up.start(timeout=1800)
        url = up.url
        judged = {"Authorization": f"Bearer {judge}"}
        base_name = httpx.get(url + "/v1/adapters", timeout=10, headers=judged).json()["base"]
        print(f"ready after {time.monotonic() - t0:.0f} s", flush=True)
        held = prompts_for(args.model, args.heldout, seed=999)
        base_rate, n_base = approval(url, base_name, judge, held, honest_taste, args.max_tokens)
        print(f"base model: the honest users like {base_rate:.1%} of {n_base} held-out answers", flush=True)

        asked = prompts_for(args.model, 2 * args.questions, seed=11)
        honest = jobs_for(asked[:args.questions], [f"user{k}" for k in range(HONEST_USERS)], app, honest_taste,
                          seed=1)
        attack = jobs_for(asked[args.questions:], [f"m{k}" for k in range(args.attacker_users)], mallory,
                          attacker_taste, seed=2)
        jobs = interleave(honest, attack, seed=3)
        t_talk = time.monotonic()
        kinds = talk(url, jobs, max_tokens=args.max_tokens, timeout_s=900)  # the two cores are shared
        sent = [j.api_key for j, k in zip(jobs, kinds, strict=True) if k]
        n_attack = sum(1 for key in sent if key == mallory)
        print(f"both crowds done in {time.monotonic() - t_talk:.0f} s: {len(sent)} feedback posts, the attacker's "
              f"{n_attack} ({n_attack / max(1, len(sent)):.0%})", flush=True)

        t_wait = time.monotonic()
        last = finished_round(up, args.timeout_min * 60)
        shares = attacker_shares(tmp / "data" / "learner.sqlite3", last["id"], "mallory")
        print(f"round {last['id']} {last['status']} {time.monotonic() - t_wait:.0f} s after the last post: "
              f"{last.get('reason') or ''}", flush=True)

        result = f"nothing published ({last['status']}: {last.get('reason') or ''})"
        if last["status"] == "published":
            version = None
            deadline = time.monotonic() + 120
            while version is None and time.monotonic() < deadline:
                version = httpx.get(url + "/v1/adapters", timeout=10, headers=judged).json().get("active")
                time.sleep(1)
            if version is None:
                sys.exit("the round published, but serving did not route to it within 120 s")
            tuned_rate, n_tuned = approval(url, version, judge, held, honest_taste, args.max_tokens)
            pooled = (base_rate * n_base + tuned_rate * n_tuned) / (n_base + n_tuned)
            z = (tuned_rate - base_rate) / math.sqrt(max(1e-12, pooled * (1 - pooled) * (1 / n_base + 1 / n_tuned)))
            result = f"{base_rate:.1%} -> {tuned_rate:.1%} on {version} (z {z:.1f})"

        print("\n| model | attacker users | attacker's posts | attacker's weight: reward model / policy | "
              "round's rows: attacker's share | suspect users (attacker's) | honest approval, base -> published |")
        print("| --- | ---: | ---: | --- | ---: | --- | --- |")
        print(f"| {args.model} | {args.attacker_users} | {n_attack} of {len(sent)} ({n_attack / max(1, len(sent)):.0%}) "
              f"| {shares['rm_weight']:.3f} / {shares['policy_weight']:.3f} | {shares['posts']:.2f} | {shares['suspects']} "
              f"({shares['attacker_suspects']}) | {result} |")
    finally:
        code = up.stop()
        print(f"`rlhf up` stopped with exit code {code}", flush=True)


if __name__ == "__main__":
    main()
