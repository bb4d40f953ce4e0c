"""The topic `rlhf.adapters`: read it from offset 0, verify what it announces, apply it, write to it.

    apply_event(state, ev, adapter_dir)   the one "verify the announcement, then apply it" step
    refusal(ev, adapter_dir)              its verify half alone (for a caller that applies elsewhere)
    AdapterLog(settings)                  the whole topic, without a consumer group
    replay_state(settings)                snapshot + unseen events: what every replica routes to
    announce(settings, events)            publish AdapterAnnounced / RoutingChanged events

Every replica must see every announcement, so the reader uses `assign()` without a consumer
group and commits nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from adapters.routing_state import RoutingState
from adapters.snapshot import read_snapshot
from adapters.store import verify_announced
from feedback.schema import (
    TOPIC_ADAPTERS,
    TOPIC_DEADLETTER,
    AdapterAnnounced,
    RoutingChanged,
    encode,
    parse_event,
)
from feedback.topics import bootstrap_servers, ensure_topics

log = logging.getLogger(__name__)

RoutingEvent = AdapterAnnounced | RoutingChanged


def refusal(ev: RoutingEvent, adapter_dir: Path | str, max_rank: int | None = None) -> str | None:
    """Why an announced adapter's files do not match its manifest (None when they do, or when
    the event announces nothing). Reads files only: safe to run off the event loop."""
    if not isinstance(ev, AdapterAnnounced):
        return None
    try:
        verify_announced(adapter_dir, ev.version, ev.path, ev.manifest_sha256, max_rank=max_rank)
    except Exception as e:  # noqa: BLE001 - whatever a hostile folder makes the check raise, it is a refusal
        return str(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {e}"
    return None


def apply_event(state: RoutingState, ev: RoutingEvent, adapter_dir: Path | str,
                max_rank: int | None = None) -> tuple[str | None, str | None]:
    """Verify an announcement's files against its manifest, then apply the event to `state`.

    Returns (refused, why): `refused` is why an announced adapter was refused (it stays out
    of routing), `why` is why the event changed nothing (None when it did)."""
    refused = refusal(ev, adapter_dir, max_rank)
    return refused, state.apply(ev, refused)


def routing_event(payload: bytes) -> RoutingEvent | None:
    """The routing event in a record's value; None for other event types. Raises ValueError if malformed."""
    ev = parse_event(payload)
    return ev if isinstance(ev, (AdapterAnnounced, RoutingChanged)) else None


class AdapterLog:
    """All of `rlhf.adapters` from offset 0, without a consumer group (blocking; one thread)."""

    def __init__(self, settings, client_id: str = "rlhf-adapters"):
        ensure_topics(settings, (TOPIC_ADAPTERS, TOPIC_DEADLETTER))
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers(settings), group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=client_id, fetch_max_wait_ms=100,
            bootstrap_timeout_ms=3000, request_timeout_ms=10_000)
        partitions = None
        for _ in range(50):  # metadata for a just-created topic can lag a moment
            partitions = self.consumer.partitions_for_topic(TOPIC_ADAPTERS)
            if partitions:
                break
            time.sleep(0.1)
        if not partitions:
            self.consumer.close()
            raise RuntimeError(f"topic {TOPIC_ADAPTERS} has no partitions")
        self.tps = [TopicPartition(TOPIC_ADAPTERS, p) for p in sorted(partitions)]
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)
        # What was on the topic when we started: records below these offsets are the replay.
        self.replay_end = {tp.partition: off for tp, off in self.consumer.end_offsets(self.tps).items()}

    def poll(self, timeout_s: float) -> list:
        """Records in offset order within each partition (rlhf.adapters events share one key)."""
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000))
        return [r for tp in sorted(batches, key=lambda t: t.partition) for r in batches[tp]]

    def replayed(self) -> bool:
        return all(self.consumer.position(tp) >= self.replay_end[tp.partition] for tp in self.tps)

    def close(self) -> None:
        self.consumer.close()


def replay_state(settings, timeout_s: float = 10.0) -> tuple[RoutingState, bool]:
    """The routing state every replica converges to: snapshot + unseen events of the topic.
    For the command line; returns (state, whether the topic could be read)."""
    state = read_snapshot(settings.adapter_dir, settings.canary_fraction) or RoutingState(settings.canary_fraction)
    try:
        topic = AdapterLog(settings, client_id="rlhf-adapters-cli")
    except Exception as e:  # noqa: BLE001 - broker unreachable: the snapshot is all there is
        log.warning("cannot read %s (%s); using the store's routing snapshot only", TOPIC_ADAPTERS, e)
        return state, False
    try:
        deadline = time.monotonic() + timeout_s
        while not topic.replayed() and time.monotonic() < deadline:
            for rec in topic.poll(0.5):
                if rec.offset >= topic.replay_end[rec.partition]:
                    continue
                try:
                    ev = routing_event(rec.value)
                except ValueError:
                    continue
                if ev is not None and not state.seen(ev.event_id):
                    apply_event(state, ev, settings.adapter_dir, settings.max_lora_rank)
        return state, True
    finally:
        topic.close()


def announce(settings, events: list[RoutingEvent]) -> None:
    """Publish events on `rlhf.adapters`, each acknowledged by the broker before the next."""
    ensure_topics(settings, (TOPIC_ADAPTERS,))
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers(settings), acks="all", enable_idempotence=True,
                             max_block_ms=10_000, request_timeout_ms=10_000)
    try:
        for ev in events:
            producer.send(TOPIC_ADAPTERS, key=ev.key(), value=encode(ev)).get(timeout=15)
    finally:
        producer.close(timeout=5)
