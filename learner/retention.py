"""Keep the learner store bounded: prune the history that training no longer needs.

    prune(store, keep_days=30, keep_events=1_000_000)   -> {table: rows deleted}

`RLHF_LEARNER_KEEP_DAYS` and `RLHF_LEARNER_KEEP_EVENTS` bound each kind of row by age and by count
(newest kept); 0 turns that bound off. The learner's consume thread calls `prune` at start and every
`PRUNE_EVERY_S` after, never while a round runs (a round reads the store throughout).

What goes, once older than the bounds:
- feedback that a finished round already had (joined with `seq` <= the latest round's `feedback_hwm`)
  and dead feedback. Later rounds train on the feedback still kept: the last `keep_days`, at most
  `keep_events` rows.
- interactions that no kept feedback refers to (they also leave the policy's prompt pool);
- the ids in `events` of interactions and feedback: they only recognise a redelivery, and Kafka
  redelivers only what was not committed yet (the last batch), far newer than any sane bound;
- outbox rows already sent (dead letters, announcements).
What stays, whatever its age:
- feedback no round has had yet, feedback still pending its interaction (`expire_pending` decides
  those), and every interaction they refer to;
- everything about `rlhf.adapters`: its event ids, the `adapters` table and the routing mirror in
  `meta`; rounds, round_users, reward models, meta; outbox rows not sent yet.
"""

from __future__ import annotations

import time

from feedback.schema import TOPIC_FEEDBACK, TOPIC_INTERACTIONS

__all__ = ["PRUNE_EVERY_S", "prune"]

PRUNE_EVERY_S = 600.0
BATCH = 5000  # rows per transaction: ingest waits for the write lock at most this long

# A referenced interaction is kept while any kept feedback row names it.
_REFERENCED = ("EXISTS (SELECT 1 FROM feedback f WHERE f.response_id = interactions.response_id) OR "
               "EXISTS (SELECT 1 FROM feedback f WHERE f.chosen_id = interactions.response_id) OR "
               "EXISTS (SELECT 1 FROM feedback f WHERE f.rejected_id = interactions.response_id)")


def _bound(store, table: str, column: str, where: str, args: tuple, cutoff: float | None,
           keep: int) -> float | None:
    """The `column` value below which rows of `table` (matching `where`) are outside the bounds."""
    bounds = [cutoff] if cutoff is not None else []
    if keep > 0:
        row = store.db.execute(f"SELECT {column} FROM {table} WHERE {where} ORDER BY {column} DESC LIMIT 1 OFFSET ?",
                               (*args, keep - 1)).fetchone()
        if row is not None:  # at least `keep` rows: everything older than the keep-th newest goes
            bounds.append(row[0])
    return max(bounds) if bounds else None


def _round_running(store) -> bool:
    return store.db.execute("SELECT 1 FROM rounds WHERE finished_at IS NULL").fetchone() is not None


def _delete(store, table: str, where: str, args: tuple) -> int:
    """Delete the rows of `table` matching `where`, a batch per transaction, until done or a round
    starts; returns how many."""
    total = 0
    while True:
        with store.tx():
            if _round_running(store):  # it started meanwhile: leave it the rows it counted
                return total
            cur = store.db.execute(f"DELETE FROM {table} WHERE rowid IN "
                                   f"(SELECT rowid FROM {table} WHERE {where} LIMIT {BATCH})", args)
        total += cur.rowcount
        if cur.rowcount < BATCH:
            return total


def prune(store, keep_days: float, keep_events: int, now: float | None = None) -> dict[str, int]:
    """Delete what the bounds no longer cover and training no longer needs (see the module docstring)."""
    now = time.time() if now is None else now
    cutoff = now - keep_days * 86400.0 if keep_days > 0 else None
    deleted = {"feedback": 0, "interactions": 0, "events": 0, "outbox": 0}
    if cutoff is None and keep_events <= 0:
        return deleted
    if _round_running(store):
        return deleted  # a round is reading the store
    last = store.last_round()
    hwm = last["feedback_hwm"] if last else 0

    done = "(status = 'dead' OR (status = 'joined' AND seq <= ?))"  # rounds are done with these
    bound = _bound(store, "feedback", "received_at", "status != 'pending'", (), cutoff, keep_events)
    if bound is not None:
        deleted["feedback"] = _delete(store, "feedback", f"received_at < ? AND {done}", (bound, hwm))

    bound = _bound(store, "interactions", "ts", "1", (), cutoff, keep_events)
    if bound is not None:
        deleted["interactions"] = _delete(store, "interactions", f"ts < ? AND NOT ({_REFERENCED})", (bound,))

    for topic in (TOPIC_INTERACTIONS, TOPIC_FEEDBACK):
        bound = _bound(store, "events", "received_at", "topic = ?", (topic,), cutoff, keep_events)
        if bound is not None:
            deleted["events"] += _delete(store, "events", "topic = ? AND received_at < ?", (topic, bound))

    bound = _bound(store, "outbox", "created_at", "sent_at IS NOT NULL", (), cutoff, keep_events)
    if bound is not None:
        deleted["outbox"] = _delete(store, "outbox", "sent_at IS NOT NULL AND created_at < ?", (bound,))
    return deleted
