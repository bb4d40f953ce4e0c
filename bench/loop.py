"""The whole loop as users run it: `rlhf up`, a user's feedback, a round, a canary the users judge, promotion.

    .venv/bin/python bench/loop.py [--model gemma-3-270m] [--questions 400] [--min-feedback 150]
                                   [--word W | --max-words K] [--learner-config FILE] [--timeout-min 120]
                                   [--canary-fraction F] [--canary-turns 4000] [--page]

Starts `rlhf up` in a temporary folder on free ports (its own broker, serving, learner; nothing
is faked), then plays a user with one hidden preference through the public HTTP API only:
every question gets two answers (`n=2`) and the user picks the better one (pairwise) or rates
one (thumbs), as the chat page's buttons would. The preference is either "the answer contains
WORD" or "the answer has at most K words" (the default for models that do not say any one
word often). It then waits until `GET /v1/adapters` shows the learner's new version, printing the
learner's progress. The learner publishes it as a canary (RLHF_CANARY_FRACTION of users, sticky):
then a crowd of users with the same taste (bench/canary_crowd.py) chats through serving as the
chat page lets them (thumbs on the answer they got; blind compare turns between the active version
and the canary) until the learner's promotion controller promotes the canary or rolls it back.
It reports:

- how long the user's feedback took, and how long from the last feedback to the new version;
- the controller's decision, its reason, and the user events it needed (from the signed routing
  event on `rlhf.adapters`), with the crowd's turns and the seconds the canary ran;
- the share of answers the user likes, the version serving started with (the base model, or the
  starting adapter policy@v0) vs the new version, sampled through serving on held-out questions,
  with a two-proportion z score;
- the learner's KL to the base and reward-model accuracy (from its /metrics);
- that `rlhf adapters rollback` brings back what was active before.

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
from harness.proportions import two_proportion_z  # noqa: E402
from adapters.store import list_adapters  # noqa: E402
from bench.canary_crowd import CanaryCrowd, controller_decision  # noqa: E402
from harness.questions import questions  # noqa: E402
from harness.up import UpProcess  # noqa: E402
from harness.user import Preference, converse, liked_answers  # noqa: E402
from harness.waiting import poll, wait_until  # noqa: E402


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


def liked(url: str, model: str, qs: list[str], pref: Preference, n: int, max_tokens: int) -> tuple[int, int]:
    """(liked, asked): `n` answers of `model` to each question, judged by the user's taste."""
    hits = liked_answers(url, model, qs, pref, n=n, max_tokens=max_tokens, seed=50_000, timeout_s=600)
    return sum(hits), len(hits)


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
    ap.add_argument("--questions", type=int, default=400, help="questions the user asks (two answers each); "
                    "more, up to three times as many, while the learner has not started a round (e.g. its "
                    "held-out users gave too few ups or downs for the gate)")
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
    ap.add_argument("--canary-fraction", type=float, help="RLHF_CANARY_FRACTION (default: the setting's)")
    ap.add_argument("--canary-turns", type=int, default=4000, help="the most turns the crowd takes on a canary")
    ap.add_argument("--compare-share", type=float, default=0.5, help="share of the crowd's turns in compare mode")
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
    if args.canary_fraction is not None:
        env["RLHF_CANARY_FRACTION"] = str(args.canary_fraction)
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

        def adapters() -> dict:
            return httpx.get(url + "/v1/adapters", timeout=10).json()

        # a model `rlhf model prepare` built a starting adapter for: the learner stored it as policy@v0
        # before it answered, and serving makes it active once the announcement arrives
        starting = [a["version"] for a in list_adapters(tmp / "adapters")]
        if starting:
            wait_for(f"serving to answer with {starting[0]}", lambda: adapters()["active"] == starting[0], 120, up)
        start = adapters()
        base_name, before = start["base"], start["active"]
        print(f"ready after {time.monotonic() - t0:.0f} s (base model served as {base_name!r}; active: "
              f"{before or 'the base model'})", flush=True)

        held = questions(args.heldout, seed=999)
        base_hits, n_base = liked(url, before or base_name, held, pref, 4, args.max_tokens)
        base_rate = base_hits / max(1, n_base)
        print(f"{before or 'base model'}: the user likes {base_rate:.1%} of {n_base} answers to held-out questions",
              flush=True)

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

        def round_started() -> bool:
            h = httpx.get(lurl + "/healthz", timeout=10).json()
            return bool(h.get("round_running") or h.get("last_round"))

        asked = questions(3 * args.questions, seed=1)
        with httpx.Client(base_url=url, timeout=600) as client, ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i_q: ask(client, *i_q), enumerate(asked[: args.questions])))
            n = args.questions
            while n < len(asked) and not poll(round_started, 30, 2.0):
                print(f"  the learner has not started a round after {n} questions: asking 50 more", flush=True)
                list(pool.map(lambda i_q: ask(client, *i_q), list(enumerate(asked))[n: n + 50]))
                n += 50
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
            lr = h.get("last_round") or {}
            shown = json.dumps({"round_running": h.get("round_running"),
                                "last_round": {k: lr.get(k) for k in ("id", "status", "candidate", "reason")}})
            if shown != last["shown"]:
                print(f"  learner after {time.monotonic() - t_wait:.0f} s: {shown}", flush=True)
                last["shown"] = shown
            if lr.get("status") in ("rejected", "failed"):
                sys.exit(f"the learner's round ended {lr.get('status')}: {lr}")
            if lr.get("status") != "published":
                return None
            a = adapters()
            return next(((v, role) for role in ("canary", "active") if (v := a.get(role)) == lr["candidate"]), None)

        version, role = wait_for("a published adapter", new_version, args.timeout_min * 60, up, every=5.0)
        publish_s = time.monotonic() - t_wait
        print(f"serving routes to {version} ({role}) {publish_s:.0f} s after the last feedback", flush=True)

        decision, canary_s, crowd = None, None, None
        if role == "canary":  # the users decide
            a = adapters()
            print(f"canary {version} on {a['canary_fraction']:.0%} of users; a crowd with the same taste chats until "
                  f"the promotion controller decides", flush=True)
            crowd = CanaryCrowd(url, pref, canary=version, active_model=a["active"] or base_name,
                                compare_share=args.compare_share, blind_share=a.get("blind_compare_share", 0.5),
                                max_tokens=args.max_tokens)
            outcome = crowd.run(questions(args.canary_turns, seed=2), ended=lambda: adapters()["canary"] != version)
            canary_s = outcome.seconds
            if not outcome.ended:
                sys.exit(f"no decision on {version} after {outcome.turns} turns ({canary_s:.0f} s): thumbs "
                         f"{crowd.thumbs_summary()}, blind votes {outcome.votes}")
            decision = wait_for("the controller's routing event", lambda: controller_decision(up.bootstrap, version),
                                60, up)
            ev = decision.evidence or {}
            print(f"controller: {ev.get('decision')} after {ev.get('events')} user events ({outcome.turns} turns, "
                  f"{canary_s:.0f} s): {decision.reason}", flush=True)
            print(f"  the crowd saw: thumbs {crowd.thumbs_summary()}; blind votes {outcome.votes}", flush=True)
            if adapters()["active"] != version:
                print(f"{version} was not promoted: serving keeps {adapters()['active'] or 'the base model'}",
                      flush=True)

        promoted = adapters()["active"] == version
        if page and promoted:
            waited = page.wait_header(f"answering with {version}", 30)
            [(label, text, _)] = page.ask("What is the capital of Italy?")
            print(f"page (never reloaded): header {page.header()!r} {waited:.1f} s later; new answer by {label!r}: "
                  f"{text.strip()[:60]!r}", flush=True)
            if label != version:
                sys.exit(f"the page labelled the answer {label!r}, not {version!r}")

        tuned_hits, n_tuned = liked(url, version, held, pref, 4, args.max_tokens)
        tuned_rate = tuned_hits / max(1, n_tuned)
        z = two_proportion_z(base_hits, n_base, tuned_hits, n_tuned)
        m = httpx.get(lurl + "/metrics", timeout=10).text
        kl = metric_value(m, "rlhf_learner_kl", 'stage="candidate"')
        acc = metric_value(m, "rlhf_learner_rm_accuracy", 'measure="gate"')
        rsec = metric_value(m, "rlhf_learner_round_seconds_sum")

        if promoted:  # rollback, as an operator would type it
            operator = {**os.environ, **env, "RLHF_KAFKA_BOOTSTRAP": up.bootstrap, "RLHF_PORT": str(up.port)}
            rb = subprocess.run([sys.executable, "-m", "rlhf.cli", "adapters", "rollback"], env=operator, cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
            after = wait_for("rollback to reach serving",
                             lambda: (lambda a: a["active"] == before and a)(adapters()), 60, up, every=0.5)
            print(f"`rlhf adapters rollback` exit {rb.returncode}: {rb.stdout.strip().splitlines()[-1:]} -> "
                  f"active {after['active']!r}", flush=True)
            if page:
                waited = page.wait_header(f"answering with {before or 'base model'}", 30)
                [(label, text, _)] = page.ask("What is the capital of Spain?")
                print(f"page: header {page.header()!r} {waited:.1f} s later; new answer by {label!r}", flush=True)
                if version in label:
                    sys.exit(f"after the rollback the page still labels answers {label!r}")
        if page and page.errors:
            sys.exit(f"the page reported errors: {page.errors}")

        ev = (decision.evidence or {}) if decision else {}
        verdict = (f"{ev.get('decision')} after {ev.get('events')} events ({crowd.outcome.turns} turns, "
                   f"{canary_s:.0f} s)" if decision else "active at once (no canary)")
        print("\n| model | feedback (pairwise/thumbs) | user phase s | last feedback -> new version s | round s "
              "| canary: decision after | liked: before -> new (z) | KL nats | RM accuracy |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        print(f"| {args.model} | {sent['pairwise']}/{sent['thumbs']} | {user_s:.0f} | {publish_s:.0f} | "
              f"{rsec if rsec is None else round(rsec)} | {verdict} | {base_rate:.1%} -> {tuned_rate:.1%} ({z:.1f}) | "
              f"{kl if kl is None else round(kl, 2)} | {acc if acc is None else round(acc, 3)} |")
        if decision:
            print(f"\ncontroller's numbers: {json.dumps(ev)}")
    finally:
        if page:
            page.close()
        code = up.stop()
        print(f"`rlhf up` stopped with exit code {code}", flush=True)


if __name__ == "__main__":
    main()
