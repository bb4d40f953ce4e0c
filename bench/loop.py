"""The whole loop as a user runs it: `rlhf up`, a simulated user, a new adapter on the page, rollback.

    .venv/bin/python bench/loop.py [--model gemma-3-270m] [--questions 400] [--min-feedback 150]
                                   [--word W | --max-words K] [--learner-config FILE] [--timeout-min 120]

Starts `rlhf up` in a temporary folder on free ports (its own broker, serving, learner; nothing
is faked), then plays a user with one hidden preference through the public HTTP API only:
every question gets two answers (`n=2`) and the user picks the better one (pairwise) or rates
one (thumbs), as the chat page's buttons would. The preference is either "the answer contains
WORD" or "the answer has at most K words" (the default for models that do not say any one
word often). It then waits until `GET /v1/adapters` shows a new active version (what the
chat page shows beside each answer), printing the learner's progress, and reports:

- how long the user's feedback took, and how long from the last feedback to the new version;
- the share of answers the user likes, base model vs the new version, sampled through serving
  on held-out questions, with a two-proportion z score;
- the learner's KL to the base and reward-model accuracy (from its /metrics);
- that `rlhf adapters rollback` brings the base back on serving.

With --page, a headless Chromium (Debian's `chromium`, driven by Playwright) also plays the
person at the chat page: before the simulated user starts it chats, presses thumbs up and, in
compare mode, "this one is better"; it keeps the page open, without reloading, until the page's
header names the new version and a new answer is labelled with it; after the rollback the
header and the next answer show the base model again.

A benchmark, not a test: it takes from a few minutes (tiny) to about an hour (Gemma on two
CPU cores), and its numbers are from a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import browser as chromium  # noqa: E402
from harness.metrics import metric_value  # noqa: E402
from harness.questions import questions  # noqa: E402
from harness.up import UpProcess  # noqa: E402
from harness.user import Preference, converse, liked_answers  # noqa: E402
from harness.waiting import wait_until  # noqa: E402


def wait_for(what: str, check, timeout_s: float, up: UpProcess, every: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if up.proc.poll() is not None:
            sys.exit(f"`rlhf up` exited with {up.proc.returncode} while waiting for {what}:\n"
                     + "".join(up.output.lines[-30:]))
        try:
            got = check()
        except httpx.HTTPError:
            got = None
        if got:
            return got
        time.sleep(every)
    sys.exit(f"timed out after {timeout_s:.0f} s waiting for {what}")


def like_rate(url: str, model: str, qs: list[str], pref: Preference, n: int, max_tokens: int) -> tuple[float, int]:
    hits = liked_answers(url, model, qs, pref, n=n, max_tokens=max_tokens, seed=50_000, timeout_s=600)
    return sum(hits) / max(1, len(hits)), len(hits)


class Page:
    """The chat page in headless Chromium, used the way a person would (as tests/serving/test_page.py does)."""

    def __init__(self, url: str):
        from playwright.sync_api import sync_playwright  # only with --page: the loop itself needs no browser

        self._pw = sync_playwright().start()
        self.browser = chromium.launch(self._pw)
        self.page = self.browser.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.set_default_timeout(600_000)
        self.page.goto(url + "/")
        self.page.wait_for_function("() => document.querySelector('[data-testid=serving]').dataset.active !== undefined")

    def header(self) -> str:
        return self.page.get_by_test_id("serving").inner_text()

    def wait_header(self, text: str, timeout_s: float) -> float:
        """Seconds until the header (refreshed by the page itself every 5 s) contains text."""
        t = time.monotonic()
        self.page.wait_for_function("t => document.querySelector('[data-testid=serving]').textContent.includes(t)",
                                    arg=text, timeout=timeout_s * 1000)
        return time.monotonic() - t

    def ask(self, text: str, compare: bool = False):
        """Send a message; return the new answers' (adapter label, text, element)."""
        pg = self.page
        if pg.get_by_test_id("compare").is_checked() != compare:
            pg.get_by_test_id("compare").set_checked(compare)
        before = pg.get_by_test_id("answer").count()
        pg.get_by_test_id("input").fill(text)
        pg.get_by_test_id("send").click()
        pg.wait_for_function("n => !document.querySelector('[data-testid=send]').disabled"
                             " && document.querySelectorAll('[data-testid=answer]').length > n", arg=before)
        answers = pg.get_by_test_id("answer")
        new = [answers.nth(i) for i in range(before, answers.count())]
        self._raise_shown_error()
        return [(a.get_by_test_id("adapter").inner_text(), a.get_by_test_id("answer-text").inner_text(), a)
                for a in new]

    def press(self, answer, testid: str) -> None:
        """Press a feedback button under one answer and wait for that answer's "thanks"."""
        answer.get_by_test_id(testid).click()
        status, error = answer.get_by_test_id("feedback-status"), self.page.get_by_test_id("error")
        wait_until(lambda: status.inner_text().strip() or error.is_visible(), 60, 0.2,
                   f"a confirmation on the page after pressing {testid}")
        self._raise_shown_error()

    def _raise_shown_error(self) -> None:
        error = self.page.get_by_test_id("error")
        if error.is_visible():
            raise RuntimeError("the page shows an error: " + error.inner_text())

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--questions", type=int, default=400, help="questions the user asks (two answers each)")
    ap.add_argument("--heldout", type=int, default=60, help="questions used only to measure the policy")
    ap.add_argument("--min-feedback", type=int, default=150, help="RLHF_LEARNER_MIN_FEEDBACK for the learner")
    ap.add_argument("--word", help="the user likes answers containing this word")
    ap.add_argument("--max-words", type=int, default=8, help="the user likes answers of at most this many words")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--learner-config", help="JSON file for RLHF_LEARNER_CONFIG")
    ap.add_argument("--kl-budget", type=float, default=None, help="RLHF_KL_BUDGET (default: the setting's)")
    ap.add_argument("--timeout-min", type=float, default=120.0, help="how long to wait for a published adapter")
    ap.add_argument("--verbose", action="store_true", help="echo every line `rlhf up` prints")
    ap.add_argument("--page", action="store_true", help="also use the chat page in headless Chromium")
    args = ap.parse_args()
    pref = Preference(args.word, None if args.word else args.max_words)

    tmp = Path(tempfile.mkdtemp(prefix="rlhf-loop-"))
    env = {"RLHF_DATA_DIR": str(tmp / "data"), "RLHF_ADAPTER_DIR": str(tmp / "adapters"),
           "RLHF_FEEDBACK_RATE_LIMIT": "100000", "RLHF_LEARNER_MIN_FEEDBACK": str(args.min_feedback),
           "RLHF_LEARNER_INTERVAL_S": "100000"}
    if args.learner_config:
        env["RLHF_LEARNER_CONFIG"] = str(Path(args.learner_config).resolve())
    if args.kl_budget is not None:
        env["RLHF_KL_BUDGET"] = str(args.kl_budget)
    print(f"model {args.model}; the user likes answers that are {pref}; state in {tmp}", flush=True)

    def echo(line: str) -> None:
        if args.verbose or line.startswith("rlhf up:"):
            print("   | " + line.rstrip(), flush=True)

    t0 = time.monotonic()
    page = None
    up = UpProcess(env, args.model, echo=echo)
    try:
        up.start(timeout=1800)  # serving ready and the learner answering, on ports of their own
        url, lurl = up.url, up.learner_url
        base_name = httpx.get(url + "/v1/adapters", timeout=10).json()["base"]
        print(f"ready after {time.monotonic() - t0:.0f} s (base model served as {base_name!r})", flush=True)

        held = questions(args.heldout, seed=999)
        base_rate, n_base = like_rate(url, base_name, held, pref, 4, args.max_tokens)
        print(f"base model: the user likes {base_rate:.1%} of {n_base} answers to held-out questions", flush=True)

        if args.page:
            page = Page(url)
            print(f"page: header {page.header()!r}", flush=True)
            [(label, text, a)] = page.ask("What is the capital of France?")
            page.press(a, "thumbs-up")
            print(f"page: answer by {label!r}: {text.strip()[:60]!r}; pressed thumbs up", flush=True)
            answers = page.ask("What color is the sky?", compare=True)
            page.press(answers[1][2], "prefer")
            print(f"page: compare mode, two answers by {[x[0] for x in answers]}; pressed 'this one is better' "
                  f"on the second", flush=True)

        # The user: two answers per question, feedback through /v1/feedback, as the page's buttons send it.
        t_user = time.monotonic()
        sent = {"pairwise": 0, "thumbs": 0}
        lock = threading.Lock()

        def ask(client: httpx.Client, i: int, q: str) -> None:
            kind = converse(client, pref, q, seed=i, user=f"user{i % 20}", rng=random.Random(i),
                            max_tokens=args.max_tokens)
            if kind is None:
                return
            with lock:
                sent[kind] += 1
                total = sum(sent.values())
            if total % 50 == 0:
                print(f"  user: {total} feedback events sent ({i + 1} questions asked)", flush=True)

        with httpx.Client(base_url=url, timeout=600) as client, ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i_q: ask(client, *i_q), enumerate(questions(args.questions, seed=1))))
        user_s = time.monotonic() - t_user
        print(f"user done in {user_s:.0f} s: {sent}", flush=True)
        if sum(sent.values()) < args.min_feedback:
            sys.exit(f"only {sum(sent.values())} feedback events for a threshold of {args.min_feedback}: "
                     f"ask more questions (--questions) or lower --min-feedback")

        # The learner trains; the page shows a new version as soon as serving routes to it.
        t_wait = time.monotonic()
        last = {"shown": None}

        def new_version():
            h = httpx.get(lurl + "/healthz", timeout=10).json()
            shown = json.dumps({"round_running": h.get("round_running"), "last_round": h.get("last_round")})
            if shown != last["shown"]:
                print(f"  learner after {time.monotonic() - t_wait:.0f} s: {shown}", flush=True)
                last["shown"] = shown
            lr = h.get("last_round") or {}
            if lr.get("status") in ("rejected", "failed"):
                sys.exit(f"the learner's round ended {lr.get('status')}: {lr}")
            return httpx.get(url + "/v1/adapters", timeout=10).json().get("active")

        version = wait_for("a published adapter", new_version, args.timeout_min * 60, up, every=5.0)
        publish_s = time.monotonic() - t_wait
        print(f"serving routes to {version} {publish_s:.0f} s after the last feedback", flush=True)

        if page:
            waited = page.wait_header(f"answering with {version}", 30)
            [(label, text, _)] = page.ask("What is the capital of Italy?")
            print(f"page (never reloaded): header {page.header()!r} {waited:.1f} s later; new answer by {label!r}: "
                  f"{text.strip()[:60]!r}", flush=True)
            if label != version:
                sys.exit(f"the page labelled the answer {label!r}, not {version!r}")

        tuned_rate, n_tuned = like_rate(url, version, held, pref, 4, args.max_tokens)
        pooled = (base_rate * n_base + tuned_rate * n_tuned) / (n_base + n_tuned)
        z = (tuned_rate - base_rate) / math.sqrt(max(1e-12, pooled * (1 - pooled) * (1 / n_base + 1 / n_tuned)))
        m = httpx.get(lurl + "/metrics", timeout=10).text
        kl = metric_value(m, "rlhf_learner_kl", 'stage="candidate"')
        acc = metric_value(m, "rlhf_learner_rm_accuracy", 'measure="gate"')
        rsec = metric_value(m, "rlhf_learner_round_seconds_sum")

        # Rollback, as an operator would type it.
        operator = {**os.environ, **env, "RLHF_KAFKA_BOOTSTRAP": up.bootstrap, "RLHF_PORT": str(up.port)}
        rb = subprocess.run([sys.executable, "-m", "rlhf.cli", "adapters", "rollback"], env=operator, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
        after = wait_for("rollback to reach serving",
                         lambda: (lambda a: a["active"] is None and a)(httpx.get(url + "/v1/adapters", timeout=10).json()),
                         60, up, every=0.5)
        print(f"`rlhf adapters rollback` exit {rb.returncode}: {rb.stdout.strip().splitlines()[-1:]} -> "
              f"active {after['active']!r}", flush=True)
        if page:
            waited = page.wait_header("answering with base model", 30)
            [(label, text, _)] = page.ask("What is the capital of Spain?")
            print(f"page: header {page.header()!r} {waited:.1f} s later; new answer by {label!r}", flush=True)
            if version in label:
                sys.exit(f"after the rollback the page still labels answers {label!r}")
            if page.errors:
                sys.exit(f"the page reported errors: {page.errors}")

        print("\n| model | feedback (pairwise/thumbs) | user phase s | last feedback -> new version s | round s "
              "| liked: base -> new (z) | KL nats | RM accuracy |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print(f"| {args.model} | {sent['pairwise']}/{sent['thumbs']} | {user_s:.0f} | {publish_s:.0f} | "
              f"{rsec if rsec is None else round(rsec)} | {base_rate:.1%} -> {tuned_rate:.1%} ({z:.1f}) | "
              f"{kl if kl is None else round(kl, 2)} | {acc if acc is None else round(acc, 3)} |")
    finally:
        if page:
            page.close()
        code = up.stop()
        print(f"`rlhf up` stopped with exit code {code}", flush=True)


if __name__ == "__main__":
    main()
