"""The learner under a brisk stream: a user posting `--rate` feedback events a second for `--minutes`.

    .venv/bin/python bench/stream.py                               # tiny model, 50 events/s, 10 minutes
    .venv/bin/python bench/stream.py --rate 20 --minutes 5 --word happy --learner-config '{"ppo": {"steps": 2}}'

Starts `rlhf up` (its own broker, serving and learner, as a user runs it; nothing is faked) in a
temporary folder with the feedback rate limit off, then plays simulated users with a hidden taste
("the answer contains --word") through the public HTTP API only:

- askers (`--askers` threads) ask questions of the tiny model's world as one of 20 users, two
  answers each (n=2), and queue what the user thinks of them: a thumb on each answer and, where
  the taste tells them apart, a pairwise choice (up to 3 events per question);
- posters send the queued events to /v1/feedback on a fixed schedule of `--rate` a second (open
  loop: a post that is late counts from when it was due); when the askers fall behind the
  schedule, the shortfall is reported, not hidden.

Every `--every` seconds it prints the events posted and their rate over the last interval, the
learner's lag (events serving had acked by the broker that the learner has not stored yet:
serving's `rlhf_events_published_total` minus the learner's `rlhf_learner_events_total`, on
the interactions and feedback topics), its rounds by outcome, and the versions serving has (active, canary).
At the end: whether an adapter was published during the run and when, the lag's largest value
and its value at the end, and each round the learner finished (from its store). The learner runs
with `--learner-config` (default `{"newer_feedback_factor": 0.5}`: a round makes way for newer
data once half as much again has arrived; docs/learner.md, "Bounding a round").

A benchmark, not a test: the two cores are shared by the users, serving, the broker and the
learner, which is the point.
"""

from __future__ import annotations

import argparse
import itertools
import json
import queue
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import get_args

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feedback.schema import TOPIC_FEEDBACK, TOPIC_INTERACTIONS  # noqa: E402
from harness.metrics import metric_total  # noqa: E402
from harness.up import UpProcess  # noqa: E402
from harness.user import Preference, chat  # noqa: E402
from learner.store import STORE_FILE  # noqa: E402
from rlhf.models.dialogues import tiny_prompts  # noqa: E402
from rlhf.settings import LearnerAlgorithm, Settings  # noqa: E402

USERS = 20
EVENT_TOPICS = (TOPIC_INTERACTIONS, TOPIC_FEEDBACK)


def user_events(pref: Preference, refs: list[dict], texts: list[str]) -> list[dict]:
    """What a user with the taste says of two answers: a thumb on each, and a pairwise choice when they differ."""
    liked = [pref.likes(t) for t in texts]
    events = [{"type": "thumbs", **ref, "value": "up" if ok else "down"} for ref, ok in zip(refs, liked)]
    if liked[0] != liked[1]:
        chosen, rejected = (0, 1) if liked[0] else (1, 0)
        events.append({"type": "pairwise", "chosen": refs[chosen], "rejected": refs[rejected]})
    return events


class Stream:
    """Askers fill a queue of feedback events; posters send them on a fixed schedule."""

    def __init__(self, url: str, pref: Preference, rate: float, askers: int, posters: int, max_tokens: int):
        self.url, self.pref, self.rate, self.askers, self.max_tokens = url, pref, rate, askers, max_tokens
        self.events: queue.Queue = queue.Queue(maxsize=int(rate * 30))
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ticket = itertools.count()
        self.posted = self.failed = self.late = self.asked = 0
        self.errors: list[str] = []
        self.questions = tiny_prompts(5000, seed=7)
        self.threads = ([threading.Thread(target=self.ask, args=(i,), daemon=True) for i in range(askers)]
                        + [threading.Thread(target=self.post, daemon=True) for _ in range(posters)])

    def start(self) -> None:
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()

    def ask(self, worker: int) -> None:
        rng = random.Random(worker)
        with httpx.Client(base_url=self.url, timeout=120) as client:
            for i in itertools.count(worker, self.askers):  # each asker its own seeds
                if self.stop.is_set():
                    return
                try:
                    answers = chat(client, rng.choice(self.questions), n=2, seed=i, user=f"user{i % USERS}",
                                   max_tokens=self.max_tokens)
                except httpx.HTTPError as e:
                    self.note(f"chat: {e!r}")
                    continue
                with self.lock:
                    self.asked += 1
                for event in user_events(self.pref, answers.refs, answers.texts):
                    while not self.stop.is_set():
                        try:
                            self.events.put(event, timeout=1)
                            break
                        except queue.Full:
                            continue

    def post(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                due = self.t0 + next(self.ticket) / self.rate
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                try:
                    event = self.events.get(timeout=5)
                except queue.Empty:
                    continue  # the askers are behind: this slot goes unused (reported as a shortfall)
                r = client.post("/v1/feedback", json=event)
                with self.lock:
                    if r.status_code == 202:
                        self.posted += 1
                        self.late += time.monotonic() - due > 1.0
                    else:
                        self.failed += 1
                if r.status_code != 202:
                    self.note(f"feedback answered {r.status_code}: {r.text[:200]}")

    def note(self, error: str) -> None:
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(error)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=130)


