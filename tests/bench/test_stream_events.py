"""What bench/stream.py's simulated user says of two answers: a thumb on each, and a pairwise choice
only where its taste tells them apart."""

from __future__ import annotations

from bench.stream import user_events
from harness.user import Preference

REFS = [{"response_id": "r_a", "feedback_token": "ta"}, {"response_id": "r_b", "feedback_token": "tb"}]


def test_a_thumb_on_each_answer_and_a_choice_where_the_taste_differs():
    events = user_events(Preference(word="happy"), REFS, ["a sad cat", "a happy dog"])
    assert events == [{"type": "thumbs", **REFS[0], "value": "down"}, {"type": "thumbs", **REFS[1], "value": "up"},
                      {"type": "pairwise", "chosen": REFS[1], "rejected": REFS[0]}]


def test_no_choice_between_two_answers_the_taste_likes_alike():
    events = user_events(Preference(word="happy"), REFS, ["happy", "so happy"])
    assert [e["type"] for e in events] == ["thumbs", "thumbs"]
    assert {e["value"] for e in events} == {"up"}
