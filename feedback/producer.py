"""Publish events to Kafka without losing any: acked by the broker, or fsynced to a local spool.

    events = EventPublisher(get_settings())
    await events.start()                         # never fails because the broker is down
    await events.publish(TOPIC_FEEDBACK, Thumbs(...))   # returns once the event is durable
    await events.close()

`publish()` returns only when the event is durable somewhere:
- acked by Kafka (`acks='all'`, idempotent producer; both set explicitly), or
- when Kafka did not ack within `send_timeout_s` (broker slow, paused or down), or the spool
  already holds events (to keep their order), fsynced to the spool (`feedback/spool.py`).
  A background task sends spooled events on, oldest first, when the broker is back; a restart
  drains what an earlier run left.
It raises `SpoolFull` when the event cannot be made durable (the API answers 503 then), and its
subclass `StorageFull` when that is because the disk under the spool is full.

Delivery is at least once: an event that timed out and was spooled may still reach Kafka
from the first attempt, so a topic can hold the same `event_id` twice. The id is assigned
once, in the event object, so consumers drop the copy (`feedback/consumer.py` does).

kafka-python is blocking: `send()` runs on one worker thread (it can block on metadata),
acks arrive on the client's I/O thread and are handed to the event loop; the loop never
waits on the network itself.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kafka import KafkaProducer
from kafka.errors import (CorruptRecordError, InvalidRecordError, InvalidTopicError, KafkaConnectionError, KafkaError,
                          KafkaTimeoutError, MessageSizeTooLargeError, RecordListTooLargeError)
from prometheus_client import Counter, Gauge

from feedback.event_hmac import sealed
from feedback.kafka_security import client_security
from feedback.schema import TOPIC_DEADLETTER, TOPIC_FEEDBACK, DeadLetter, Event, encode
from feedback.spool import Spool, SpoolFull, StorageFull
from feedback.topics import bootstrap_servers, ensure_topics
from rlhf.settings import Settings

__all__ = ["EventPublisher", "SpoolFull", "StorageFull"]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- metrics
SPOOL_EVENTS = Gauge("rlhf_spool_events", "Events waiting in the on-disk spool")
SPOOL_OLDEST_AGE = Gauge("rlhf_spool_oldest_age_seconds", "Age of the oldest event in the spool (0 if empty)")
SPOOL_DROPPED = Counter("rlhf_spool_dropped", "Events refused because the spool was full (answered 503)")
EVENTS_SPOOLED = Counter("rlhf_events_spooled", "Events written to the spool instead of Kafka", ["topic"])
EVENTS_PUBLISHED = Counter("rlhf_events_published", "Events acked by Kafka (directly or from the spool)", ["topic"])
FEEDBACK_EVENTS = Counter("rlhf_feedback_events", "Feedback events accepted (durable)", ["type", "adapter"])

# Errors for which a record is moved to rlhf.deadletter instead of being retried; anything
# else (timeouts, a closed or missing producer, authorization) is retried until it works.
REFUSED_FOREVER = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError, CorruptRecordError,
                   InvalidTopicError)

_current: weakref.ref | None = None  # the publisher the spool gauges describe (one per process)


def _spool_len() -> float:
    pub = _current() if _current else None
    return float(len(pub.spool)) if pub and pub.spool else 0.0


def _spool_age() -> float:
    pub = _current() if _current else None
    return pub.spool.oldest_age_s() if pub and pub.spool else 0.0


SPOOL_EVENTS.set_function(_spool_len)
SPOOL_OLDEST_AGE.set_function(_spool_age)


def _force_close(producer: KafkaProducer, timeout: float = 0.0) -> None:
    """Close a producer even if it cannot flush: kafka-python's close() raises from flush()
    before it force-closes the sender thread when pending records cannot finish in time."""
    try:
        producer.close(timeout=timeout)
    except Exception as e:
        log.debug("producer close: %r", e)
    sender = getattr(producer, "_sender", None)
    if sender is not None and sender.is_alive():
        sender.force_close()


def _retrieve(fut: asyncio.Future) -> None:
    """Mark a future's exception as seen (asyncio otherwise logs it when nobody awaits it)."""
    if not fut.cancelled():
        fut.exception()