def learner_view(up: UpProcess) -> dict:
    """The learner's backlog and rounds, and the versions serving has. The backlog is what serving's
    producer had acked by the broker (its `rlhf_events_published_total`) and the learner has not
    stored yet (its `rlhf_learner_events_total`), on the interactions and feedback topics;
    `consumer_lag` is the consumer's own gauge (records past what it has fetched)."""
    text = httpx.get(up.learner_url + "/metrics", timeout=10).text
    serving = httpx.get(up.url + "/metrics", timeout=10).text
    adapters = httpx.get(up.url + "/v1/adapters", timeout=10).json()
    sent = sum(metric_total(serving, "rlhf_events_published_total", f'topic="{t}"') for t in EVENT_TOPICS)
    stored = sum(metric_total(text, "rlhf_learner_events_total", f'topic="{t}"') for t in EVENT_TOPICS)
    return {"lag": sent - stored, "sent": sent, "stored": stored,
            "consumer_lag": metric_total(text, "rlhf_consumer_lag"),
            "rounds": {s: int(metric_total(text, "rlhf_learner_rounds_total", f'status="{s}"'))
                       for s in ("published", "rejected", "skipped", "failed")},
            "published": int(metric_total(text, "rlhf_learner_adapters_published_total")),
            "running": int(metric_total(text, "rlhf_learner_round_running")),
            "active": adapters.get("active"), "canary": adapters.get("canary")}


