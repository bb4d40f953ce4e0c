"""Pure tests of the on-disk spool: order, bound, durability across reopen."""

from __future__ import annotations

import threading

import pytest

from feedback.spool import Spool


def rows(n, start=0, topic="rlhf.feedback"):
    return [(topic, f"k{i}".encode(), f"v{i}".encode()) for i in range(start, start + n)]


def test_fifo_order_and_remove(tmp_path):
    s = Spool(tmp_path, max_events=100)
    assert s.append(rows(10)) == 10
    assert len(s) == 10 and s.oldest_ts is not None
    items = s.peek(4)
    assert [it.value for it in items] == [b"v0", b"v1", b"v2", b"v3"]
    assert [it.key for it in items] == [b"k0", b"k1", b"k2", b"k3"]
    assert s.remove_through(items[-1].seq) == 4
    assert [it.value for it in s.peek(100)] == [f"v{i}".encode() for i in range(4, 10)]
    s.remove_through(s.peek(100)[-1].seq)
    assert len(s) == 0 and s.oldest_ts is None and s.oldest_age_s() == 0.0


def test_none_key_and_binary_value(tmp_path):
    s = Spool(tmp_path, max_events=10)
    s.append([("t", None, b"\x00\xff")])
    (it,) = s.peek(1)
    assert it.key is None and it.value == b"\x00\xff" and it.topic == "t"


def test_survives_reopen_and_keeps_sequence(tmp_path):
    s = Spool(tmp_path, max_events=100)
    s.append(rows(5))
    last = s.peek(5)[-1].seq
    s.remove_through(last)
    s.append(rows(3, start=5))
    s.close()
    s2 = Spool(tmp_path, max_events=100)
    assert len(s2) == 3
    items = s2.peek(10)
    assert [it.value for it in items] == [b"v5", b"v6", b"v7"]
    assert items[0].seq > last  # sequence numbers are never reused
    s2.append(rows(1, start=8))
    assert s2.peek(10)[-1].value == b"v8"


def test_bounded_refuses_and_counts(tmp_path):
    s = Spool(tmp_path, max_events=5)
    assert s.append(rows(3)) == 3
    assert s.append(rows(4, start=3)) == 2  # only what fits, in order
    assert s.refused == 2
    assert s.append(rows(1, start=7)) == 0
    assert s.refused == 3
    assert [it.value for it in s.peek(10)] == [b"v0", b"v1", b"v2", b"v3", b"v4"]
    s.remove_through(s.peek(1)[0].seq)
    assert s.append(rows(1, start=9)) == 1


def test_concurrent_appends_keep_every_row(tmp_path):
    s = Spool(tmp_path, max_events=10_000)

    def writer(w):
        for i in range(50):
            s.append([("t", None, f"{w}-{i}".encode())])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    values = [it.value.decode() for it in s.peek(1000)]
    assert len(values) == 200 == len(set(values))
    for w in range(4):  # each writer's rows stay in its order
        mine = [v for v in values if v.startswith(f"{w}-")]
        assert mine == [f"{w}-{i}" for i in range(50)]


def test_rejects_zero_bound(tmp_path):
    with pytest.raises(ValueError):
        Spool(tmp_path, max_events=0)


def test_bounded_by_bytes_as_well_as_events(tmp_path):
    s = Spool(tmp_path, max_events=1000, max_bytes=100)
    big = [("t", b"k", b"x" * 39)] * 3  # 40 bytes each (key + value)
    assert s.append(big) == 2 and s.nbytes == 80 and s.refused == 1  # a third would make 120 > 100
    assert s.append([("t", None, b"y" * 20)]) == 1 and s.nbytes == 100  # fits exactly
    assert s.append([("t", None, b"z")]) == 0
    s.remove_through(s.peek(1)[0].seq)
    assert s.nbytes == 60 and s.append([("t", None, b"z" * 40)]) == 1
    s.close()
    assert Spool(tmp_path, max_events=1000, max_bytes=100).nbytes == 100  # counted again on reopen
