"""The simulated user: one hidden preference, two answers per question, feedback through the HTTP API.

    pref = Preference(word="happy")          # or Preference(max_words=8); Preference("happy", opposite=True)
    pref = Preference(taste="colour")        # a named taste (harness/tastes.py); Preference.named("word:happy")
    kind = converse(client, pref, question, seed=i, user="user3", rng=random.Random(i))
    text = correct(client, question, rewrite, seed=i, user="user3")   # a corrected answer instead
    liked = liked_answers(url, model, questions, pref)     # the user's verdict on fresh answers

A clear preference (exactly one of two answers liked) becomes a pairwise choice, or one time in
five a thumbs on one answer; without one, half the time a thumbs on one answer, else nothing. A user
with a named taste who likes neither answer corrects one of them instead (a demonstration of the
taste's `correct`, harness/tastes.py) a `corrections` share of the time (none by default).
`correct` is the user who rewrites the answer instead (a demonstration): `rewrite(answer)` is the
text they send.
"""

from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import httpx

from harness.tastes import TASTES


class Preference:
    """The user's hidden taste: a yes/no judgement of one answer: it contains a word, has at most
    `max_words` words, or has one of harness/tastes.py's named tastes (`taste="colour"`)."""

    def __init__(self, word: str | None = None, max_words: int | None = None, *, taste: str | None = None,
                 opposite: bool = False):
        if sum(x is not None for x in (word, max_words, taste)) != 1:
            raise ValueError("a preference is either a word, a maximum number of words or a named taste")
        if taste is not None and taste not in TASTES:
            raise ValueError(f"unknown taste {taste!r}: one of {', '.join(TASTES)}")
        self.word, self.max_words, self.taste, self.opposite = word, max_words, taste, opposite

    @classmethod
    def named(cls, spec: str) -> "Preference":
        """A preference from a command line: a taste's name (`colour`, `sentence`, `place`),
        `word:WORD` or `max-words:K`."""
        kind, _, arg = spec.partition(":")
        if kind == "word" and arg:
            return cls(word=arg)
        if kind == "max-words" and arg.isdigit():
            return cls(max_words=int(arg))
        if kind in TASTES and not arg:
            return cls(taste=kind)
        raise ValueError(f"unknown taste {spec!r}: one of {', '.join(TASTES)}, word:WORD or max-words:K")

    def __str__(self) -> str:
        if self.taste:
            taste = TASTES[self.taste].description
        else:
            taste = f"contains {self.word!r}" if self.word else f"at most {self.max_words} words"
        return f"not ({taste})" if self.opposite else taste

    def likes(self, text: str) -> bool:
        if self.taste:
            hit = TASTES[self.taste].likes(text)
        elif self.word:
            hit = re.search(rf"\b{re.escape(self.word.lower())}\b", text.lower()) is not None
        else:
            hit = 0 < len(text.split()) <= self.max_words
        return hit != self.opposite

    def correct(self, answer: str, rng: random.Random) -> str | None:
        """The answer as this user would rewrite it (harness/tastes.py), or None where their rewrite
        would still not be to their taste (a list for the `sentence` taste) or they have no named taste."""
        if not self.taste or self.opposite:
            return None
        text = TASTES[self.taste].correct(answer, rng)
        return text if self.likes(text) else None

    def feedback(self, rng: random.Random, a: str, b: str, thumbs_share: float = 0.2, corrections: float = 0.0):
        """What the user does with two answers: ("pairwise", chosen, rejected),
        ("thumbs", index, "up" | "down"), ("demonstration", index, corrected text), or None."""
        la, lb = self.likes(a), self.likes(b)
        if not (la or lb) and corrections > 0 and rng.random() < corrections:
            k = rng.randrange(2)
            text = self.correct((a, b)[k], rng)
            if text is not None:
                return "demonstration", k, text
        if la != lb and rng.random() >= thumbs_share:
            return ("pairwise", 0, 1) if la else ("pairwise", 1, 0)
        if la != lb or rng.random() < 0.5:
            k = rng.randrange(2)
            return "thumbs", k, "up" if (la, lb)[k] else "down"
        return None


