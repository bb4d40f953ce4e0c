"""Fixtures for the feedback tests: private brokers and an independent topic reader.

Everything is real: Tansu processes and kafka-python clients; the reader uses plain
kafka-python (not feedback.consumer), so it checks what any standard consumer would see.
"""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaConsumer, TopicPartition

from feedback.schema import parse_event
from harness.broker import start_broker


@pytest.fixture
def own_broker(tmp_path):
    """A private Tansu broker for tests that pause it; yields (bootstrap, Popen)."""
    broker = start_broker(tmp_path / "broker.log")
    yield broker.bootstrap, broker.proc
    broker.stop()


def read_topic(bootstrap: str, topic: str, *, until=None, timeout_s: float = 30.0, quiet_s: float = 2.0) -> list[dict]:
    """Every message on `topic` as parsed JSON, read from the beginning by a plain consumer.

    Stops when `until(messages)` is true (then reads `quiet_s` more to catch extras), or when
    nothing new arrived for `quiet_s` without `until`, or after `timeout_s`."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                             consumer_timeout_ms=500)
    try:
        deadline = time.monotonic() + timeout_s
        parts = None
        while parts is None and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                time.sleep(0.2)
        if parts is None:
            return []
        consumer.assign([TopicPartition(topic, p) for p in parts])
        consumer.seek_to_beginning()
        out: list[dict] = []
        last_new = time.monotonic()
        satisfied_at = None
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for recs in batch.values():
                for r in recs:
                    try:
                        body = json.loads(r.value)
                    except ValueError:
                        body = {"_raw": r.value}
                    out.append({"_partition": r.partition, "_offset": r.offset, "_key": r.key, **body})
                    last_new = time.monotonic()
            if until is not None:
                if satisfied_at is None and until(out):
                    satisfied_at = time.monotonic()
                if satisfied_at is not None and time.monotonic() - satisfied_at > quiet_s:
                    break
            elif time.monotonic() - last_new > quiet_s:
                break
        return out
    finally:
        consumer.close()


def as_event(msg: dict):
    """Validate one message from `read_topic` against the schema (the contract)."""
    return parse_event(json.dumps({k: v for k, v in msg.items() if not k.startswith("_")}))
