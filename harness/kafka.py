"""Kafka from the outside, with plain kafka-python clients (not the product's consumer or producer).

`security`: kafka-python TLS/SASL keyword arguments (`feedback.kafka_security.client_security`) for a
broker that needs them."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from adapters.signing import SigningKey, signed
from feedback.schema import TOPIC_ADAPTERS, encode, parse_event


def announce(bootstrap: str, *events, key: SigningKey | None, security: dict | None = None) -> None:
    """Put adapter events (AdapterAnnounced, RoutingChanged) on rlhf.adapters: signed by `key` as the learner
    or CLI would sign them, or with key=None as they are (the way anyone who can write to Kafka could)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, **(security or {}))
    try:
        for ev in events:
            ev = signed(ev, key) if key is not None else ev
            producer.send(TOPIC_ADAPTERS, key=ev.key(), value=encode(ev)).get(timeout=15)
    finally:
        producer.close(timeout=5)


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0, security: dict | None = None) -> list:
    """Every event on `topic` right now, parsed, read with an independent consumer (no group)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest", fetch_max_wait_ms=100, **(security or {}))
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out = []
        deadline = time.monotonic() + timeout_s
        while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                out += [parse_event(r.value) for r in recs]
        return out
    finally:
        c.close()