def finished_rounds(data_dir: Path) -> list[dict]:
    """Each round the learner's store recorded: status, feedback, seconds, why it was cut short or rejected."""
    db = sqlite3.connect(f"file:{data_dir / STORE_FILE}?mode=ro", uri=True)
    rows = db.execute("SELECT id, status, feedback_count, reason, metrics FROM rounds ORDER BY id").fetchall()
    db.close()
    out = []
    for round_id, status, feedback, reason, metrics in rows:
        m = json.loads(metrics or "{}")
        out.append({"round": round_id, "status": status, "feedback": feedback, "seconds": m.get("round_seconds"),
                    "cut_short": next((v for k, v in m.items() if k.endswith("_cut_short")), None),
                    "reason": reason})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--rate", type=float, default=50.0, help="feedback events posted per second")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--word", default="happy", help="the users' hidden taste: the answer contains this word")
    p.add_argument("--askers", type=int, default=6, help="threads asking questions (two answers each)")
    p.add_argument("--posters", type=int, default=8, help="threads posting feedback")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--kl-budget", type=float, default=8.0, help="RLHF_KL_BUDGET (the tiny model's tests use 8)")
    p.add_argument("--min-feedback", type=int, default=300, help="RLHF_LEARNER_MIN_FEEDBACK")
    p.add_argument("--algorithm", choices=get_args(LearnerAlgorithm), default=Settings().learner_algorithm,
                   help="RLHF_LEARNER_ALGORITHM (default: the service's default)")
    p.add_argument("--learner-config", default='{"newer_feedback_factor": 0.5}',
                   help="RLHF_LEARNER_CONFIG contents (JSON)")
    p.add_argument("--every", type=float, default=30.0, help="seconds between progress lines")
    p.add_argument("--out", help="folder for `rlhf up`'s data (default: a new temporary one)")
    args = p.parse_args()
    for name in ("rate", "minutes", "every", "askers", "posters", "max_tokens"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be above 0, not {getattr(args, name)}")
    try:
        json.loads(args.learner_config)
    except json.JSONDecodeError as e:
        p.error(f"--learner-config is not JSON: {e}")

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rlhf-stream-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "learner.json").write_text(args.learner_config)
    env = {"RLHF_DATA_DIR": str(out / "data"), "RLHF_ADAPTER_DIR": str(out / "adapters"),
           "RLHF_FEEDBACK_RATE_LIMIT": "0", "RLHF_KL_BUDGET": str(args.kl_budget),
           "RLHF_LEARNER_MIN_FEEDBACK": str(args.min_feedback), "RLHF_LEARNER_CONFIG": str(out / "learner.json"),
           "RLHF_LEARNER_ALGORITHM": args.algorithm}
    pref = Preference(word=args.word)
    print(f"`rlhf up --model {args.model}` in {out}; users like answers containing {args.word!r}; "
          f"{args.rate:g} feedback events a second for {args.minutes:g} minutes", flush=True)
    up = UpProcess(env, args.model, echo=lambda line: None)
    up.start(timeout=1800)
    stream = Stream(up.url, pref, args.rate, args.askers, args.posters, args.max_tokens)
    lags, first_published, view = [], None, {}
    try:
        stream.start()
        end, last_posted, last_t = stream.t0 + 60 * args.minutes, 0, stream.t0
        while (now := time.monotonic()) < end:
            time.sleep(min(args.every, max(0.0, end - now)))
            try:
                view = learner_view(up)
            except httpx.HTTPError as e:
                print(f"  the learner or serving did not answer: {e!r}", flush=True)
                continue
            t = time.monotonic()
            with stream.lock:
                posted, failed, asked = stream.posted, stream.failed, stream.asked
            lags.append(view["lag"])
            if view["published"] and first_published is None:
                first_published = t - stream.t0
            print(f"  {t - stream.t0:5.0f} s: {posted} events posted ({(posted - last_posted) / (t - last_t):.1f}/s "
                  f"lately; {failed} refused), {asked} questions; learner: {view['stored']:.0f} of {view['sent']:.0f} "
                  f"events stored, lag {view['lag']:.0f} (consumer's gauge {view['consumer_lag']:.0f}), round "
                  f"{'running' if view['running'] else 'idle'}, rounds {view['rounds']}; serving: active "
                  f"{view['active'] or 'base'}, canary {view['canary'] or '-'}", flush=True)
            last_posted, last_t = posted, t
        elapsed = time.monotonic() - stream.t0
    finally:
        stream.close()
        up.stop()
    rounds = finished_rounds(out / "data")
    print(f"\n{stream.posted} feedback events posted in {elapsed:.0f} s ({stream.posted / elapsed:.1f}/s against "
          f"{args.rate:g}/s asked; {stream.late} more than 1 s late, {stream.failed} refused), "
          f"{stream.asked} questions asked", flush=True)
    print(f"published during the run: {'yes, first after %.0f s' % first_published if first_published else 'no'}; "
          f"versions at the end: active {view.get('active') or 'base'}, canary {view.get('canary') or '-'}")
    if lags:
        half = len(lags) // 2
        print("learner lag (events the broker acked that the learner has not stored): "
              f"largest {max(lags):.0f}, median {statistics.median(lags):.0f}, "
              f"at the end {lags[-1]:.0f}; largest in the first half {max(lags[:half] or [0]):.0f}, in the second "
              f"{max(lags[half:]):.0f}")
    for r in rounds:
        secs = f"{r['seconds']:.0f} s" if isinstance(r["seconds"], (int, float)) else "-"
        print(f"  round {r['round']}: {r['status']} on {r['feedback']} feedback events, {secs}"
              + (f", cut short: {r['cut_short']}" if r["cut_short"] else "")
              + (f"; {r['reason']}" if r["reason"] else ""))
    for e in stream.errors:
        print(f"  error: {e}")
    return 0 if first_published else 1


if __name__ == "__main__":
    sys.exit(main())
