"""A real `rlhf learn` against the real broker: events written straight to Kafka without serving's HMAC
(or with a wrong one) and routing changes without a trusted signature are dead letters, never stored."""

from __future__ import annotations

import uuid

from kafka import KafkaProducer

from adapters.signing import load_signing_key, make_key_pair, signed
from feedback.event_hmac import sealed
from feedback.schema import (TOPIC_ADAPTERS, TOPIC_FEEDBACK, TOPIC_INTERACTIONS, DeadLetter, Interaction, Message,
                             RoutingChanged, Thumbs, encode)
from feedback.topics import ensure_topics
from harness.kafka import read_topic
from harness.waiting import wait_until
from rlhf.settings import Settings


def test_the_learner_stores_only_what_serving_and_a_trusted_key_wrote(broker, learner_factory, control_env, tmp_path):
    ensure_topics(Settings(kafka_bootstrap=broker))
    key = control_env["RLHF_EVENT_HMAC_KEY"]
    n = uuid.uuid4().hex[:8]
    asked = Interaction(response_id=f"{n}-r", completion_id=f"{n}-c", conversation_id=f"{n}-c", user=f"{n}-u",
                        messages=[Message(role="user", content="Tell me about cats.")], response="Cats.", model="tiny")
    vote = dict(response_id=f"{n}-r", conversation_id=f"{n}-c", user=f"{n}-u", value="up")
    forged = [(TOPIC_FEEDBACK, Thumbs(**vote)),                                     # no HMAC
              (TOPIC_FEEDBACK, sealed(Thumbs(**vote), "a key serving does not use" * 2)),  # wrong key
              (TOPIC_ADAPTERS, RoutingChanged(action="rollback")),                  # unsigned
              (TOPIC_ADAPTERS, signed(RoutingChanged(action="rollback"), make_key_pair(tmp_path / "k")))]
    real = [(TOPIC_INTERACTIONS, sealed(asked, key)), (TOPIC_FEEDBACK, sealed(Thumbs(**vote), key)),
            (TOPIC_ADAPTERS, signed(RoutingChanged(action="canary", version=None),
                                    load_signing_key(control_env["RLHF_SIGNING_KEY_FILE"])))]
    producer = KafkaProducer(bootstrap_servers=[broker])
    for topic, ev in forged + real:  # the forgeries first
        producer.send(topic, key=ev.key(), value=encode(ev)).get(timeout=15)
    producer.close()

    lp = learner_factory(RLHF_KAFKA_BOOTSTRAP=broker, RLHF_LEARNER_MIN_FEEDBACK=1000,
                         RLHF_LEARNER_INTERVAL_S=100000).start(300)
    ids = {ev.event_id for _, ev in forged}

    def letters():
        found = [e for e in read_topic(broker, "rlhf.deadletter") if isinstance(e, DeadLetter) and e.origin == "learner"]
        return [e for e in found if any(i in e.payload for i in ids)]

    got = wait_until(lambda: len(letters()) >= 4 and letters(), 120, 0.5, "four dead letters from the learner")
    assert sorted(e.reason.split(" refused: ")[1].split(":")[0].split(" (")[0] for e in got) == [
        "thumbs event with a wrong HMAC", "thumbs event without an HMAC", "unknown key", "unsigned"]
    stored = lp.wait("the real events stored", lambda: lp.query(
        "SELECT event_id FROM events WHERE event_id IN (?, ?, ?)", tuple(ev.event_id for _, ev in real)), 60)
    assert len(stored) == 3
    assert not lp.query(f"SELECT 1 FROM events WHERE event_id IN ({','.join('?' * len(ids))})", tuple(ids))
    assert lp.query("SELECT value FROM feedback WHERE user = ?", (f"{n}-u",)) == [(1,)]  # one vote: the real one
    lp.stop()
