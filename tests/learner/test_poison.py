"""Nothing stuck: a real learner (`rlhf learn`) on the real broker moves past records it cannot store,
and its /healthz turns 503 while records wait and none gets stored.

Two faults:
- A record the store refuses. No well-formed event makes today's store raise (the NUL-byte announcement
  of the issue is now refused, unsigned; it is sent too, and must change nothing), so the
  test adds a trigger to the learner's own SQLite file that aborts the insert of one marked interaction:
  a stand-in for any bug that one record sets off. It must land on rlhf.deadletter with the reason, and
  the records around it must be stored.
- A store that takes nothing: the test holds SQLite's write lock, so every ingest waits. Records wait
  (a polled batch not stored), none is stored, and after RLHF_LEARNER_STALL_S /healthz says 503; once
  the lock is released the batch is stored and /healthz says 200 again.
"""

from __future__ import annotations

import json
import sqlite3
import uuid

import httpx

from feedback.schema import (TOPIC_ADAPTERS, TOPIC_DEADLETTER, TOPIC_FEEDBACK, TOPIC_INTERACTIONS, AdapterAnnounced,
                             Interaction, Message, Thumbs)
from feedback.topics import ensure_topics
from harness.kafka import read_topic
from rlhf.settings import Settings
from tests.learner.test_crash import (
    produce,  # events as serving writes them, with its HMAC
)

STALL_S = 3


def interaction(nonce: str, i: int, response: str = "Cats are warm.") -> Interaction:
    return Interaction(response_id=f"{nonce}-r{i}", completion_id=f"{nonce}-c{i}", choice_index=0,
                       conversation_id=f"{nonce}-conv{i}", user=f"{nonce}-u",
                       messages=[Message(role="user", content=f"Tell me about cats, {i}.")], response=response,
                       finish_reason="stop", model="tiny")


def health(lp) -> tuple[int, dict]:
    r = httpx.get(lp.url + "/healthz", timeout=5)
    return r.status_code, r.json()


def test_unstorable_record_goes_to_deadletter_and_a_stalled_store_turns_healthz_503(broker, learner_factory,
                                                                                    control_env):
    ensure_topics(Settings(kafka_bootstrap=broker))
    nonce = uuid.uuid4().hex[:8]
    lp = learner_factory(RLHF_KAFKA_BOOTSTRAP=broker, RLHF_LEARNER_MIN_FEEDBACK=100000,
                         RLHF_LEARNER_INTERVAL_S=100000, RLHF_LEARNER_JOIN_WAIT_S=100000,
                         RLHF_LEARNER_STALL_S=STALL_S).start()
    store_path = lp.data_dir / "learner.sqlite3"
    db = sqlite3.connect(store_path, timeout=60, isolation_level=None)
    # the stand-in fault (see the module docstring): this one interaction cannot be inserted
    db.execute(f"CREATE TRIGGER poison_pill BEFORE INSERT ON interactions WHEN NEW.response = 'poison {nonce}' "
               "BEGIN SELECT RAISE(ABORT, 'poison pill'); END")

    good_a, poison, good_b = interaction(nonce, 0), interaction(nonce, 1, f"poison {nonce}"), interaction(nonce, 2)
    nul_path = AdapterAnnounced(version=f"evil-{nonce}@v1", path="evil/v1\x00/../../etc", manifest_sha256="0" * 64)
    thumbs = Thumbs(response_id=good_b.response_id, conversation_id=good_b.conversation_id, user=good_b.user,
                    value="up")
    produce(broker, [(TOPIC_INTERACTIONS, good_a), (TOPIC_ADAPTERS, nul_path), (TOPIC_INTERACTIONS, poison),
                     (TOPIC_INTERACTIONS, good_b), (TOPIC_FEEDBACK, thumbs)], control_env["RLHF_EVENT_HMAC_KEY"])

    mine = f"{nonce}-%"
    lp.wait("the records around the poison to be stored",
            lambda: lp.query("SELECT COUNT(*) FROM interactions WHERE response_id LIKE ?", (mine,))[0][0] == 2
            and lp.query("SELECT status FROM feedback WHERE response_id=?", (good_b.response_id,)) == [("joined",)],
            timeout=120)
    assert lp.query("SELECT response_id FROM interactions WHERE response_id=?", (poison.response_id,)) == []
    letters = [ev for ev in read_topic(broker, TOPIC_DEADLETTER) if poison.event_id in ev.payload]
    assert letters, "the record the learner could not store is not on rlhf.deadletter"
    assert "IntegrityError: poison pill" in letters[0].reason and letters[0].source_topic == TOPIC_INTERACTIONS
    assert letters[0].origin == "consumer:rlhf-learner"
    # the NUL-byte announcement changed nothing the replicas would route to, and is on rlhf.deadletter too
    routing = [json.loads(v) for (v,) in lp.query("SELECT value FROM meta WHERE key='routing'")]
    assert all(nul_path.version not in r["known"] and r["active"] != nul_path.version for r in routing)
    lp.wait("the NUL-byte announcement on rlhf.deadletter",
            lambda: [ev for ev in read_topic(broker, TOPIC_DEADLETTER) if nul_path.event_id in ev.payload], timeout=60,
            every=0.5)
    assert health(lp)[0] == 200
    sent = [line for line in lp.metrics().splitlines()
            if line.startswith('rlhf_learner_deadletters_total{topic="rlhf.interactions"}')]
    assert sent and float(sent[0].split()[-1]) >= 1

    # --- a store that takes nothing: records wait, none is stored -> 503; released -> stored, 200
    db.execute("BEGIN IMMEDIATE")  # SQLite's write lock: the learner's next ingest waits for it
    try:
        late = interaction(nonce, 3)
        produce(broker, [(TOPIC_INTERACTIONS, late)], control_env["RLHF_EVENT_HMAC_KEY"])
        _, body = lp.wait("/healthz to report the stall", lambda: (h := health(lp))[0] == 503 and h, timeout=120,
                             every=0.2)
        assert body["consumer_stalled"] is True and body["records_waiting"] >= 1 and body["consumer_alive"] is True
    finally:
        db.execute("ROLLBACK")
        db.close()
    lp.wait("the waiting record to be stored",
            lambda: lp.query("SELECT 1 FROM interactions WHERE response_id=?", (late.response_id,)), timeout=120)
    lp.wait("/healthz to recover", lambda: health(lp)[0] == 200, timeout=30, every=0.2)
    assert lp.stop() == 0
