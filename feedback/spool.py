"""A bounded, durable, first-in-first-out spool of Kafka records on local disk.

When the broker is slow or down, the producer writes events here instead, and a background
task sends them on, oldest first, once the broker is back. A restart drains what an earlier
run left. The spool is one SQLite file, `<RLHF_DATA_DIR>/spool/spool.sqlite3`, in WAL mode
with `synchronous=FULL`: `append()` returns only after the rows are fsynced.

Bounded by `max_events` and by `max_bytes` (of keys and values): an append that does not fit
is refused (the rows that do fit are kept, in order), never silently dropped; `refused` counts
them. The HTTP API answers 503 for a refused event (`spool_full`). A full disk under the spool
(ENOSPC, SQLite's "database or disk is full") raises `StorageFull`: nothing of that append is
kept, and the API answers 503 `storage_full`.

    spool = Spool(Path(".data/spool"), max_events=100_000, max_bytes=2**30)
    spool.append([("rlhf.feedback", b"key", b"{...}")])   # -> 1 (rows accepted)
    items = spool.peek(500)                                 # oldest first
    spool.remove_through(items[-1].seq)                     # after Kafka acked them

Thread-safe (one lock around one connection); blocking: call it from a worker thread.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

FILENAME = "spool.sqlite3"
_ROW_BYTES = "COALESCE(SUM(LENGTH(value) + COALESCE(LENGTH(key), 0)), 0)"  # what max_bytes bounds, in SQL


class SpoolFull(RuntimeError):
    """The spool holds `max_events` events or `max_bytes` bytes already; the event was not accepted."""


class StorageFull(SpoolFull):
    """The filesystem under the spool is full: the event was not accepted."""


@dataclass(frozen=True)
class SpoolItem:
    seq: int  # strictly increasing over the spool's whole life (never reused)
    topic: str
    key: bytes | None
    value: bytes
    ts: float  # unix time it was spooled


class Spool:
    def __init__(self, directory: Path | str, max_events: int, max_bytes: int = 2**62):
        if max_events < 1 or max_bytes < 1:
            raise ValueError("max_events and max_bytes must be at least 1")
        self.directory = Path(directory)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.refused = 0  # events refused because the spool was full (this process)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / FILENAME
        new = not self.path.exists()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "topic TEXT NOT NULL, key BLOB, value BLOB NOT NULL, ts REAL NOT NULL)"
        )
        if new:  # make the new file's directory entry durable too
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._count, self._bytes = self._db.execute(f"SELECT COUNT(*), {_ROW_BYTES} FROM spool").fetchone()
        self._oldest_ts = self._head_ts()

    # -- queries that need no disk access -----------------------------------------------
    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes of keys and values held."""
        return self._bytes

    @property
    def oldest_ts(self) -> float | None:
        """When the oldest spooled event was written, or None if the spool is empty."""
        return self._oldest_ts

    def oldest_age_s(self, now: float | None = None) -> float:
        ts = self._oldest_ts
        return 0.0 if ts is None else max(0.0, (now if now is not None else time.time()) - ts)

    # -- writes -------------------------------------------------------------------------
    def append(self, rows: Sequence[tuple[str, bytes | None, bytes]]) -> int:
        """Durably append (topic, key, value) rows in order; returns how many were accepted.

        Rows beyond the bounds are refused (counted in `refused`); the caller must tell the
        producer of each refused row (`SpoolFull`). Raises `StorageFull` (nothing appended) when
        the disk is full."""
        if not rows:
            return 0
        with self._lock:
            take, size = [], 0
            for row in rows[:max(0, self.max_events - self._count)]:
                if self._bytes + size + _size(row) > self.max_bytes:
                    break
                take.append(row)
                size += _size(row)
            if take:
                now = time.time()
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._db.executemany("INSERT INTO spool (topic, key, value, ts) VALUES (?, ?, ?, ?)",
                                             [(t, k, v, now) for t, k, v in take])
                        self._db.execute("COMMIT")  # WAL + synchronous=FULL: fsynced here
                    except BaseException:
                        if self._db.in_transaction:  # SQLite may have rolled back already (disk full)
                            self._db.execute("ROLLBACK")
                        raise
                except (sqlite3.Error, OSError) as e:
                    if _disk_full(e):
                        raise StorageFull(f"no space left on the disk of the spool ({self.directory})") from e
                    raise
                self._count += len(take)
                self._bytes += size
                if self._oldest_ts is None:
                    self._oldest_ts = now
            self.refused += len(rows) - len(take)
            return len(take)

    def peek(self, limit: int) -> list[SpoolItem]:
        """The oldest `limit` items, oldest first; they stay until `remove_through`."""
        with self._lock:
            cur = self._db.execute("SELECT seq, topic, key, value, ts FROM spool ORDER BY seq LIMIT ?", (limit,))
            return [SpoolItem(seq, topic, None if key is None else bytes(key), bytes(value), ts)
                    for seq, topic, key, value, ts in cur.fetchall()]

    def remove_through(self, seq: int) -> int:
        """Remove every item with `seq` at or below the given one (they were delivered)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                removed = self._db.execute(f"SELECT {_ROW_BYTES} FROM spool WHERE seq <= ?", (seq,)).fetchone()[0]
                n = self._db.execute("DELETE FROM spool WHERE seq <= ?", (seq,)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count -= n
            self._bytes -= removed
            self._oldest_ts = self._head_ts()
            return n

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _head_ts(self) -> float | None:
        row = self._db.execute("SELECT ts FROM spool ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None


def _size(row: tuple[str, bytes | None, bytes]) -> int:
    _, key, value = row
    return len(value) + (len(key) if key else 0)


def _disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno == errno.ENOSPC
    return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(e)
