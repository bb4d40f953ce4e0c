"""Users judging a canary through serving, as the chat page lets them, until the promotion controller decides.

    crowd = CanaryCrowd(url, pref, canary="policy@v1", active_model="gemma-3-270m")
    outcome = crowd.run(questions(3000, seed=7), ended=lambda: routing()["canary"] != "policy@v1")
    decision = controller_decision(bootstrap, "policy@v1")   # the signed routing event, reason and numbers

Many users (`users` ids, sticky: serving sends its canary share of them to the canary) with one
hidden taste ask one question each turn. A `compare_share` of turns are compare turns, and of those
`blind_share` (the setting RLHF_BLIND_COMPARE_SHARE, from `GET /v1/adapters`) are blind turns, as
on the chat page: the active version and the canary are asked by name, side by side, and the user
votes for the answer it likes when it likes exactly one. Every other turn gets one answer routed
by user, and a thumbs up when the user likes it, down when not. Every request and vote goes
through the public HTTP API; the controller reads them from the broker like any other feedback.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from feedback.schema import TOPIC_ADAPTERS, RoutingChanged
from harness.kafka import read_topic
from harness.user import Preference, chat, send_feedback

CONTROLLER = "promotion-controller"


@dataclass
class CrowdOutcome:
    turns: int = 0
    thumbs: dict = field(default_factory=dict)   # answering version (`base`: no adapter) -> [ups, total]
    votes: dict = field(default_factory=lambda: {"canary": 0, "active": 0, "no preference": 0})
    seconds: float = 0.0
    ended: bool = False


class CanaryCrowd:
    def __init__(self, url: str, pref: Preference, *, canary: str, active_model: str, users: int = 400,
                 compare_share: float = 0.5, blind_share: float = 0.5, max_tokens: int = 48, workers: int = 4):
        self.url, self.pref, self.canary, self.active_model = url, pref, canary, active_model
        self.users, self.compare_share, self.blind_share = users, compare_share, blind_share
        self.max_tokens, self.workers = max_tokens, workers
        self.outcome = CrowdOutcome()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def run(self, questions: list[str], ended, check_every: int = 10, progress=print) -> CrowdOutcome:
        """Turns over `questions` until `ended()` (checked every `check_every` turns) or they run out."""
        t0 = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=600) as client, ThreadPoolExecutor(self.workers) as pool:
            def turn(i_q):
                i, q = i_q
                if self._stop.is_set():
                    return
                self._turn(client, i, q)
                with self._lock:
                    self.outcome.turns += 1
                    n = self.outcome.turns
                if n % check_every == 0 and ended():
                    self.outcome.ended = True
                    self._stop.set()
                if n % 100 == 0:
                    progress(f"  users: {n} turns; thumbs {self.thumbs_summary()}; blind votes {self.outcome.votes}")
            list(pool.map(turn, enumerate(questions)))
        self.outcome.ended = self.outcome.ended or ended()
        self.outcome.seconds = time.monotonic() - t0
        return self.outcome

    def thumbs_summary(self) -> str:
        with self._lock:
            return ", ".join(f"{v}: {up}/{n} up" for v, (up, n) in sorted(self.outcome.thumbs.items()))

    def _turn(self, client: httpx.Client, i: int, question: str) -> None:
        rng = random.Random(i)
        user = f"person{rng.randrange(self.users)}"
        if rng.random() < self.compare_share * self.blind_share:
            self._blind_turn(client, i, question, user, rng)
            return
        answer = chat(client, question, seed=i, user=user, max_tokens=self.max_tokens)
        liked = self.pref.likes(answer.texts[0])
        send_feedback(client, {"type": "thumbs", **answer.refs[0], "value": "up" if liked else "down"})
        with self._lock:
            counts = self.outcome.thumbs.setdefault(answer.adapter or "base", [0, 0])
            counts[0] += liked
            counts[1] += 1

    def _blind_turn(self, client: httpx.Client, i: int, question: str, user: str, rng: random.Random) -> None:
        """The page's blind compare turn: the active version's and the canary's answers, unlabelled."""
        answers = {}
        for role, model in (("active", self.active_model), ("canary", self.canary)):
            answer = chat(client, question, seed=i, user=user, max_tokens=self.max_tokens, model=model)
            answers[role] = (self.pref.likes(answer.texts[0]), answer.refs[0])
        (a_liked, a_ref), (c_liked, c_ref) = answers["active"], answers["canary"]
        if a_liked == c_liked:
            with self._lock:
                self.outcome.votes["no preference"] += 1
            return
        chosen, rejected = (c_ref, a_ref) if c_liked else (a_ref, c_ref)
        send_feedback(client, {"type": "pairwise", "chosen": chosen, "rejected": rejected})
        with self._lock:
            self.outcome.votes["canary" if c_liked else "active"] += 1


def controller_decision(bootstrap: str, canary: str, timeout_s: float = 30.0) -> RoutingChanged | None:
    """The promotion controller's newest routing event about `canary` on `rlhf.adapters`, if any."""
    found = [ev for ev in read_topic(bootstrap, TOPIC_ADAPTERS, timeout_s)
             if isinstance(ev, RoutingChanged) and ev.source == CONTROLLER and (ev.evidence or {}).get("canary") == canary]
    return found[-1] if found else None
