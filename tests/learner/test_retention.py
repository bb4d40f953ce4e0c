"""Retention of the learner store (learner/retention.py) on a real SQLite store: old history that
training is done with goes; feedback no round has had, pending feedback, what they refer to and
everything about rlhf.adapters stay."""

from __future__ import annotations

import time

import pytest

from feedback.schema import TOPIC_ADAPTERS, AdapterAnnounced
from learner.retention import prune
from tests.learner.test_store import ingest, interaction, open_store, thumbs

DAY = 86400.0
NOW = time.time()
OLD = NOW - 100 * DAY


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "learner.sqlite3", heldout_fraction=0.0, adapter_dir=tmp_path / "adapters")
    yield s
    s.close()


def ids(store, sql: str) -> set[str]:
    return {r[0] for r in store.db.execute(sql).fetchall()}


def fill(store) -> None:
    """100 days ago: a trained-on thumbs, an orphan interaction, a dead thumbs (its dead letter sent),
    an announcement; then a finished round; then old feedback no round has had, pending feedback and
    today's interaction and thumbs."""
    ingest(store, [interaction("r_old", conv="c_old", ts=OLD), thumbs("r_old", "up", OLD, conv="c_old"),
                   interaction("r_orphan", conv="c_orphan", ts=OLD),
                   thumbs("r_missing", "down", OLD, conv="c_missing")], now=OLD)
    ingest(store, [(TOPIC_ADAPTERS, AdapterAnnounced(version="policy@v1", path="policy/v1", manifest_sha256="0" * 64))],
           now=OLD)
    store.expire_pending(60, now=OLD + 3600)  # r_missing's interaction never came: dead, dead letter queued
    store.mark_sent([r["event_id"] for r in store.unsent_outbox()])
    with store.tx():
        store.db.execute("UPDATE outbox SET created_at=?", (OLD,))
    round_id, _, _ = store.start_round()
    store.finish_round(round_id, "rejected")
    ingest(store, [interaction("r_old2", conv="c_old2", ts=OLD), thumbs("r_old2", "down", OLD, conv="c_old2"),
                   thumbs("r_never", "up", OLD, conv="c_never")], now=OLD)
    ingest(store, [interaction("r_new", conv="c_new", ts=NOW), thumbs("r_new", "up", NOW, conv="c_new")], now=NOW)


def test_old_history_goes_and_what_training_needs_stays(store):
    fill(store)
    adapter_events = ids(store, f"SELECT event_id FROM events WHERE topic='{TOPIC_ADAPTERS}'")
    routing = store.get_meta("routing")
    assert adapter_events and routing

    deleted = prune(store, keep_days=30, keep_events=0, now=NOW)

    assert ids(store, "SELECT response_id FROM interactions") == {"r_old2", "r_new"}  # r_old2: feedback no round had
    feedback = dict(store.db.execute("SELECT COALESCE(response_id, chosen_id), status FROM feedback").fetchall())
    assert feedback == {"r_old2": "joined", "r_never": "pending", "r_new": "joined"}
    assert deleted["feedback"] == 2 and deleted["interactions"] == 2  # r_old (trained on) and r_missing (dead)
    assert deleted["outbox"] == 1 and not store.db.execute("SELECT 1 FROM outbox").fetchall()
    # the redelivery guard keeps only recent ids, and every rlhf.adapters id; the routing mirror is untouched
    assert ids(store, f"SELECT event_id FROM events WHERE topic='{TOPIC_ADAPTERS}'") == adapter_events
    assert store.get_meta("routing") == routing
    assert store.db.execute("SELECT COUNT(*) FROM events WHERE received_at < ? AND topic != ?",
                            (NOW - 30 * DAY, TOPIC_ADAPTERS)).fetchone()[0] == 0
    assert store.db.execute("SELECT COUNT(*) FROM rounds").fetchone()[0] == 1
    # the next round still sees the feedback it has not had, with its interaction
    assert store.new_feedback_count() == 2
    assert {ex["key"] for ex in store.feedback_examples("train")} == {"thumbs:u:r_old2", "thumbs:u:r_new"}
    assert prune(store, keep_days=30, keep_events=0, now=NOW) == {"feedback": 0, "interactions": 0, "events": 0,
                                                                  "outbox": 0}


def test_the_count_bound_keeps_the_newest_and_nothing_goes_while_a_round_runs(store):
    fill(store)
    round_id, _, _ = store.start_round()  # running: it reads the store, nothing may go
    assert prune(store, keep_days=0, keep_events=1, now=NOW) == {"feedback": 0, "interactions": 0, "events": 0,
                                                                 "outbox": 0}
    store.finish_round(round_id, "rejected")  # now every joined row was had by a round

    prune(store, keep_days=0, keep_events=1, now=NOW)

    assert ids(store, "SELECT response_id FROM interactions") == {"r_new"}
    feedback = dict(store.db.execute("SELECT response_id, status FROM feedback").fetchall())
    assert feedback == {"r_new": "joined", "r_never": "pending"}  # the newest, and the one still pending


def test_no_bounds_prune_nothing(store):
    fill(store)
    assert prune(store, keep_days=0, keep_events=0, now=NOW + 1000 * DAY) == {
        "feedback": 0, "interactions": 0, "events": 0, "outbox": 0}
    assert store.db.execute("SELECT COUNT(*) FROM interactions").fetchone()[0] == 4
