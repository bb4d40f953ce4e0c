"""The simulated user: one hidden preference, two answers per question, feedback through the HTTP API.

    pref = Preference(word="happy")          # or Preference(max_words=8); Preference("happy", opposite=True)
    kind = converse(client, pref, question, seed=i, user="user3", rng=random.Random(i))
    liked = liked_answers(url, model, questions, pref)     # the user's verdict on fresh answers

A clear preference (exactly one of two answers liked) becomes a pairwise choice, or one time in
five a thumbs on one answer; without one, half the time a thumbs on one answer, else nothing.
"""

from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor

import httpx


class Preference:
    """The user's hidden taste: a yes/no judgement of one answer."""

    def __init__(self, word: str | None = None, max_words: int | None = None, *, opposite: bool = False):
        if (word is None) == (max_words is None):
            raise ValueError("a preference is either a word or a maximum number of words")
        self.word, self.max_words, self.opposite = word, max_words, opposite

    def __str__(self) -> str:
        taste = f"contains {self.word!r}" if self.word else f"at most {self.max_words} words"
        return f"not ({taste})" if self.opposite else taste

    def likes(self, text: str) -> bool:
        if self.word:
            hit = re.search(rf"\b{re.escape(self.word.lower())}\b", text.lower()) is not None
        else:
            hit = 0 < len(text.split()) <= self.max_words
        return hit != self.opposite

    def feedback(self, rng: random.Random, a: str, b: str, thumbs_share: float = 0.2):
        """What the user does with two answers: ("pairwise", chosen, rejected),
        ("thumbs", index, "up" | "down"), or None."""
        la, lb = self.likes(a), self.likes(b)
        if la != lb and rng.random() >= thumbs_share:
            return ("pairwise", 0, 1) if la else ("pairwise", 1, 0)
        if la != lb or rng.random() < 0.5:
            k = rng.randrange(2)
            return "thumbs", k, "up" if (la, lb)[k] else "down"
        return None


def converse(client: httpx.Client, pref: Preference, question: str, *, seed: int, user: str, rng: random.Random,
             max_tokens: int = 48) -> str | None:
    """One question, two answers (n=2), then the user's feedback on them through /v1/feedback.
    `client` has the server's base_url; returns the kind of feedback sent ("pairwise", "thumbs", None)."""
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": question}], "n": 2, "max_tokens": max_tokens, "temperature": 1.0,
        "seed": seed, "user": user})
    r.raise_for_status()
    body = r.json()
    texts = [c["message"]["content"] for c in body["choices"]]
    refs = [{k: ref[k] for k in ("response_id", "feedback_token")} for ref in body["rlhf"]["responses"]]
    action = pref.feedback(rng, *texts)
    if action is None:
        return None
    if action[0] == "pairwise":
        fb = {"type": "pairwise", "chosen": refs[action[1]], "rejected": refs[action[2]]}
    else:
        fb = {"type": "thumbs", **refs[action[1]], "value": action[2]}
    f = client.post("/v1/feedback", json=fb)
    if f.status_code != 202:
        raise AssertionError(f"feedback answered {f.status_code}: {f.text}")
    return action[0]


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
