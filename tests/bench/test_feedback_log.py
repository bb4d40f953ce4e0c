"""The benchmark's recorded feedback log (bench/feedback_log.py): the sealed events read back from a real
broker, saved as JSONL and loaded again, fill a fresh learner store exactly as the events themselves do:
each algorithm of bench/algorithms.py learns from what the users sent, nothing lost or added."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer

from adapters.signing import ControlKeys, TrustedKeys
from bench.feedback_log import load_log, log_counts, questions_of, recorded, save_log, taste_spread
from feedback.event_hmac import sealed
from feedback.schema import (
    TOPIC_FEEDBACK,
    TOPIC_INTERACTIONS,
    Interaction,
    Message,
    Pairwise,
    Thumbs,
    encode,
)
from feedback.topics import ensure_topics
from harness.broker import start_broker
from learner.store import Store
from rlhf.settings import Settings

EVENT_KEY = "tests: event hmac key of the recorded log, 32+ chars"


def stream() -> list:
    """Six questions answered twice by four users, and their feedback: pairwise choices, thumbs, and
    one thumb changed later (it replaces the first)."""
    events, ts = [], 1_000.0
    for i in range(6):
        user, conv = f"user{i % 4}", f"conv{i}"
        for k in range(2):
            ts += 1
            events.append((TOPIC_INTERACTIONS, Interaction(
                response_id=f"r{i}-{k}", completion_id=f"c{i}", choice_index=k, conversation_id=conv, user=user,
                messages=[Message(role="user", content=f"question {i}")], response=f"answer {i}.{k}",
                finish_reason="stop", model="tiny", ts=ts)))
        ts += 1
        if i % 2:
            fb = Pairwise(chosen_response_id=f"r{i}-0", rejected_response_id=f"r{i}-1", conversation_id=conv,
                          user=user, ts=ts)
        else:
            fb = Thumbs(response_id=f"r{i}-0", conversation_id=conv, user=user, value="up", ts=ts)
        events.append((TOPIC_FEEDBACK, fb))
    events.append((TOPIC_FEEDBACK, Thumbs(response_id="r0-0", conversation_id="conv0", user="user0", value="down",
                                          ts=ts + 1)))
    return [(t, sealed(e, EVENT_KEY)) for t, e in events]


def fresh_store(path) -> Store:
    return Store(path / "learner.sqlite3", adapter_dir=path / "adapters", keys=ControlKeys(None, TrustedKeys({})),
                 event_hmac_key=EVENT_KEY, split_key="tests: the split key of the log test")


def test_a_recorded_log_replays_into_the_same_store_as_the_stream(tmp_path):
    events = stream()
    broker = start_broker(tmp_path / "broker.log")
    try:
        ensure_topics(Settings(kafka_bootstrap=broker.bootstrap))  # 3 partitions: order is by timestamp
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for topic, ev in reversed(events):  # sent newest first: the log is still oldest first
            producer.send(topic, key=ev.key(), value=encode(ev))
        producer.flush(15)
        producer.close()
        got = recorded(broker.bootstrap)
        first_four = recorded(broker.bootstrap, max_feedback=4)
    finally:
        broker.stop()

    save_log(tmp_path / "log.jsonl", got)
    replayed = load_log(tmp_path / "log.jsonl")
    assert [(t, e.model_dump()) for t, e in replayed] == [(t, e.model_dump()) for t, e in events]
    assert log_counts(replayed) == {"interactions": 12, "pairwise": 3, "thumbs": 4}
    assert questions_of(replayed) == {f"question {i}" for i in range(6)}

    direct, again = fresh_store(tmp_path / "direct"), fresh_store(tmp_path / "replay")
    assert direct.ingest(events).refused == 0
    res = again.ingest(replayed)
    assert res.refused == 0 and res.new == len(events)  # every HMAC still verifies
    assert again.counts() == direct.counts()
    assert again.counts()["feedback_joined"] == 6 and again.joined_by_type() == {"thumbs": 3, "pairwise": 3,
                                                                                  "demonstration": 0}
    assert again.feedback_examples("train") + again.feedback_examples("heldout") == (
        direct.feedback_examples("train") + direct.feedback_examples("heldout"))

    # at most N feedback events: the N oldest, with every interaction
    assert log_counts(first_four) == {"interactions": 12, "thumbs": 2, "pairwise": 2}
    assert [e.event_id for t, e in first_four if t == TOPIC_FEEDBACK] == [
        e.event_id for t, e in events if t == TOPIC_FEEDBACK][:4]


def test_taste_spread_tells_a_question_that_decides_from_a_sample_that_does():
    events = stream()  # six conversations, answers "answer i.0" and "answer i.1"
    by_question = taste_spread(events, lambda text: text.startswith(("answer 0.", "answer 1.")))
    # 4 of 12 answers liked; the two answers of each question agree, by chance they would differ 2 p (1 - p)
    assert by_question == {"liked": pytest.approx(4 / 12), "questions_with_two_answers": 6, "differ": 0.0,
                           "independent": pytest.approx(2 * (1 / 3) * (2 / 3))}
    by_sample = taste_spread(events, lambda text: text.endswith(".0"))   # one answer of every question
    assert (by_sample["differ"], by_sample["independent"]) == (1.0, 0.5)
    # a second turn in a conversation is another question: its one answer is not paired with the first turn's
    follow_up = Interaction(response_id="r0-x", completion_id="c0x", conversation_id="conv0", user="user0",
                            messages=[Message(role="user", content="question 0"), Message(role="assistant",
                                      content="answer 0.0"), Message(role="user", content="and then?")],
                            response="answer 0.x", finish_reason="stop", model="tiny", ts=5_000.0)
    longer = taste_spread([*events, (TOPIC_INTERACTIONS, follow_up)], lambda text: text.endswith(".0"))
    assert (longer["questions_with_two_answers"], longer["differ"]) == (6, 1.0)
