"""Which answers the judge pairs (pure)."""

from __future__ import annotations

from feedback.schema import Interaction, Message
from judge.pairs import AnswerPool


def answer(rid: str, prompt: str, text: str) -> Interaction:
    return Interaction(response_id=rid, completion_id="c", conversation_id="c", messages=[
        Message(role="user", content=prompt)], response=text, model="tiny")


def test_different_answers_to_one_prompt_are_paired_once():
    pool = AnswerPool()
    pool.add(answer("r1", "q", "one"))
    pool.add(answer("r2", "q", "two"))
    pool.add(answer("r3", "other question", "three"))
    pool.add(answer("r4", "q", "two"))  # the same text as r2: paired with the newest answer that differs
    pairs = [(a.response_id, b.response_id) for a, b in pool.take(10)]
    assert pairs == [("r1", "r2"), ("r1", "r4")]  # equal texts are never compared
    assert pool.take(10) == []  # each pair once
    pool.mark_judged("r5", "r6")
    pool.add(answer("r5", "p", "x"))
    pool.add(answer("r6", "p", "y"))
    assert pool.take(10) == []  # a pair judged already (a user's, for agreement) is not judged again


def test_bounded():
    pool = AnswerPool(max_answers=3, max_waiting=2)
    for i in range(10):
        pool.add(answer(f"r{i}", "q", f"text {i}"))
    assert len(pool.answers) == 3
    assert len(pool.take(10)) <= 2
