"""Read events from the project's topics: at least once, deduplicated, with manual commits.

    consumer = EventConsumer(settings, [TOPIC_INTERACTIONS, TOPIC_FEEDBACK], group_id="learner")
    while running:
        for rec in consumer.poll(1.0):      # list[Record], oldest first per partition
            if rec.event is not None:        # None: malformed, already sent to rlhf.deadletter
                store.add(rec.event)
        store.flush()
        consumer.commit()                    # offsets of everything poll() returned so far
        # (or, if processing failed: consumer.rewind() -> poll() returns the same records again)
    consumer.close()

- `Record`: topic, partition, offset, key, value (raw bytes), event (`schema.parse_event`, or
  None if malformed) and error (why it was malformed).
- Malformed records go to `rlhf.deadletter` with the reason before `poll()` returns them (not
  for records read from rlhf.deadletter itself); if that fails, `poll()` rewinds and raises.
  `deadletter(rec, reason)` does the same for a record the caller cannot process, so it can move on.
  `dead_letters=False`: malformed records are returned without being sent anywhere, for a reader
  beside the learner (the AI judge) whose Kafka user may not write rlhf.deadletter; the learner
  reads the same topics and keeps them there.
- Dedupe: a record whose `event_id` was returned before (an LRU of `dedupe_size` ids, this
  process only) is skipped, though its offset still counts for `commit()`. The producer is
  at-least-once, so copies happen; the learner's store dedupes across restarts too.
- Quick start: the consumer `assign()`s itself every partition of its topics (no group
  rebalance: the first batch arrives in well under a second, where `subscribe()` took 3 s even
  with a 6 s session timeout) and resumes from the group's committed offsets,
  else from the beginning (`from_beginning=True`) or the end. The group id only names the
  committed offsets: run one consumer per group id (the learner is a single writer; every
  serving replica uses its own group id for rlhf.adapters).
- `lag()` -> {topic: messages not yet returned}; also the gauge `rlhf_consumer_lag{topic,group}`,
  refreshed by `poll()` every few seconds.
- If the broker is down, `poll()` returns [] (the first attempt to connect can take about 3 s;
  later ones are retried every 2 s) and reconnects by itself.

Blocking (kafka-python): in asyncio code call it via `asyncio.to_thread`, from one thread.
Tansu note: its ListOffsets answers the last batch's base offset + 1, not the end of the log,
so lag prefers the high watermark of fetch responses, and `from_beginning=False` may re-read
part of the last batch.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from feedback.kafka_security import client_security
from feedback.schema import TOPIC_DEADLETTER, DeadLetter, Event, encode, parse_event
from feedback.topics import bootstrap_servers, ensure_topics
from rlhf.settings import Settings

__all__ = ["EventConsumer", "Record", "DeadLetterError"]

log = logging.getLogger(__name__)

CONSUMER_LAG = Gauge("rlhf_consumer_lag", "Messages on the topic not yet read by the group", ["topic", "group"])
CONSUMER_DUPLICATES = Counter("rlhf_consumer_duplicates", "Records skipped because their event_id was seen",
                              ["topic", "group"])
CONSUMER_MALFORMED = Counter("rlhf_consumer_malformed", "Malformed records sent to rlhf.deadletter",
                             ["topic", "group"])


class DeadLetterError(RuntimeError):
    """A malformed record could not be kept on rlhf.deadletter; poll() rewound to retry it."""


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes  # the raw message value
    event: Event | None  # parsed event, or None if malformed (then it is on rlhf.deadletter)
    error: str | None = None  # why it is malformed


class EventConsumer:
    LAG_EVERY_S = 5.0

    def __init__(self, settings: Settings, topics: Iterable[str], group_id: str, *, from_beginning: bool = True,
                 dedupe_size: int = 100_000, max_poll_records: int = 500, dead_letters: bool = True):
        self.settings = settings
        self.dead_letters = dead_letters
        self.topics = list(topics)
        self.group_id = group_id
        self.from_beginning = from_beginning
        self.max_poll_records = max_poll_records
        self._seen: OrderedDict[str, None] = OrderedDict()  # LRU of event ids returned
        self._dedupe_size = dedupe_size
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None  # for rlhf.deadletter, created on first need
        self._to_commit: dict[TopicPartition, int] = {}  # next offset to read, per partition returned
        self._rewind_to: dict[TopicPartition, int] = {}  # first offset returned since the last commit
        self._ids_since_commit: list[str] = []
        self._last_lag = 0.0
        self._retry_at = 0.0

    # ------------------------------------------------------------------ connection
    def _connect(self) -> bool:
        if self._consumer is not None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            try:
                ensure_topics(self.settings, tuple(self.topics), timeout_s=3.0)
            except (KafkaTimeoutError, KafkaConnectionError):
                raise  # no broker: do not wait a second time for the consumer's bootstrap
            except KafkaError as e:  # e.g. not allowed to create topics: they may exist anyway
                log.warning("could not ensure topics %s: %s", self.topics, e)
            consumer = KafkaConsumer(
                bootstrap_servers=bootstrap_servers(self.settings), group_id=self.group_id,
                client_id=f"rlhf-{self.group_id}", enable_auto_commit=False,
                auto_offset_reset="earliest" if self.from_beginning else "latest",
                max_poll_records=self.max_poll_records, bootstrap_timeout_ms=3000, request_timeout_ms=10_000,
                **client_security(self.settings),
            )
            parts = []
            for topic in self.topics:
                ids = consumer.partitions_for_topic(topic)
                if not ids:
                    consumer.close()
                    raise KafkaError(f"topic {topic} has no partitions yet")
                parts += [TopicPartition(topic, p) for p in sorted(ids)]
            consumer.assign(parts)  # committed offsets of group_id, else auto_offset_reset
        except KafkaError as e:
            log.warning("consumer %s: broker %s unavailable (%s); retrying", self.group_id,
                        self.settings.kafka_bootstrap, e)
            self._retry_at = time.monotonic() + 2.0
            return False
        self._consumer = consumer
        log.info("consumer %s reading %d partitions of %s", self.group_id, len(parts), self.topics)
        return True

    # ------------------------------------------------------------------ reading
    def poll(self, timeout_s: float = 1.0) -> list[Record]:
        """Up to `max_poll_records` new records (deduplicated), waiting at most about `timeout_s`."""
        if not self._connect():
            time.sleep(min(timeout_s, max(0.0, self._retry_at - time.monotonic())))
            return []
        batch = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        raw = [r for recs in batch.values() for r in recs]
        records = []
        for r in raw:
            value = r.value or b""
            try:
                event, error = parse_event(value), None
            except ValidationError as e:
                event, error = None, _summary(e)
            records.append(Record(r.topic, r.partition, r.offset, r.key, value, event, error))
        try:
            for rec in records:
                if rec.event is None and rec.topic != TOPIC_DEADLETTER and self.dead_letters:
                    self._deadletter(rec)
        except Exception as e:  # rewind so nothing in this batch is skipped, then tell the caller
            for tp in {TopicPartition(r.topic, r.partition) for r in records}:
                self._consumer.seek(tp, min(r.offset for r in records if (r.topic, r.partition) == tp))
            raise DeadLetterError(f"could not publish to {TOPIC_DEADLETTER}: {e!r}") from e
        out = []
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            self._rewind_to.setdefault(tp, rec.offset)
            self._to_commit[tp] = rec.offset + 1
            if rec.event is not None:
                eid = rec.event.event_id
                if eid in self._seen:
                    self._seen.move_to_end(eid)
                    CONSUMER_DUPLICATES.labels(rec.topic, self.group_id).inc()
                    continue
                self._seen[eid] = None
                self._ids_since_commit.append(eid)
                if len(self._seen) > self._dedupe_size:
                    self._seen.popitem(last=False)
            out.append(rec)
        if time.monotonic() - self._last_lag > self.LAG_EVERY_S:
            self.lag()
        return out

    def commit(self) -> None:
        """Commit the offsets of every record `poll()` has returned (or skipped) so far."""
        if self._consumer is None or not self._to_commit:
            return
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in self._to_commit.items()}
        self._consumer.commit(offsets=offsets)
        self._to_commit.clear()
        self._rewind_to.clear()
        self._ids_since_commit.clear()

    def rewind(self) -> None:
        """Processing failed: the next poll() returns again everything since the last commit."""
        if self._consumer is not None:
            for tp, offset in self._rewind_to.items():
                self._consumer.seek(tp, offset)
        for eid in self._ids_since_commit:
            self._seen.pop(eid, None)
        self._to_commit.clear()
        self._rewind_to.clear()
        self._ids_since_commit.clear()

    def lag(self) -> dict[str, int]:
        """Messages on each topic after this consumer's position (sum over partitions)."""
        self._last_lag = time.monotonic()
        if self._consumer is None:
            return {}
        parts = list(self._consumer.assignment())
        unknown = [tp for tp in parts if self._consumer.highwater(tp) is None]
        ends = self._consumer.end_offsets(unknown) if unknown else {}
        lag: dict[str, int] = {t: 0 for t in self.topics}
        for tp in parts:
            hw = self._consumer.highwater(tp)
            end = hw if hw is not None else ends.get(tp, 0)
            lag[tp.topic] += max(0, end - self._consumer.position(tp))
        for topic, n in lag.items():
            CONSUMER_LAG.labels(topic, self.group_id).set(n)
        return lag

    # ------------------------------------------------------------------ dead letters
    def _deadletter(self, rec: Record) -> None:
        self.deadletter(rec, f"malformed event at {rec.topic}/{rec.partition}@{rec.offset}: {rec.error}")
        CONSUMER_MALFORMED.labels(rec.topic, self.group_id).inc()

    def deadletter(self, rec: Record, reason: str) -> None:
        """Keep `rec` on rlhf.deadletter with `reason`, acked by the broker; raises if it cannot."""
        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers(self.settings), acks="all",
                                           enable_idempotence=True, client_id=f"rlhf-{self.group_id}-dlq",
                                           max_block_ms=5000, bootstrap_timeout_ms=3000,
                                           **client_security(self.settings))
        ev = DeadLetter(reason=reason, source_topic=rec.topic,
                        payload=rec.value[:100_000].decode("utf-8", errors="replace"),
                        origin=f"consumer:{self.group_id}")
        self._producer.send(TOPIC_DEADLETTER, key=ev.key(), value=encode(ev)).get(timeout=10)
        log.warning("record %s/%d@%d sent to %s: %s", rec.topic, rec.partition, rec.offset, TOPIC_DEADLETTER, reason)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close without committing (call commit() first if everything returned was processed)."""
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None
        if self._producer is not None:
            self._producer.close(timeout=2)
            self._producer = None

    def __enter__(self) -> "EventConsumer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _summary(e: ValidationError) -> str:
    errs = e.errors()
    parts = [f"{'.'.join(str(x) for x in err.get('loc', ())) or 'value'}: {err.get('msg')}" for err in errs[:3]]
    return "; ".join(parts) + (f" (+{len(errs) - 3} more)" if len(errs) > 3 else "")
