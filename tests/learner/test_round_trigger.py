"""The learner starts a round only when the gate could measure it: enough new feedback, and held-out
users' feedback of at least one kind the reward model is judged on (learner/main.py should_train).

The held-out count must be the one the round will see: the same split (by user; by conversation when
every user is on one side) as the examples a round reads, checked here against `feedback_examples`."""

from __future__ import annotations

import pytest

from learner.gate import GateConfig
from learner.main import should_train
from rlhf.settings import Settings
from feedback.schema import TOPIC_ADAPTERS, TOPIC_INTERACTIONS, Interaction, Message, RoutingChanged
from tests.learner.canary_store import ACTIVE, CANARY, canary_store, feedback
from tests.learner.test_store import ingest, open_store, thumbs

GATE = GateConfig(min_heldout_pairs=8, min_heldout_thumbs=4)
SETTINGS = Settings(learner_min_feedback=10, learner_interval_s=600.0)


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "learner.sqlite3", heldout_fraction=0.5, adapter_dir=tmp_path / "adapters",
                   split_key="tests: trigger split key")
    yield s
    s.close()


def give(store, users: list[str], value: str, start: int) -> int:
    """One answer per user and one thumb on it; returns the next free answer number."""
    items = []
    for k, user in enumerate(users, start):
        answer = Interaction(response_id=f"r{k}", completion_id=f"x{k}", conversation_id=f"c{k}", user=user,
                             messages=[Message(role="user", content=f"q{k}")], response=f"answer {k}", model="tiny")
        items.append((TOPIC_INTERACTIONS, answer))
        items.append(thumbs(f"r{k}", value, 1.0 + k, conv=f"c{k}", user=user))
    ingest(store, items)
    return start + len(users)


def round_counts(store) -> dict[str, int]:
    """What a round would hold out, from the examples it reads (learner/round.py split_feedback)."""
    held = store.feedback_examples("heldout")
    if not (held and store.feedback_examples("train")):
        held = store.feedback_examples("heldout", by="conversation")
    return {"pairs": sum(e["type"] == "pairwise" for e in held),
            "ups": sum(e["type"] == "thumbs" and e["label"] == 1 for e in held),
            "downs": sum(e["type"] == "thumbs" and e["label"] == 0 for e in held)}


def test_no_round_until_held_out_users_gave_both_ups_and_downs(store):
    users = [f"user{i}" for i in range(40)]
    held_users = [u for u in users if store.split_of(u, 0.5) == "heldout"]
    assert 4 <= len(held_users) < len(users)  # the fixed key puts users on both sides

    n = give(store, users, "up", 0)  # 40 new events, but held-out users only said "up"
    go, new, why, _ = should_train(store, SETTINGS, 0.0, GATE)
    assert (go, new) == (False, 40)
    assert f"{len(held_users)} ups and 0 downs" in why and "waiting" in why
    assert store.heldout_feedback_counts() == round_counts(store) == {"pairs": 0, "ups": len(held_users),
                                                                     "downs": 0}
    # asked again with nothing new: no second scan, nothing to say
    assert should_train(store, SETTINGS, 0.0, GATE, thin_at=40) == (False, 40, "", True)

    give(store, held_users[:3] + [u for u in users if u not in held_users][:5], "down", n)  # 3 held-out downs
    go, _, why, _ = should_train(store, SETTINGS, 0.0, GATE, thin_at=40)
    assert not go and "3 downs" in why

    give(store, held_users[3:4], "down", 100)  # the 4th held-out down
    go, new, why, _ = should_train(store, SETTINGS, 0.0, GATE, thin_at=48)
    assert go and new == 49 and why == "49 new feedback events (>= 10)"
    assert store.heldout_feedback_counts() == round_counts(store)


def test_one_user_is_split_by_conversation_as_the_round_does(store):
    give(store, ["solo"] * 30, "up", 0)
    give(store, ["solo"] * 30, "down", 30)
    counts = store.heldout_feedback_counts()
    assert counts == round_counts(store)
    assert counts["ups"] > 0 and counts["downs"] > 0 and counts["ups"] + counts["downs"] < 60


def test_few_new_events_wait_for_the_interval_before_any_held_out_check(store):
    give(store, [f"user{i}" for i in range(5)], "up", 0)
    assert should_train(store, SETTINGS, 0.0, GATE) == (False, 5, "", False)  # below learner_min_feedback
    go, _, why, _ = should_train(store, SETTINGS, 601.0, GATE)              # interval passed: now the gate's need
    assert not go and "5 new feedback events and 601 s since the last round" in why and "waiting" in why


def test_no_round_while_users_judge_a_canary_the_controller_decides(tmp_path):
    store = canary_store(tmp_path)  # policy@v2 announced as a canary: the controller judges it
    try:
        feedback(store, 20, {ACTIVE: 0.5, CANARY: 0.5})  # 60 new thumbs: enough for a round
        go, new, why, _ = should_train(store, SETTINGS, 0.0, GATE)
        assert (go, new) == (False, 60)
        assert f"users are judging the canary {CANARY}" in why

        # an operator names the canary: the controller no longer judges it, rounds are not held back
        ingest(store, [(TOPIC_ADAPTERS, RoutingChanged(action="canary", version=CANARY, canary_fraction=0.2))])
        go, _, why, _ = should_train(store, SETTINGS, 0.0, GATE)
        assert "canary" not in why and (go or "held-out" in why)  # the gate's condition decides now
    finally:
        store.close()


def test_a_decided_canary_lets_the_next_round_start(tmp_path):
    store = canary_store(tmp_path)
    try:
        feedback(store, 20, {ACTIVE: 0.5, CANARY: 0.5})
        ingest(store, [(TOPIC_ADAPTERS, RoutingChanged(action="canary", version=None, source="promotion-controller",
                                                       reason="expired"))])
        assert store.routing().canary is None
        go, _, why, _ = should_train(store, SETTINGS, 0.0, GATE)
        assert "canary" not in why and (go or "held-out" in why)
    finally:
        store.close()


def test_waiting_for_a_canary_does_not_count_as_thin_held_out_feedback(tmp_path):
    """The learner's loop passes back the count at which held-out feedback was too thin; a wait for the
    canary must not set it, or the round after the decision would wait for one more event."""
    store = canary_store(tmp_path)
    try:
        feedback(store, 20, {ACTIVE: 0.5, CANARY: 0.5})
        waiting = should_train(store, SETTINGS, 0.0, GATE)
        assert not waiting.go and not waiting.heldout_thin and "judging the canary" in waiting.why
        assert waiting.thin_at is None  # what learner/main.py's loop passes back

        ingest(store, [(TOPIC_ADAPTERS, RoutingChanged(action="canary", version=None, source="promotion-controller",
                                                       reason="expired"))])
        decided = should_train(store, SETTINGS, 0.0, GATE, waiting.thin_at)  # no new feedback since the wait
        assert decided.new == waiting.new
        assert decided.go or (decided.heldout_thin and "held-out users gave" in decided.why)
    finally:
        store.close()