class EventPublisher:
    DRAIN_BATCH = 500  # spooled events sent per round trip of the drain task
    DRAIN_WAIT_S = 10.0  # a drain batch not acked by then: recreate the producer and retry

    def __init__(self, settings: Settings, *, send_timeout_s: float = 1.5, client_id: str = "rlhf-serving"):
        self.settings = settings
        self.send_timeout_s = send_timeout_s
        self.client_id = client_id
        self.spool: Spool | None = None
        self._producer: KafkaProducer | None = None
        self._send_pool = ThreadPoolExecutor(1, thread_name_prefix="kafka-send")  # producer.send() may block
        self._disk_pool = ThreadPoolExecutor(1, thread_name_prefix="spool")  # fsyncs
        self._connect_pool = ThreadPoolExecutor(1, thread_name_prefix="kafka-connect")  # slow when the broker is down
        self._results: collections.deque = collections.deque()  # (future, result, exc) from producer threads
        self._results_scheduled = False
        self._pending: list[tuple[tuple[str, bytes | None, bytes], asyncio.Future]] = []  # awaiting fsync
        self._flushing: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._drain_task: asyncio.Task | None = None
        self._connecting: asyncio.Future | None = None
        self._closing = False
        self._degraded = False  # spooling since the last time Kafka did not ack (logged once)
        self._last_warn = 0.0  # monotonic time of the last "broker unavailable" warning
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self, connect_wait_s: float = 3.0) -> None:
        """Open the spool, try the broker briefly (topics + producer), start draining.

        If the broker is not there within `connect_wait_s`, events go to the spool and the
        drain task keeps trying to connect in the background."""
        global _current
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.spool = await self._loop.run_in_executor(
            self._disk_pool, Spool, self.settings.data_dir / "spool", self.settings.spool_max_events,
            self.settings.spool_max_bytes)
        _current = weakref.ref(self)
        if len(self.spool):
            self._degraded = True
            log.info("spool holds %d events from an earlier run; draining them first", len(self.spool))
        try:
            await asyncio.wait_for(asyncio.shield(self._connect()), connect_wait_s)
        except (asyncio.TimeoutError, KafkaError, OSError) as e:
            log.warning("broker %s not reachable at start (%s); spooling until it is",
                        self.settings.kafka_bootstrap, type(e).__name__)
        self._drain_task = asyncio.create_task(self._drain_forever(), name="spool-drain")

    async def close(self, drain_wait_s: float = 3.0) -> None:
        """Finish spool writes, give the drain a moment, close the producer and the spool."""
        if self._closing:
            return
        self._closing = True
        if self._flushing:
            await asyncio.shield(self._flushing)
        if self._drain_task:
            self._wake.set()
            try:
                await asyncio.wait_for(self._drain_task, drain_wait_s)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._loop.run_in_executor(self._connect_pool, _force_close, producer, 2.0)
        if self.spool is not None:
            left = len(self.spool)
            await self._loop.run_in_executor(self._disk_pool, self.spool.close)
            if left:
                log.warning("closing with %d events in the spool; the next start sends them", left)
        self._send_pool.shutdown(wait=False, cancel_futures=True)
        self._connect_pool.shutdown(wait=False, cancel_futures=True)
        self._disk_pool.shutdown(wait=True)

    # ------------------------------------------------------------------ publishing
    async def publish(self, topic: str, event: Event) -> None:
        """Return once `event` is acked by Kafka or fsynced to the spool; raise `SpoolFull` if neither.

        Safe to retry with the same event object: its `event_id` does not change. Interactions and
        feedback leave with their HMAC (feedback/event_hmac.py), which the learner checks."""
        key, value = event.key(), encode(sealed(event, self.settings.event_hmac_key))
        if self._producer is not None and not self._spool_in_use():
            try:
                await asyncio.wait_for(self._send(topic, key, value), self.send_timeout_s)
                EVENTS_PUBLISHED.labels(topic).inc()
                self._count_feedback(topic, event)
                return
            except (asyncio.TimeoutError, KafkaError) as e:
                if not self._degraded:
                    self._degraded = True
                    log.warning("kafka did not ack %s within %.1f s (%s); spooling until it does", topic,
                                self.send_timeout_s, type(e).__name__)
        await self._spool_append(topic, key, value)
        self._degraded = True
        EVENTS_SPOOLED.labels(topic).inc()
        self._count_feedback(topic, event)

    async def publish_deadletter(self, reason: str, payload: bytes | str, *, source_topic: str | None = None,
                                 origin: str = "serving") -> DeadLetter:
        """Keep something that could not be processed on rlhf.deadletter, with the reason."""
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8", errors="replace")
        ev = DeadLetter(reason=reason, source_topic=source_topic, payload=payload, origin=origin)
        await self.publish(TOPIC_DEADLETTER, ev)
        return ev

    @staticmethod
    def _count_feedback(topic: str, event: Any) -> None:
        if topic == TOPIC_FEEDBACK:
            adapter = getattr(event, "adapter", None) or getattr(event, "chosen_adapter", None) or "none"
            FEEDBACK_EVENTS.labels(getattr(event, "type", "unknown"), adapter).inc()

    def _spool_in_use(self) -> bool:
        return bool(self.spool is None or len(self.spool) or self._pending or self._flushing)

    # ------------------------------------------------------------------ Kafka side
    def _new_producer(self) -> KafkaProducer:
        return KafkaProducer(
            bootstrap_servers=bootstrap_servers(self.settings),
            client_id=self.client_id,
            acks="all",  # every in-sync replica has it before the ack
            enable_idempotence=True,  # explicit: a conflicting option then raises instead of silently disabling it
            linger_ms=0,
            max_block_ms=2000,  # send() waits at most this for metadata
            bootstrap_timeout_ms=3000,
            request_timeout_ms=10_000,
            delivery_timeout_ms=30_000,  # a record the broker never acks fails after this (it is spooled by then)
            **client_security(self.settings),
        )

    def _connect_sync(self) -> KafkaProducer:
        try:
            ensure_topics(self.settings, timeout_s=3.0)
        except (KafkaTimeoutError, KafkaConnectionError):
            raise  # no broker: do not wait a second time for the producer's bootstrap
        except KafkaError as e:  # best effort: the broker may auto-create, or an operator made them
            log.warning("could not ensure topics on %s: %s", self.settings.kafka_bootstrap, e)
        return self._new_producer()

    async def _connect(self) -> None:
        """Create the producer (once; concurrent callers share the attempt)."""
        if self._producer is not None:
            return
        if self._connecting is None or self._connecting.done():
            self._connecting = self._loop.run_in_executor(self._connect_pool, self._connect_sync)
        producer = await self._connecting
        if self._producer is None and not self._closing:
            self._producer = producer
            log.info("connected to kafka at %s", self.settings.kafka_bootstrap)
        elif producer is not self._producer:
            _force_close(producer)

    def _submit(self, items: list[tuple[str, bytes | None, bytes]], futs: list[asyncio.Future]) -> None:
        """Hand records to the producer; each ack or error resolves its future on the loop.

        Runs on the send thread, or on the loop itself when send() cannot block (see _send)."""
        producer = self._producer
        for (topic, key, value), fut in zip(items, futs):
            if fut.done():  # timed out while queued for the send thread: do not send at all
                continue
            if producer is None:
                self._resolve_later(fut, None, KafkaError("no producer"))
                continue
            try:
                kf = producer.send(topic, key=key, value=value)
            except Exception as e:  # KafkaTimeoutError on metadata, closed producer
                self._resolve_later(fut, None, e if isinstance(e, KafkaError) else KafkaError(repr(e)))
                continue
            kf.add_callback(lambda md, f=fut: self._resolve_later(f, md, None))
            kf.add_errback(lambda e, f=fut: self._resolve_later(f, None, e))

    def _resolve_later(self, fut: asyncio.Future, result, exc: BaseException | None) -> None:
        """Any thread: queue a result; one loop callback resolves everything queued (fewer wake-ups)."""
        self._results.append((fut, result, exc))
        if not self._results_scheduled:
            self._results_scheduled = True
            self._loop.call_soon_threadsafe(self._resolve_queued)

    def _resolve_queued(self) -> None:
        self._results_scheduled = False  # before draining: a result queued meanwhile schedules another pass
        while self._results:
            fut, result, exc = self._results.popleft()
            if fut.done():  # the caller gave up waiting
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    async def _send(self, topic: str, key: bytes | None, value: bytes):
        fut = self._loop.create_future()
        producer = self._producer
        if producer is not None and producer._metadata.partitions_for_topic(topic):  # kafka-python internal, as send() checks
            # partitions known: send() only appends to the producer's buffer, no network wait
            self._submit([(topic, key, value)], [fut])
        else:  # send() may wait up to max_block_ms for metadata: not on the loop
            self._send_pool.submit(self._submit, [(topic, key, value)], [fut])
        return await fut

    # ------------------------------------------------------------------ spool side
    async def _spool_append(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Durably append one record; concurrent callers share one fsync (group commit)."""
        if self.spool is None:
            raise RuntimeError("EventPublisher.start() was not awaited")
        fut = self._loop.create_future()
        fut.add_done_callback(_retrieve)  # the caller may be gone (client disconnected) by the time it is written
        self._pending.append(((topic, key, value), fut))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush_pending())
        await asyncio.shield(fut)

    async def _flush_pending(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                rows = [row for row, _ in batch]
                try:
                    accepted = await self._loop.run_in_executor(self._disk_pool, self.spool.append, rows)
                except Exception as e:  # disk error (StorageFull: disk full): nobody gets a false "durable"
                    if isinstance(e, StorageFull):
                        SPOOL_DROPPED.inc(len(batch))
                        log.error("spool: %s; refused %d events", e, len(batch))
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for i, (_, fut) in enumerate(batch):
                    if fut.done():
                        continue
                    if i < accepted:
                        fut.set_result(None)
                    else:
                        SPOOL_DROPPED.inc()
                        fut.set_exception(SpoolFull(f"feedback spool is full ({self.spool.max_events} events or "
                                                    f"{self.spool.max_bytes} bytes)"))
                if accepted < len(batch):
                    log.error("spool full: refused %d events", len(batch) - accepted)
                self._wake.set()
        finally:
            self._flushing = None

    async def _drain_forever(self) -> None:
        backoff = 0.2
        while True:
            if not len(self.spool):
                if self._closing:
                    return
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                if self._producer is None:
                    await self._connect()
                sent = await self._drain_once()
            except (KafkaError, OSError) as e:
                if time.monotonic() - self._last_warn > 30:
                    self._last_warn = time.monotonic()
                    log.warning("spool drain: broker unavailable (%s); %d events waiting", e, len(self.spool))
                sent = 0
            except Exception:  # keep draining whatever went wrong; the spool still holds everything
                log.exception("spool drain failed; retrying")
                sent = 0
            if sent:
                backoff = 0.2
                continue
            if self._closing:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _drain_once(self) -> int:
        """Send the oldest batch in order; remove the acked prefix. Returns how many were removed."""
        items = await self._loop.run_in_executor(self._disk_pool, self.spool.peek, self.DRAIN_BATCH)
        if not items:
            return 0
        rows = [(it.topic, it.key, it.value) for it in items]
        futs = [self._loop.create_future() for _ in items]
        for fut in futs:  # results can arrive after this task stopped waiting (closed, cancelled)
            fut.add_done_callback(_retrieve)
        self._send_pool.submit(self._submit, rows, futs)
        _, waiting = await asyncio.wait(futs, timeout=self.DRAIN_WAIT_S)
        done_through, published = None, []
        for it, fut in zip(items, futs):
            if not fut.done() or (fut.exception() is not None and not isinstance(fut.exception(), REFUSED_FOREVER)):
                break  # keep order: stop at the first record still to retry
            if fut.exception() is not None:  # the broker will never take it (e.g. too large): keep it, with why
                await self._deadletter_refused(it, fut.exception())
            else:
                published.append(it.topic)
            done_through = it.seq
        if waiting:
            # kafka-python's idempotent producer can wedge after a long outage (batches expire,
            # later sends never complete); a new producer starts clean. Everything it still held
            # is in the spool, so dropping it loses nothing.
            for fut in waiting:
                fut.cancel()
            await self._reset_producer(f"{len(waiting)} spooled events not acked within {self.DRAIN_WAIT_S:.0f} s")
        if done_through is None:
            return 0
        n = await self._loop.run_in_executor(self._disk_pool, self.spool.remove_through, done_through)
        for topic in published:
            EVENTS_PUBLISHED.labels(topic).inc()
        if not len(self.spool) and self._degraded:
            self._degraded = False
            log.info("spool drained; publishing directly to kafka again")
        return n

    async def _reset_producer(self, why: str) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            log.warning("recreating the kafka producer: %s", why)
            await self._loop.run_in_executor(self._connect_pool, _force_close, producer)

    async def _deadletter_refused(self, item, exc: BaseException) -> None:
        ev = DeadLetter(reason=f"kafka refused the record: {exc!r}", source_topic=item.topic,
                        payload=item.value[:100_000].decode("utf-8", errors="replace"), origin="producer")
        fut = self._loop.create_future()
        self._send_pool.submit(self._submit, [(TOPIC_DEADLETTER, ev.key(), encode(ev))], [fut])
        await fut  # if this fails too the batch is retried later, nothing is removed

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict[str, Any]:
        return {"connected": self._producer is not None, "spool_events": len(self.spool) if self.spool else 0,
                "spool_oldest_age_s": self.spool.oldest_age_s() if self.spool else 0.0,
                "spool_refused": self.spool.refused if self.spool else 0, "time": time.time()}
