"""The topic `rlhf.adapters`: read it from offset 0, verify what it announces, apply it, write to it.

    apply_event(state, ev, adapter_dir, trusted)  the one "check the signature, verify the files, apply" step
    require_signature(ev, trusted)        its signature half (raises Untrusted)
    control_event(payload)                any signed event of the topic; routing_event: those that route
    refusal(ev, adapter_dir)              its file half (for a caller that applies elsewhere)
    AdapterLog(settings)                  the whole topic, without a consumer group
    snapshot_state(...)                   the snapshot's signed events, replayed through the same checks
    replay_state(settings)                snapshot + unseen events: what every replica routes to
    announce(settings, events)            sign and publish AdapterAnnounced / RoutingChanged events

An event whose signature does not verify (unsigned, unknown key, forged) raises `Untrusted`:
it is not applied and not even remembered as seen, so it cannot take the event id of a real one.

Every replica must see every announcement, so the reader uses `assign()` without a consumer
group and commits nothing.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from adapters.routing_state import RoutingState
from adapters.signing import TrustedKeys, control_keys, signature_refusal
from adapters.snapshot import read_snapshot_events
from adapters.store import verify_announced
from feedback.kafka_security import client_security
from feedback.schema import (
    TOPIC_ADAPTERS,
    TOPIC_DEADLETTER,
    AdapterAnnounced,
    LiveFigures,
    RoutingChanged,
    encode,
    parse_event,
)
from feedback.topics import bootstrap_servers, ensure_topics

log = logging.getLogger(__name__)

RoutingEvent = AdapterAnnounced | RoutingChanged


class Untrusted(ValueError):
    """A control event whose signature does not verify: never applied."""


def require_signature(ev: RoutingEvent, trusted: TrustedKeys) -> None:
    """Raise Untrusted unless `ev` is signed by a trusted key."""
    why = signature_refusal(ev, trusted)
    if why:
        raise Untrusted(why)


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


def apply_event(state: RoutingState, ev: RoutingEvent, adapter_dir: Path | str, trusted: TrustedKeys,
                max_rank: int | None = None) -> tuple[str | None, str | None]:
    """Check the event's signature (raises Untrusted), verify an announcement's files against its
    manifest, then apply the event to `state`.

    Returns (refused, why): `refused` is why an announced adapter was refused (it stays out
    of routing), `why` is why the event changed nothing (None when it did)."""
    require_signature(ev, trusted)
    refused = refusal(ev, adapter_dir, max_rank)
    return refused, state.apply(ev, refused)


def control_event(payload: bytes) -> RoutingEvent | LiveFigures | None:
    """The control event in a record's value; None for other event types. Raises ValueError if malformed."""
    ev = parse_event(payload)
    return ev if isinstance(ev, (AdapterAnnounced, RoutingChanged, LiveFigures)) else None


def routing_event(payload: bytes) -> RoutingEvent | None:
    """The routing event in a record's value; None for other event types (LiveFigures changes no routing).
    Raises ValueError if malformed."""
    ev = control_event(payload)
    return None if isinstance(ev, LiveFigures) else ev


class AdapterLog:
    """All of `rlhf.adapters` from offset 0, without a consumer group (blocking; one thread)."""

    def __init__(self, settings, client_id: str = "rlhf-adapters"):
        ensure_topics(settings, (TOPIC_ADAPTERS, TOPIC_DEADLETTER))
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers(settings), group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=client_id, fetch_max_wait_ms=100,
            bootstrap_timeout_ms=3000, request_timeout_ms=10_000, **client_security(settings))
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


def snapshot_state(adapter_dir: Path | str, default_canary_fraction: float, trusted: TrustedKeys,
                   max_rank: int | None = None) -> RoutingState | None:
    """The routing state of the store's snapshot, rebuilt from the signed events it keeps: each
    checked as if it came from the topic (unsigned or forged ones are skipped). None: no snapshot."""
    events = read_snapshot_events(Path(adapter_dir))
    if events is None:
        return None
    state = RoutingState(default_canary_fraction)
    for raw in events:
        try:
            ev = routing_event(json.dumps(raw))
            if ev is not None and not state.seen(ev.event_id):
                apply_event(state, ev, adapter_dir, trusted, max_rank)
        except ValueError as e:  # Untrusted or malformed: whoever wrote the file is not a signer
            log.warning("routing snapshot: skipping an event that does not verify: %s", e)
    return state


def replay_state(settings, timeout_s: float = 10.0) -> tuple[RoutingState, bool]:
    """The routing state every replica converges to: snapshot + unseen events of the topic.
    For the command line; returns (state, whether the topic could be read)."""
    trusted = control_keys(settings).trusted
    state = snapshot_state(settings.adapter_dir, settings.canary_fraction, trusted, settings.max_lora_rank) \
        or RoutingState(settings.canary_fraction)
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
                    if ev is not None and not state.seen(ev.event_id):
                        apply_event(state, ev, settings.adapter_dir, trusted, settings.max_lora_rank)
                except ValueError:  # malformed or Untrusted: serving ignores it too
                    continue
        return state, True
    finally:
        topic.close()


def announce(settings, events: list[RoutingEvent]) -> list[RoutingEvent]:
    """Sign events with RLHF_SIGNING_KEY_FILE (raises SigningError without one) and publish them on
    `rlhf.adapters`, each acknowledged by the broker before the next; returns the signed events."""
    keys = control_keys(settings, need_signing=True)
    events = [keys.sign(ev) for ev in events]
    ensure_topics(settings, (TOPIC_ADAPTERS,))
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers(settings), acks="all", enable_idempotence=True,
                             max_block_ms=10_000, request_timeout_ms=10_000, **client_security(settings))
    try:
        for ev in events:
            producer.send(TOPIC_ADAPTERS, key=ev.key(), value=encode(ev)).get(timeout=15)
    finally:
        producer.close(timeout=5)
    return events
