"""A bounded, durable, first-in-first-out spool of Kafka records on local disk.

When the broker is slow or down, the producer writes events here instead, and a background
task sends them on, oldest first, once the broker is back. A restart drains what an earlier
run left. The spool is one SQLite file, `<RLHF_DATA_DIR>/spool/spool.sqlite3`, in WAL mode
with `synchronous=FULL`: `append()` returns only after the rows are fsynced.

Bounded by `max_events`: an append that does not fit is refused (the rows that do fit are
kept, in order), never silently dropped; `refused` counts them. The HTTP API answers 503
for a refused event.

    spool = Spool(Path(".data/spool"), max_events=100_000)
    spool.append([("rlhf.feedback", b"key", b"{...}")])   # -> 1 (rows accepted)
    items = spool.peek(500)                                 # oldest first
    spool.remove_through(items[-1].seq)                     # after Kafka acked them

Thread-safe (one lock around one connection); blocking: call it from a worker thread.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

FILENAME = "spool.sqlite3"


class SpoolFull(RuntimeError):
    """The spool holds `max_events` already; the event was not accepted."""


@dataclass(frozen=True)
class SpoolItem:
    seq: int  # strictly increasing over the spool's whole life (never reused)
    topic: str
    key: bytes | None
    value: bytes
    ts: float  # unix time it was spooled


class Spool:
    def __init__(self, directory: Path | str, max_events: int):
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.directory = Path(directory)
        self.max_events = max_events
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
        self._count = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
        self._oldest_ts = self._head_ts()

    # -- queries that need no disk access -----------------------------------------------
    def __len__(self) -> int:
        return self._count

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

        Rows beyond the bound are refused (counted in `refused`); the caller must tell the
        producer of each refused row (`SpoolFull`)."""
        if not rows:
            return 0
        with self._lock:
            room = max(0, self.max_events - self._count)
            take = list(rows[:room])
            if take:
                now = time.time()
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT INTO spool (topic, key, value, ts) VALUES (?, ?, ?, ?)",
                                         [(t, k, v, now) for t, k, v in take])
                    self._db.execute("COMMIT")  # WAL + synchronous=FULL: fsynced here
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._count += len(take)
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
                n = self._db.execute("DELETE FROM spool WHERE seq <= ?", (seq,)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count -= n
            self._oldest_ts = self._head_ts()
            return n

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _head_ts(self) -> float | None:
        row = self._db.execute("SELECT ts FROM spool ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None
