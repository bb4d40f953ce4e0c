"""Verdict parsing and the both-orders rule (pure)."""

from __future__ import annotations

import pytest

from harness.rule_judge import answers
from judge.verdict import Verdict, combine, parse_letter, question


@pytest.mark.parametrize("reply, letter", [("A", "A"), ("B.", "B"), ("**B**", "B"), ("Answer A is better", "A"),
                                           ("I prefer B; A rambles", "B"), ("\nA\n", "A")])
def test_first_standalone_letter(reply, letter):
    assert parse_letter(reply) == letter


@pytest.mark.parametrize("reply", ["", "Both are fine", "ABBA", "a", "Bad answer", None])
def test_no_standalone_letter_is_no_verdict(reply):
    assert parse_letter(reply) is None


def test_both_orders_must_pick_the_same_answer():
    # first order shows a as A, second shows a as B
    assert combine("A", "B") == Verdict("decided", "a")
    assert combine("B", "A") == Verdict("decided", "b")
    assert combine("A", "A") == Verdict("inconsistent")  # always the first position: position bias
    assert combine("B", "B") == Verdict("inconsistent")
    assert combine(None, "A") == Verdict("unparsed")
    assert combine("A", None) == Verdict("unparsed")


def test_question_shows_both_answers_in_the_order_given():
    msgs = question("be kind", [{"role": "user", "content": "hi?"}], "first answer", "second answer")
    assert msgs[0] == {"role": "system", "content": "be kind"}
    assert "user: hi?" in msgs[1]["content"]
    assert answers(msgs[1]["content"]) == ("first answer", "second answer")
