"""Ask a judge model which of two answers is better, in both orders, through an OpenAI-compatible API.

    judge = VerdictClient(url, model, rubric, api_key="", timeout_s=60)
    v = await judge.compare(messages, answer_a, answer_b)   # Verdict(outcome, winner: "a" | "b" | None)

One question per order: the rubric as the system message, then the conversation, "Answer A" and
"Answer B", asking for one letter. The verdict is the first standalone A or B of the reply. Judge
models favour a position (often the first answer), so the two answers are asked in both orders and
a winner exists only when both replies pick the same answer; otherwise the outcome is
`inconsistent` (position bias, or a tie) and no event is made. Unparseable replies (`unparsed`),
timeouts and HTTP errors (`error`) make no event either, and never stop the judge.

Requests go out with `temperature: 0`, a small `max_tokens`, and `store: false`: our own serving
then keeps the judge's questions out of the event log, so they never become training data.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

DEFAULT_RUBRIC = ("You compare two answers to the same conversation. The better answer is helpful, correct and "
                  "concise, follows the user's request, and contains nothing harmful or made up.")
ANSWER_A, ANSWER_B = "Answer A:", "Answer B:"  # the markers of the two answers in the question
ASK = "Which answer is better by the rubric? Reply with one letter: A or B."
_LETTER = re.compile(r"\b([AB])\b")


@dataclass(frozen=True)
class Verdict:
    outcome: str  # decided | inconsistent | unparsed | error
    winner: str | None = None  # "a" or "b" when decided


def load_rubric(path: str) -> str:
    """The operator's rubric (RLHF_JUDGE_RUBRIC), or the built-in one when no file is named."""
    if not path:
        return DEFAULT_RUBRIC
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise SystemExit(f"RLHF_JUDGE_RUBRIC: cannot read {path}: {e.strerror}")
    if not text:
        raise SystemExit(f"RLHF_JUDGE_RUBRIC: {path} is empty")
    return text


def question(rubric: str, messages: list[dict], first: str, second: str) -> list[dict]:
    """The chat messages of one judgement: `first` is shown as Answer A, `second` as Answer B."""
    conversation = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return [{"role": "system", "content": rubric},
            {"role": "user", "content": f"Conversation:\n{conversation}\n\n{ANSWER_A}\n{first}\n\n"
                                        f"{ANSWER_B}\n{second}\n\n{ASK}"}]


def parse_letter(reply: str) -> str | None:
    """The first standalone A or B of a reply ("A", "**B**", "Answer A is better"), else None."""
    m = _LETTER.search(reply or "")
    return m.group(1) if m else None


def combine(first_order: str | None, second_order: str | None) -> Verdict:
    """Both orders' letters -> one verdict. In the first order answer a is A; in the second it is B."""
    if first_order is None or second_order is None:
        return Verdict("unparsed")
    a_first = first_order == "A"
    a_second = second_order == "B"
    if a_first != a_second:
        return Verdict("inconsistent")
    return Verdict("decided", "a" if a_first else "b")


class VerdictClient:
    def __init__(self, url: str, model: str, rubric: str, *, api_key: str = "", timeout_s: float = 60.0,
                 max_tokens: int = 8, letters_only: bool = False):
        """`letters_only`: ask the endpoint to answer exactly "A" or "B" (vLLM's `structured_outputs`, which
        our serving accepts too); other OpenAI-compatible APIs may refuse the field."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.model, self.rubric, self.max_tokens = model, rubric, max_tokens
        self.extra = {"structured_outputs": {"choice": ["A", "B"]}} if letters_only else {}

    async def ask(self, messages: list[dict], first: str, second: str) -> str:
        r = await self.http.post("/chat/completions", json={
            "model": self.model, "messages": question(self.rubric, messages, first, second),
            "temperature": 0, "max_tokens": self.max_tokens, "store": False, **self.extra})
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"] or ""

    async def compare(self, messages: list[dict], a: str, b: str) -> Verdict:
        try:
            first = parse_letter(await self.ask(messages, a, b))
            second = parse_letter(await self.ask(messages, b, a)) if first else None  # no second call wasted
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as e:
            log.warning("judge endpoint failed: %s", f"{type(e).__name__}: {e}"[:300])
            return Verdict("error")
        return combine(first, second)

    async def close(self) -> None:
        await self.http.aclose()