@dataclass
class Answers:
    texts: list[str]
    refs: list[dict]       # each answer's {response_id, feedback_token}, as /v1/feedback takes them
    adapter: str | None    # the version that answered (None: the base model)


def chat(client: httpx.Client, question: str, *, n: int = 1, seed: int, user: str, max_tokens: int = 48,
         model: str | None = None) -> Answers:
    """One question, `n` answers (temperature 1) as `user`; `model` asks a version by name, else serving
    routes by user."""
    body = {"messages": [{"role": "user", "content": question}], "n": n, "max_tokens": max_tokens,
            "temperature": 1.0, "seed": seed, "user": user}
    r = client.post("/v1/chat/completions", json=body if model is None else {**body, "model": model})
    r.raise_for_status()
    out = r.json()
    return Answers(texts=[c["message"]["content"] for c in out["choices"]],
                   refs=[{k: ref[k] for k in ("response_id", "feedback_token")} for ref in out["rlhf"]["responses"]],
                   adapter=out["rlhf"]["adapter"])


def send_feedback(client: httpx.Client, body: dict) -> None:
    f = client.post("/v1/feedback", json=body)
    if f.status_code != 202:
        raise AssertionError(f"feedback answered {f.status_code}: {f.text}")


def converse(client: httpx.Client, pref: Preference, question: str, *, seed: int, user: str, rng: random.Random,
             max_tokens: int = 48, corrections: float = 0.0) -> str | None:
    """One question, two answers (n=2), then the user's feedback on them through /v1/feedback.
    `client` has the server's base_url; returns the kind of feedback sent ("pairwise", "thumbs",
    "demonstration", None)."""
    answers = chat(client, question, n=2, seed=seed, user=user, max_tokens=max_tokens)
    refs = answers.refs
    action = pref.feedback(rng, *answers.texts, corrections=corrections)
    if action is None:
        return None
    if action[0] == "pairwise":
        send_feedback(client, {"type": "pairwise", "chosen": refs[action[1]], "rejected": refs[action[2]]})
    elif action[0] == "demonstration":
        send_feedback(client, {"type": "demonstration", **refs[action[1]], "text": action[2]})
    else:
        send_feedback(client, {"type": "thumbs", **refs[action[1]], "value": action[2]})
    return action[0]


def correct(client: httpx.Client, question: str, rewrite: Callable[[str], str], *, seed: int, user: str,
            max_tokens: int = 48) -> str:
    """One question, one answer, and the user's corrected answer `rewrite(answer)` sent as a demonstration
    through /v1/feedback with the answer's token; returns the corrected text."""
    answers = chat(client, question, n=1, seed=seed, user=user, max_tokens=max_tokens)
    (answer,), (ref,) = answers.texts, answers.refs
    text = rewrite(answer)
    send_feedback(client, {"type": "demonstration", **ref, "text": text})
    return text


def liked_answers(url: str, model: str, questions: list[str], pref: Preference, *, n: int = 4, max_tokens: int = 48,
                  seed: int = 10_000, timeout_s: float = 120.0, api_key: str | None = None) -> list[bool]:
    """The user's verdict on `n` sampled answers (temperature 1) per question from `model`,
    asked by name through serving (with `api_key` as the bearer token, if given); question i is
    sampled with seed `seed + i`."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def ask(i_q):
        i, q = i_q
        r = httpx.post(url + "/v1/chat/completions", timeout=timeout_s, headers=headers, json={
            "model": model, "messages": [{"role": "user", "content": q}], "n": n, "max_tokens": max_tokens,
            "temperature": 1.0, "seed": seed + i, "user": "judge"})
        r.raise_for_status()
        if r.json()["model"] != model:
            raise AssertionError(f"asked {model!r}, answered by {r.json()['model']!r}")
        return [pref.likes(c["message"]["content"]) for c in r.json()["choices"]]

    with ThreadPoolExecutor(4) as pool:
        return [h for hs in pool.map(ask, enumerate(questions)) for h in hs]
