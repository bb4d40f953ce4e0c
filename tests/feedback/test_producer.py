"""EventPublisher against a real (private) Tansu broker: direct publish, spool while the broker
is paused, ordered drain, restart with a non-empty spool, spool full, start without a broker."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from feedback.producer import EventPublisher, SpoolFull
from feedback.schema import TOPIC_DEADLETTER, TOPIC_FEEDBACK, Thumbs
from feedback.spool import Spool
from rlhf.settings import Settings
from tests.feedback.conftest import as_event, read_topic

CONV = "ab" * 16


def make_settings(bootstrap: str, tmp_path, **kw) -> Settings:
    return Settings(kafka_bootstrap=bootstrap, data_dir=tmp_path / "data", topic_partitions=2, **kw)


def thumbs(i: int, conv: str = CONV) -> Thumbs:
    return Thumbs(response_id=f"r_{conv}_{i % 4}", conversation_id=conv, user=f"u{i}", value="up")


async def wait_drained(pub: EventPublisher, timeout_s: float = 60.0) -> None:
    for _ in range(int(timeout_s * 10)):
        if not len(pub.spool):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"spool still holds {len(pub.spool)} events")


def test_publish_direct_then_spool_while_paused_then_drain_in_order(own_broker, tmp_path):
    bootstrap, proc = own_broker
    sent: list[str] = []

    async def main():
        pub = EventPublisher(make_settings(bootstrap, tmp_path), send_timeout_s=1.0)
        await pub.start()
        try:
            for i in range(50):  # broker up: acked directly, nothing spooled
                ev = thumbs(i)
                await pub.publish(TOPIC_FEEDBACK, ev)
                sent.append(ev.event_id)
            assert len(pub.spool) == 0
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                for i in range(50, 150):  # broker paused: each call returns once the event is on disk
                    ev = thumbs(i)
                    await pub.publish(TOPIC_FEEDBACK, ev)
                    sent.append(ev.event_id)
                assert len(pub.spool) >= 99  # the first may still have reached Kafka
                assert pub.spool.oldest_ts is not None
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            await wait_drained(pub)
            for i in range(150, 160):  # direct again after the drain
                ev = thumbs(i)
                await pub.publish(TOPIC_FEEDBACK, ev)
                sent.append(ev.event_id)
            assert len(pub.spool) == 0
        finally:
            await pub.close()

    asyncio.run(main())
    msgs = read_topic(bootstrap, TOPIC_FEEDBACK, until=lambda m: {x["event_id"] for x in m} >= set(sent))
    ids = [m["event_id"] for m in msgs]
    assert set(ids) == set(sent)
    # one conversation = one partition; first occurrences keep the publish order
    assert len({m["_partition"] for m in msgs}) == 1
    first = list(dict.fromkeys(ids))
    assert first == sent
    for m in msgs:
        assert isinstance(as_event(m), Thumbs)


def test_restart_drains_what_an_earlier_run_left(own_broker, tmp_path):
    bootstrap, _ = own_broker
    settings = make_settings(bootstrap, tmp_path)
    # an earlier run left three events on disk (written as the publisher writes them)
    evs = [thumbs(i) for i in range(3)]
    spool = Spool(settings.data_dir / "spool", settings.spool_max_events)
    spool.append([(TOPIC_FEEDBACK, ev.key(), ev.model_dump_json().encode()) for ev in evs])
    spool.close()

    async def main():
        pub = EventPublisher(settings)
        await pub.start()
        try:
            await wait_drained(pub)
            later = thumbs(99)
            await pub.publish(TOPIC_FEEDBACK, later)
            return later.event_id
        finally:
            await pub.close()

    later_id = asyncio.run(main())
    want = [ev.event_id for ev in evs] + [later_id]
    msgs = read_topic(bootstrap, TOPIC_FEEDBACK, until=lambda m: {x["event_id"] for x in m} >= set(want))
    assert list(dict.fromkeys(m["event_id"] for m in msgs)) == want


def test_start_without_broker_spools_and_refuses_when_full(tmp_path, nowhere):
    settings = make_settings(nowhere, tmp_path, spool_max_events=5)

    async def main():
        pub = EventPublisher(settings)
        await pub.start(connect_wait_s=1.0)  # nothing listens there: start still succeeds
        try:
            for i in range(5):
                await pub.publish(TOPIC_FEEDBACK, thumbs(i))
            assert len(pub.spool) == 5
            with pytest.raises(SpoolFull):
                await pub.publish(TOPIC_FEEDBACK, thumbs(5))
            assert pub.spool.refused == 1
            assert len(pub.spool) == 5
        finally:
            await pub.close()

    asyncio.run(main())
    # the events stay on disk for the next run
    assert len(Spool(settings.data_dir / "spool", 5)) == 5


def test_publish_deadletter(own_broker, tmp_path):
    bootstrap, _ = own_broker

    async def main():
        pub = EventPublisher(make_settings(bootstrap, tmp_path))
        await pub.start()
        try:
            return await pub.publish_deadletter("not json", b"\xff{oops", source_topic=TOPIC_FEEDBACK, origin="test")
        finally:
            await pub.close()

    ev = asyncio.run(main())
    msgs = read_topic(bootstrap, TOPIC_DEADLETTER, until=lambda m: any(x["event_id"] == ev.event_id for x in m))
    (m,) = [x for x in msgs if x["event_id"] == ev.event_id]
    assert m["reason"] == "not json" and m["source_topic"] == TOPIC_FEEDBACK and m["origin"] == "test"
    assert m["payload"].endswith("{oops")


def test_a_record_kafka_refuses_forever_goes_to_the_deadletter_topic(own_broker, tmp_path):
    bootstrap, _ = own_broker
    huge = Thumbs(response_id=f"r_{CONV}_0", conversation_id=CONV, value="up", comment="x" * 2_000_000)
    after = thumbs(1)

    async def main():
        pub = EventPublisher(make_settings(bootstrap, tmp_path))
        await pub.start()
        try:
            await pub.publish(TOPIC_FEEDBACK, huge)  # over max_request_size: kept in the spool first
            await pub.publish(TOPIC_FEEDBACK, after)  # queued behind it, in order
            await wait_drained(pub)
        finally:
            await pub.close()

    asyncio.run(main())
    dl = read_topic(bootstrap, TOPIC_DEADLETTER, until=lambda m: len(m) >= 1)
    assert len(dl) == 1 and "MessageSizeTooLarge" in dl[0]["reason"] and dl[0]["source_topic"] == TOPIC_FEEDBACK
    assert huge.event_id in dl[0]["payload"]  # the start of the original, truncated
    fb = read_topic(bootstrap, TOPIC_FEEDBACK, until=lambda m: any(x["event_id"] == after.event_id for x in m))
    assert [m["event_id"] for m in fb] == [after.event_id]
