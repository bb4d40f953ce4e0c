"""Which answers the AI judge compares: two different answers to the same prompt, each pair once.

    pool = AnswerPool()
    pool.add(interaction)            # every verified Interaction from rlhf.interactions
    pool.get(response_id)            # an answer seen recently (the agreement check needs its text)
    for a, b in pool.take(8): ...    # new pairs, oldest first, never the same pair twice

Answers are grouped by their prompt (the messages, exactly as logged). A new answer is paired
with the newest earlier answer of its prompt whose text differs (two choices of one request, or
two requests with the same prompt). Everything is bounded: the answers kept, the answers per
prompt, the queue of pairs waiting (the oldest are dropped: the judge samples what it cannot keep
up with), and the memory of pairs judged.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict, deque

from feedback.schema import Interaction


def prompt_key(ev: Interaction) -> str:
    messages = [m.model_dump() for m in ev.messages]
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


def pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


class AnswerPool:
    def __init__(self, max_answers: int = 20_000, per_prompt: int = 8, max_waiting: int = 1_000,
                 max_judged: int = 100_000):
        self.answers: OrderedDict[str, Interaction] = OrderedDict()  # response_id -> answer, oldest first
        self.by_prompt: OrderedDict[str, deque[str]] = OrderedDict()  # prompt key -> its newest response ids
        self.waiting: deque[tuple[str, str]] = deque(maxlen=max_waiting)
        self.judged: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.max_answers, self.per_prompt, self.max_judged = max_answers, per_prompt, max_judged

    def get(self, response_id: str) -> Interaction | None:
        return self.answers.get(response_id)

    def add(self, ev: Interaction) -> None:
        if ev.response_id in self.answers:
            return
        self.answers[ev.response_id] = ev
        if len(self.answers) > self.max_answers:
            self.answers.popitem(last=False)
        key = prompt_key(ev)
        same = self.by_prompt.setdefault(key, deque(maxlen=self.per_prompt))
        self.by_prompt.move_to_end(key)
        if len(self.by_prompt) > self.max_answers:
            self.by_prompt.popitem(last=False)
        for other in reversed(same):
            earlier = self.answers.get(other)
            if earlier is not None and earlier.response.strip() != ev.response.strip():
                if pair_key(other, ev.response_id) not in self.judged:
                    self.waiting.append((other, ev.response_id))
                break
        same.append(ev.response_id)

    def mark_judged(self, a: str, b: str) -> None:
        self.judged[pair_key(a, b)] = None
        if len(self.judged) > self.max_judged:
            self.judged.popitem(last=False)

    def take(self, limit: int) -> list[tuple[Interaction, Interaction]]:
        """Up to `limit` pairs not judged before, whose answers are both still kept."""
        out = []
        while self.waiting and len(out) < limit:
            a, b = self.waiting.popleft()
            if pair_key(a, b) in self.judged or a not in self.answers or b not in self.answers:
                continue
            self.mark_judged(a, b)
            out.append((self.answers[a], self.answers[b]))
        return out
