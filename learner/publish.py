"""Publishing: adapter into the store, signed announcement out through the learner store's outbox.

    publish_adapter(store, settings, folder, ...)    # write_adapter + one SQLite transaction
    OutboxSender(settings).flush(store)              # sends what the outbox holds, marks it sent

The announcement is signed with RLHF_SIGNING_KEY_FILE (adapters/signing.py; serving applies
nothing unsigned). It (and every dead letter) is first written to the `outbox` table in the same
transaction that records the adapter as published, then sent with an idempotent producer
(acks from all in-sync replicas) and marked sent. A learner killed between the two sends it
on restart with the same event id, so the announcement is never lost and a replica can tell
a repeat from a new one. The learner is a plain (threaded) process, so it uses kafka-python's
blocking producer directly rather than serving's asyncio publisher.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from kafka import KafkaProducer

from adapters.store import write_adapter
from feedback.kafka_security import client_security
from feedback.schema import TOPIC_ADAPTERS, AdapterAnnounced
from feedback.topics import bootstrap_servers

log = logging.getLogger(__name__)


def publish_adapter(store, settings, folder: Path | str, *, name: str = "policy", parent: str | None,
                    base_model: str, metrics: dict, feedback_count: int, round_id: int | None,
                    number: int | None = None, canary_fraction: float | None = None) -> AdapterAnnounced:
    """Store the PEFT folder as the next `name@vN` (or `name@v<number>`), record it, queue its
    announcement (`canary_fraction` 0: active at once, whatever RLHF_CANARY_FRACTION says); returns the event."""
    version, rel, sha = write_adapter(settings.adapter_dir, name, folder, parent=parent, base_model=base_model,
                                      metrics=metrics, feedback_count=feedback_count, source_kind="learner",
                                      number=number)
    ev = store.keys.sign(AdapterAnnounced(version=version, path=rel, manifest_sha256=sha, parent=parent,
                                          source="learner", canary_fraction=canary_fraction))
    with store.tx():
        store.add_to_outbox(TOPIC_ADAPTERS, ev)
        store.db.execute(
            "INSERT OR REPLACE INTO adapters(version, path, parent, manifest_sha256, status, reason, round_id, "
            "created_at, metrics) VALUES(?,?,?,?,'published',NULL,?,?,?)",
            (version, rel, parent, sha, round_id, time.time(), json.dumps(metrics)))
    # Follow our own announcement at once (the consumed copy is then a known event id, skipped),
    # so the next round starts from this version even before it comes back from the broker.
    store.ingest([(TOPIC_ADAPTERS, ev)])
    log.info("published %s (%s), parent %s", version, rel, parent or "base")
    return ev


class OutboxSender:
    """Sends the learner store's outbox (announcements, dead letters) to Kafka, at least once."""

    def __init__(self, settings, timeout_s: float = 10.0):
        # kafka-python 3 defaults to acks='all' + idempotence; setting either explicitly to
        # something else would silently turn idempotence off, so leave them be.
        self.producer = KafkaProducer(bootstrap_servers=bootstrap_servers(settings), client_id="rlhf-learner",
                                      linger_ms=5, request_timeout_ms=int(timeout_s * 1000),
                                      **client_security(settings))
        self.timeout_s = timeout_s
        self._lock = threading.Lock()

    def flush(self, store) -> int:
        """Send every unsent outbox row; returns how many were acked. Raises on broker errors."""
        with self._lock:
            rows = store.unsent_outbox()
            if not rows:
                return 0
            futures = [(r["event_id"], self.producer.send(r["topic"], value=bytes(r["payload"]),
                                                          key=bytes(r["key"]) if r["key"] is not None else None))
                       for r in rows]
            self.producer.flush(self.timeout_s)
            acked = [eid for eid, f in futures if f.succeeded()]
            failed = [f.exception for _, f in futures if f.failed()]
            if acked:
                store.mark_sent(acked)
            if failed:
                log.warning("outbox: %d of %d events not acked yet: %s", len(failed), len(rows), failed[0])
            return len(acked)

    def close(self) -> None:
        try:
            self.producer.close(timeout=5)
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass
