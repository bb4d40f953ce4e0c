"""A recorded feedback log: the sealed events serving wrote (interactions and feedback), kept as JSONL so
that several fresh learners can each ingest exactly the same stream.

    events = recorded(bootstrap, max_feedback=300)   # read from the broker's topics, oldest first
    save_log("log.jsonl", events)                     # one {"topic", "event"} object a line
    store.ingest(load_log("log.jsonl"))               # as `rlhf learn` would have stored them

The events keep serving's HMAC (RLHF_EVENT_HMAC_KEY): a store with another key refuses them, so a
replay either stores what was recorded or says it could not.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from feedback.schema import (
    TOPIC_FEEDBACK,
    TOPIC_INTERACTIONS,
    Event,
    Interaction,
    encode,
    parse_event,
)
from harness.kafka import read_topic
from learner.store import prompt_key

Record = tuple[str, Event]
# The event HMAC key of the logs bench/algorithms.py records: its serving seals with it, its replays check it
EVENT_KEY = "bench: the event HMAC key of recorded logs"


def recorded(bootstrap: str, max_feedback: int | None = None, timeout_s: float = 30.0) -> list[Record]:
    """Every interaction and feedback event on the broker now, in the order of their timestamps
    (an interaction before feedback of the same instant); only the `max_feedback` oldest feedback events."""
    interactions = [(TOPIC_INTERACTIONS, e) for e in read_topic(bootstrap, TOPIC_INTERACTIONS, timeout_s)]
    feedback = sorted(((TOPIC_FEEDBACK, e) for e in read_topic(bootstrap, TOPIC_FEEDBACK, timeout_s)),
                      key=lambda r: r[1].ts)
    return sorted(interactions + feedback[:max_feedback], key=lambda r: (r[1].ts, r[0] != TOPIC_INTERACTIONS))


def save_log(path: Path | str, events: list[Record]) -> None:
    with open(path, "w") as f:
        for topic, ev in events:
            f.write(json.dumps({"topic": topic, "event": json.loads(encode(ev))}) + "\n")


def load_log(path: Path | str) -> list[Record]:
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out.append((row["topic"], parse_event(json.dumps(row["event"]))))
    return out


def log_counts(events: list[Record]) -> dict[str, int]:
    """Interactions, and feedback events by type, in a log."""
    counts = {"interactions": sum(isinstance(e, Interaction) for _, e in events)}
    for topic, e in events:
        if topic == TOPIC_FEEDBACK:
            counts[e.type] = counts.get(e.type, 0) + 1
    return counts


def questions_of(events: list[Record]) -> set[str]:
    """The user messages asked in a log (held-out questions must not be among them)."""
    return {m.content for _, e in events if isinstance(e, Interaction) for m in e.messages if m.role == "user"}


def taste_spread(events: list[Record], likes: Callable[[str], bool]) -> dict[str, float]:
    """How a taste falls on a log's answers: `liked`, the share of answers it likes; over the questions
    answered twice in one conversation, `differ`, the share where it likes exactly one, and `independent`,
    2p(1 - p) with p the liked share of those answers: what `differ` would be if each answer were liked
    by chance, whatever its question. `differ` far below `independent` says the question decides, not
    the sample: then users seldom see two answers to choose between, and the policy's own answers to a
    question seldom make a pair either (online DPO, RLOO and a reward model's ranking have little to go on)."""
    by_question: dict[tuple[str, str], list[bool]] = defaultdict(list)  # (conversation, prompt key) -> liked
    for _, e in events:
        if isinstance(e, Interaction):
            key = (e.conversation_id, prompt_key([m.model_dump() for m in e.messages]))  # as the store keys a prompt
            by_question[key].append(likes(e.response))
    answers = [x for v in by_question.values() for x in v]
    twos = [v for v in by_question.values() if len(v) == 2]
    p = sum(map(sum, twos)) / (2 * len(twos)) if twos else 0.0
    return {"liked": sum(answers) / len(answers) if answers else 0.0, "questions_with_two_answers": len(twos),
            "differ": sum(a != b for a, b in twos) / len(twos) if twos else 0.0, "independent": 2 * p * (1 - p)}
