"""The learner store: one SQLite file (`RLHF_DATA_DIR/learner.sqlite3`) that survives restarts.

What is in it:
- `events`       every event id ever stored: a redelivered event is recognised and skipped.
- `interactions` one row per generated answer (response id), with its prompt and text.
- `feedback`     one row per dedupe key (`thumbs:user:response`, `pairwise:user:a:b`,
                 `demonstration:user:response`): a later thumbs (or corrected answer) by the same
                 user on the same answer replaces the earlier one, never adds;
                 the same opinion posted again (another replica, another event id) changes nothing.
                 `status` is `pending` until every answer it refers to has arrived (`joined`),
                 or `dead` after `learner_join_wait_s` without them. `seq` is given when a row
                 becomes usable, so "feedback since the last round" is `seq > rounds.feedback_hwm`.
- `outbox`       dead letters waiting to be sent to `rlhf.deadletter` (sent at least once).
- `rounds`, `reward_models`, `adapters`: what the learner trained, kept and published.
- `round_users`  per round and user: client, examples, share of the training weight, suspect flag.
- `meta`         counters, and the routing state of `rlhf.adapters` (serving's own state machine).

Interactions and feedback carry `user` and `client` and a `split` (`train` | `heldout`) by a
stable hash of the user (`split_of`): a held-out user's prompts and feedback never train. The
hash is keyed (RLHF_LEARNER_SPLIT_KEY, or a random key made when the store file is created,
meta `split_salt`), so no one can choose user ids that land on the side they want (e.g. all in
the held-out users whose consensus suspects are measured against).

Only what its writers signed is stored: interactions and feedback need serving's HMAC
(RLHF_EVENT_HMAC_KEY), routing events an Ed25519 signature by a trusted key. Anything else
goes to the dead-letter outbox with the reason and is not recorded as seen, so a forged event
cannot take the id of a real one.

Exactly-once effect from at-least-once delivery: `ingest()` stores a whole poll batch in one
transaction (WAL, synchronous=FULL) and only then does the caller commit the Kafka offsets.
Killed before the SQLite commit, nothing was stored and Kafka redelivers; killed after it,
the redelivered events are found in `events` and skipped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from adapters.announcements import apply_event
from adapters.routing_state import RoutingState
from adapters.signing import ControlKeys, control_keys, signature_refusal
from feedback.event_hmac import hmac_refusal
from feedback.schema import (
    TOPIC_ADAPTERS,
    TOPIC_DEADLETTER,
    TOPIC_FEEDBACK,
    AdapterAnnounced,
    ControlEvent,
    DeadLetter,
    Demonstration,
    Event,
    Interaction,
    LiveFigures,
    Pairwise,
    RoutingChanged,
    Thumbs,
    UserFeedback,
)

STORE_FILE = "learner.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id    TEXT PRIMARY KEY,
    topic       TEXT NOT NULL,
    type        TEXT NOT NULL,
    ts          REAL NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS interactions (
    response_id     TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL,
    completion_id   TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    user            TEXT NOT NULL,
    client          TEXT NOT NULL DEFAULT '',  -- API key name or JWT client ('' without auth)
    messages        TEXT NOT NULL,   -- JSON list of {role, content}
    prompt_key      TEXT NOT NULL,   -- sha256 of `messages`, groups answers to one prompt
    response        TEXT NOT NULL,
    finish_reason   TEXT,
    model           TEXT NOT NULL,
    adapter         TEXT,
    sampling        TEXT NOT NULL,
    ts              REAL NOT NULL,
    split           TEXT NOT NULL,   -- 'train' | 'heldout', by user
    completion_tokens INTEGER        -- answer length in tokens, as serving counted it
);
CREATE TABLE IF NOT EXISTS feedback (
    dedupe_key      TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL,
    type            TEXT NOT NULL,   -- 'thumbs' | 'pairwise' | 'demonstration'
    user            TEXT NOT NULL,
    client          TEXT NOT NULL DEFAULT '',
    conversation_id TEXT NOT NULL,
    response_id     TEXT,            -- thumbs, demonstration
    value           INTEGER,         -- thumbs: 1 up, 0 down
    chosen_id       TEXT,            -- pairwise
    rejected_id     TEXT,            -- pairwise
    text            TEXT,            -- demonstration: the corrected answer
    ts              REAL NOT NULL,
    received_at     REAL NOT NULL,   -- learner clock: when this version of the row arrived
    status          TEXT NOT NULL,   -- 'pending' | 'joined' | 'dead'
    reason          TEXT,
    seq             INTEGER,         -- set when the row becomes usable (joined)
    split           TEXT NOT NULL,   -- 'train' | 'heldout', by user (the AI judge's: always 'train')
    source          TEXT NOT NULL DEFAULT 'user'  -- 'user' | 'ai' (the AI judge's pairwise choices)
);
CREATE INDEX IF NOT EXISTS feedback_status ON feedback(status, seq);
CREATE INDEX IF NOT EXISTS feedback_resp ON feedback(response_id);
CREATE INDEX IF NOT EXISTS feedback_chosen ON feedback(chosen_id);
CREATE INDEX IF NOT EXISTS feedback_rejected ON feedback(rejected_id);
CREATE TABLE IF NOT EXISTS outbox (
    event_id   TEXT PRIMARY KEY,
    topic      TEXT NOT NULL,
    payload    BLOB NOT NULL,
    key        BLOB,
    created_at REAL NOT NULL,
    sent_at    REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    id             INTEGER PRIMARY KEY,
    started_at     REAL NOT NULL,
    finished_at    REAL,
    status         TEXT NOT NULL,    -- running | published | rejected | failed | aborted
    feedback_hwm   INTEGER NOT NULL, -- feedback with seq <= this was available to the round
    feedback_count INTEGER NOT NULL,
    candidate      TEXT,
    reason         TEXT,
    metrics        TEXT
);
CREATE TABLE IF NOT EXISTS round_users (
    round_id     INTEGER NOT NULL,
    user         TEXT NOT NULL,
    client       TEXT NOT NULL,
    examples     INTEGER NOT NULL,   -- reward-model training examples (feedback rows)
    rm_share     REAL NOT NULL,      -- share of the reward model's training weight
    prompts      INTEGER NOT NULL,   -- entries in PPO's prompt pool
    policy_share REAL NOT NULL,      -- share of the policy's training prompts
    labels       INTEGER NOT NULL,   -- labels checked against the reward model (0: not tested)
    agreed       INTEGER NOT NULL,   -- of those, how many the reward model agrees with
    p_value      REAL,               -- one-sided binomial tail against the held-out consensus
    suspect      INTEGER NOT NULL,   -- 1: down-weighted as a suspect
    PRIMARY KEY (round_id, user, client)
);
CREATE TABLE IF NOT EXISTS reward_models (
    version    INTEGER PRIMARY KEY,
    path       TEXT NOT NULL,
    round_id   INTEGER,
    created_at REAL NOT NULL,
    metrics    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS adapters (
    version         TEXT PRIMARY KEY,
    path            TEXT,
    parent          TEXT,
    manifest_sha256 TEXT,
    status          TEXT NOT NULL,   -- published | rejected | announced (by someone else)
    reason          TEXT,
    round_id        INTEGER,
    created_at      REAL NOT NULL,
    metrics         TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);
"""


# Columns added after a store file was first created: added on open when missing.
ADDED_COLUMNS = {"interactions": {"client": "TEXT NOT NULL DEFAULT ''", "completion_tokens": "INTEGER"},
                 "feedback": {"client": "TEXT NOT NULL DEFAULT ''", "text": "TEXT",
                              "source": "TEXT NOT NULL DEFAULT 'user'"}}


def split_of(key: str, heldout_fraction: float, salt: bytes) -> str:
    """Stable train/held-out split by a keyed hash of `key`: the user (stored), or the conversation
    (the fallback of a round whose users all fall on one side, see learner/round.py)."""
    h = int.from_bytes(hmac.new(salt, key.encode(), hashlib.sha256).digest()[:8], "big") / 2**64
    return "heldout" if h < heldout_fraction else "train"


def prompt_key(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


@dataclass
class IngestResult:
    new: int = 0           # events stored for the first time
    duplicates: int = 0    # already stored (redelivery), skipped
    joined: int = 0        # feedback rows that became usable
    pending: int = 0       # feedback rows now waiting for their interaction
    replaced: int = 0      # feedback that replaced an earlier one with the same dedupe key
    unchanged: int = 0     # feedback equal to the stored one (a re-post): nothing changed
    refused: int = 0       # events without a valid HMAC or signature: dead-lettered, not stored
    by_topic: dict = field(default_factory=dict)  # topic -> new events


class Store:
    """One connection per thread: create a Store in each thread that uses it."""

    def __init__(self, path: Path | str, heldout_fraction: float = 0.2, *, adapter_dir: Path | str,
                 keys: ControlKeys, event_hmac_key: str, default_canary_fraction: float = 0.0,
                 max_lora_rank: int | None = None, split_key: str = ""):
        self.path = Path(path)
        self.keys = keys  # trusted keys check routing events; the signing key signs what the learner publishes
        self.event_hmac_key = event_hmac_key  # serving's HMAC on interactions and feedback
        self.adapter_dir = Path(adapter_dir)
        self.max_lora_rank = max_lora_rank  # the replicas refuse larger adapters; so does the mirror of their routing
        self.default_canary_fraction = default_canary_fraction
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.heldout_fraction = heldout_fraction
        self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=True)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=60000")
        with self.tx():  # not executescript(): it commits on its own, outside our transaction
            for statement in _statements(SCHEMA):
                self.db.execute(statement)
            self.split_salt = split_key.encode() if split_key else self._random_split_salt()
            self.db.create_function("split_of", 2, self.split_of, deterministic=True)
            self._migrate()

    def _random_split_salt(self) -> bytes:
        """This store's secret key of the split hash, made once (inside the open transaction)."""
        salt = self.get_meta("split_salt")
        if salt is None:
            salt = secrets.token_hex(32)
            self.set_meta("split_salt", salt)
        return bytes.fromhex(salt)

    def split_of(self, key: str, heldout_fraction: float) -> str:
        return split_of(key, heldout_fraction, self.split_salt)

    def _migrate(self) -> None:
        """Bring a store file written by an older learner up to this schema (inside the open transaction)."""
        for table, columns in ADDED_COLUMNS.items():
            have = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns.items():
                if name not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        split_by = "user, hmac key " + hashlib.sha256(self.split_salt).hexdigest()[:16]
        if self.get_meta("split_by") != split_by:  # split otherwise before (older file, other key): re-split
            self.db.execute("UPDATE interactions SET split = split_of(user, ?)", (self.heldout_fraction,))
            self.db.execute("UPDATE feedback SET split = split_of(user, ?) WHERE source = 'user'",
                            (self.heldout_fraction,))
            self.set_meta("split_by", split_by)

    @classmethod
    def open(cls, settings, heldout_fraction: float = 0.2) -> "Store":
        """The store of these settings: RLHF_DATA_DIR/learner.sqlite3, following RLHF_ADAPTER_DIR.
        Exits, naming the setting, without the keys it checks events with (outside development mode)."""
        settings.check_event_hmac_key()
        return cls(Path(settings.data_dir) / STORE_FILE, heldout_fraction, adapter_dir=settings.adapter_dir,
                   keys=control_keys(settings, need_signing=True), event_hmac_key=settings.event_hmac_key,
                   default_canary_fraction=settings.canary_fraction, max_lora_rank=settings.max_lora_rank,
                   split_key=settings.learner_split_key)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ transactions
    class _Tx:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self):
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, exc, tb):
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            return False

    def tx(self) -> "_Tx":
        return Store._Tx(self.db)

    def _next_seq(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
        seq = int(row["value"]) + 1 if row else 1
        self.db.execute("INSERT INTO meta(key, value) VALUES('seq', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(seq),))
        return seq

    # ------------------------------------------------------------------ ingest
    def ingest(self, items: Iterable[tuple[str, Any]], now: float | None = None) -> IngestResult:
        """Store (topic, event) pairs in ONE transaction; commit Kafka offsets only after this returns."""
        now = time.time() if now is None else now
        res = IngestResult()
        with self.tx():
            for topic, ev in items:
                if ev is None:
                    continue
                refused = self._refusal(ev)
                if refused:
                    self._refuse(topic, ev, refused)
                    res.refused += 1
                    continue
                if isinstance(ev, LiveFigures):  # our own view for serving: nothing here to store or apply
                    continue
                cur = self.db.execute("INSERT OR IGNORE INTO events(event_id, topic, type, ts, received_at) "
                                      "VALUES(?,?,?,?,?)", (ev.event_id, topic, ev.type, ev.ts, now))
                if cur.rowcount == 0:
                    res.duplicates += 1
                    continue
                res.new += 1
                res.by_topic[topic] = res.by_topic.get(topic, 0) + 1
                if isinstance(ev, Interaction):
                    self._add_interaction(ev, res)
                elif isinstance(ev, (Thumbs, Pairwise, Demonstration)):
                    self._add_feedback(ev, now, res)
                elif isinstance(ev, (AdapterAnnounced, RoutingChanged)):
                    self._apply_routing(ev)
        return res

    def _refusal(self, ev: Event) -> str | None:
        """Why an event must not be stored: a missing or wrong HMAC, or signature (None: store it)."""
        if isinstance(ev, ControlEvent):
            return signature_refusal(ev, self.keys.trusted)
        return hmac_refusal(ev, self.event_hmac_key)

    def _refuse(self, topic: str, ev: Event, reason: str) -> None:
        """Dead-letter an event that is not stored; its id is derived, so a redelivery queues it once."""
        eid = hashlib.sha256(f"refused:{topic}:{ev.event_id}".encode()).hexdigest()[:32]
        self._dead_letter(DeadLetter(event_id=eid, reason=f"{ev.type} refused: {reason}", source_topic=topic,
                                     payload=ev.model_dump_json(), origin="learner"), ev.key())

    def _dead_letter(self, dl: DeadLetter, key: bytes) -> None:
        self.db.execute("INSERT OR IGNORE INTO outbox(event_id, topic, payload, key, created_at) VALUES(?,?,?,?,?)",
                        (dl.event_id, TOPIC_DEADLETTER, dl.model_dump_json().encode(), key, time.time()))

    def _add_interaction(self, ev: Interaction, res: IngestResult) -> None:
        messages = [m.model_dump() for m in ev.messages]
        cur = self.db.execute(
            "INSERT OR IGNORE INTO interactions(response_id, event_id, completion_id, conversation_id, user, client, "
            "messages, prompt_key, response, finish_reason, model, adapter, sampling, ts, split, completion_tokens) "
            "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (ev.response_id, ev.event_id, ev.completion_id, ev.conversation_id, ev.user, ev.client,
             json.dumps(messages), prompt_key(messages), ev.response, ev.finish_reason, ev.model, ev.adapter,
             json.dumps(ev.sampling), ev.ts, self.split_of(ev.user, self.heldout_fraction), ev.completion_tokens))
        if cur.rowcount == 0:
            return
        rid = ev.response_id
        for row in self.db.execute("SELECT * FROM feedback WHERE status='pending' AND "
                                   "(response_id=? OR chosen_id=? OR rejected_id=?)", (rid, rid, rid)).fetchall():
            self._try_join(row["dedupe_key"], res)

    def _add_feedback(self, ev: UserFeedback, now: float, res: IngestResult) -> None:
        key = ev.dedupe_key()
        if isinstance(ev, Thumbs):
            fields = dict(response_id=ev.response_id, value=1 if ev.value == "up" else 0,
                          chosen_id=None, rejected_id=None, text=None)
        elif isinstance(ev, Demonstration):
            fields = dict(response_id=ev.response_id, value=None, chosen_id=None, rejected_id=None, text=ev.text)
        else:
            fields = dict(response_id=None, value=None, chosen_id=ev.chosen_response_id,
                          rejected_id=ev.rejected_response_id, text=None)
        old = self.db.execute("SELECT * FROM feedback WHERE dedupe_key=?", (key,)).fetchone()
        if old is not None:
            if ev.ts < old["ts"]:
                return  # an older opinion arriving late does not replace a newer one
            if all(old[k] == v for k, v in fields.items()):
                # the same opinion posted again (a retry, maybe through another replica, with its own
                # event id): not re-sequenced, not new feedback for the trigger, not fresher
                res.unchanged += 1
                return
            res.replaced += 1
        source = getattr(ev, "source", "user")
        # the AI judge is not a user: its choices train only, and the gate measures on people
        split = "train" if source == "ai" else self.split_of(ev.user, self.heldout_fraction)
        self.db.execute(
            "INSERT OR REPLACE INTO feedback(dedupe_key, event_id, type, user, client, conversation_id, response_id, "
            "value, chosen_id, rejected_id, text, ts, received_at, status, reason, seq, split, source) "
            "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,'pending',NULL,NULL,?,?)",
            (key, ev.event_id, ev.type, ev.user, ev.client, ev.conversation_id, fields["response_id"],
             fields["value"], fields["chosen_id"], fields["rejected_id"], fields["text"], ev.ts, now, split, source))
        if not self._try_join(key, res):
            res.pending += 1

    def _try_join(self, key: str, res: IngestResult) -> bool:
        row = self.db.execute("SELECT * FROM feedback WHERE dedupe_key=?", (key,)).fetchone()
        ids = [row["response_id"]] if row["response_id"] is not None else [row["chosen_id"], row["rejected_id"]]
        found = {r["response_id"]: r for r in self.db.execute(
            f"SELECT response_id, prompt_key FROM interactions WHERE response_id IN ({','.join('?' * len(ids))})",
            ids).fetchall()}
        if len(found) < len(set(ids)):
            return False
        if row["type"] == "pairwise" and (row["chosen_id"] == row["rejected_id"]
                                          or found[row["chosen_id"]]["prompt_key"]
                                          != found[row["rejected_id"]]["prompt_key"]):
            self._kill(row, "pairwise responses do not answer the same prompt")
            return True
        self.db.execute("UPDATE feedback SET status='joined', seq=? WHERE dedupe_key=?", (self._next_seq(), key))
        res.joined += 1
        return True

    def _kill(self, row: sqlite3.Row, reason: str) -> None:
        """Mark feedback dead and queue a dead letter for it (same transaction)."""
        self.db.execute("UPDATE feedback SET status='dead', reason=? WHERE dedupe_key=?", (reason, row["dedupe_key"]))
        payload = {k: row[k] for k in row.keys()}
        dl = DeadLetter(reason=reason, source_topic=TOPIC_FEEDBACK, payload=json.dumps(payload), origin="learner")
        self._dead_letter(dl, row["conversation_id"].encode())

    def expire_pending(self, join_wait_s: float, now: float | None = None) -> int:
        """Feedback that waited longer than join_wait_s for its interaction goes to the dead-letter outbox."""
        now = time.time() if now is None else now
        with self.tx():
            rows = self.db.execute("SELECT * FROM feedback WHERE status='pending' AND received_at < ?",
                                   (now - join_wait_s,)).fetchall()
            for row in rows:
                self._kill(row, f"interaction not received within {join_wait_s:g} s of the feedback")
        return len(rows)

    def add_to_outbox(self, topic: str, ev: Event) -> None:
        """Queue an event to send (inside the caller's transaction)."""
        self.db.execute("INSERT INTO outbox(event_id, topic, payload, key, created_at) VALUES(?,?,?,?,?)",
                        (ev.event_id, topic, ev.model_dump_json().encode(), ev.key(), time.time()))

    def queue_control_event(self, ev: ControlEvent) -> None:
        """A signed routing event of ours: into the outbox (sent at least once), and followed here at
        once (the copy that comes back from the broker is then a known event id, skipped)."""
        with self.tx():
            self.add_to_outbox(TOPIC_ADAPTERS, ev)
        self.ingest([(TOPIC_ADAPTERS, ev)])

    def unsent_outbox(self, limit: int = 500) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM outbox WHERE sent_at IS NULL ORDER BY created_at LIMIT ?",
                               (limit,)).fetchall()

    def mark_sent(self, event_ids: list[str]) -> None:
        with self.tx():
            self.db.executemany("UPDATE outbox SET sent_at=? WHERE event_id=?", [(time.time(), e) for e in event_ids])

    # ------------------------------------------------------------------ adapters and routing
    def routing(self) -> RoutingState:
        """What serving routes to, as the learner last followed it from `rlhf.adapters`."""
        raw = self.get_meta("routing")
        return (RoutingState.from_json(json.loads(raw), self.default_canary_fraction) if raw
                else RoutingState(self.default_canary_fraction))

    def _apply_routing(self, ev: AdapterAnnounced | RoutingChanged) -> None:
        """Follow `rlhf.adapters` with serving's own state machine, so "the adapter serving now"
        means here what it means on every replica."""
        state = self.routing()
        apply_event(state, ev, self.adapter_dir, self.keys.trusted, self.max_lora_rank)  # signature checked by ingest
        self.set_meta("routing", json.dumps(state.to_json()))

    def serving_adapter(self) -> dict | None:
        """The version serving routes default traffic to (None: the base model): {version, path, ...}."""
        state = self.routing()
        if state.active is None or state.active not in state.known:
            return None
        k = state.known[state.active]
        return {"version": k.version, "path": k.path, "manifest_sha256": k.manifest_sha256, "parent": k.parent}

    def corrected_versions(self) -> set[str]:
        """Versions this learner published from rounds that learned users' corrected answers (the
        supervised stage ran: `sft_demonstrations` > 0 in their metrics)."""
        rows = self.db.execute("SELECT version, metrics FROM adapters WHERE status='published'").fetchall()
        return {r["version"] for r in rows
                if r["metrics"] and json.loads(r["metrics"]).get("sft_demonstrations", 0) > 0}

    def record_adapter(self, version: str, status: str, *, path: str | None = None, parent: str | None = None,
                       manifest_sha256: str | None = None, reason: str | None = None, round_id: int | None = None,
                       metrics: dict | None = None) -> None:
        with self.tx():
            self.db.execute(
                "INSERT INTO adapters(version, path, parent, manifest_sha256, status, reason, round_id, created_at, "
                "metrics) VALUES(?,?,?,?,?,?,?,?,?) ON CONFLICT(version) DO UPDATE SET path=excluded.path, "
                "parent=excluded.parent, manifest_sha256=excluded.manifest_sha256, status=excluded.status, "
                "reason=excluded.reason, round_id=excluded.round_id, metrics=excluded.metrics",
                (version, path, parent, manifest_sha256, status, reason, round_id, time.time(),
                 json.dumps(metrics or {})))

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (key, value))

    # ------------------------------------------------------------------ rounds
    def feedback_hwm(self) -> int:
        row = self.db.execute("SELECT MAX(seq) AS m FROM feedback WHERE status='joined'").fetchone()
        return int(row["m"] or 0)

    def last_round(self, finished_only: bool = True) -> dict | None:
        q = "SELECT * FROM rounds" + (" WHERE finished_at IS NOT NULL AND status != 'aborted'" if finished_only else "")
        row = self.db.execute(q + " ORDER BY id DESC LIMIT 1").fetchone()
        return dict(row) if row else None

    def new_feedback_count(self) -> int:
        """Usable feedback that arrived (or was replaced) since the last finished round."""
        last = self.last_round()
        return self.feedback_count_since(last["feedback_hwm"] if last else 0)

    def feedback_count_since(self, hwm: int) -> int:
        """Usable feedback that arrived (or was replaced) after feedback sequence number `hwm`."""
        row = self.db.execute("SELECT COUNT(*) AS n FROM feedback WHERE status='joined' AND seq > ?", (hwm,)).fetchone()
        return int(row["n"])

    def abort_unfinished_rounds(self) -> int:
        """Rounds left `running` by a killed learner: their feedback counts as new again."""
        return self.end_unfinished_rounds("aborted", "learner stopped during the round")

    def end_unfinished_rounds(self, status: str, reason: str) -> int:
        """Close every round still `running` with `status`; returns how many there were."""
        with self.tx():
            cur = self.db.execute("UPDATE rounds SET status=?, finished_at=?, reason=? WHERE finished_at IS NULL",
                                  (status, time.time(), reason))
        return cur.rowcount

    def start_round(self) -> tuple[int, int, int]:
        """A new round over all usable feedback so far; returns (round id, feedback hwm, feedback count)."""
        with self.tx():
            hwm = self.feedback_hwm()
            n = self.db.execute("SELECT COUNT(*) AS n FROM feedback WHERE status='joined' AND seq <= ?",
                                (hwm,)).fetchone()["n"]
            cur = self.db.execute("INSERT INTO rounds(started_at, status, feedback_hwm, feedback_count) "
                                  "VALUES(?, 'running', ?, ?)", (time.time(), hwm, n))
        return int(cur.lastrowid), hwm, int(n)

    def finish_round(self, round_id: int, status: str, *, candidate: str | None = None, reason: str | None = None,
                     metrics: dict | None = None) -> None:
        with self.tx():
            self.db.execute("UPDATE rounds SET finished_at=?, status=?, candidate=?, reason=?, metrics=? WHERE id=?",
                            (time.time(), status, candidate, reason, json.dumps(metrics or {}), round_id))

    # ------------------------------------------------------------------ training data
    def _split_filter(self, alias: str, by: str) -> tuple[str, tuple]:
        """SQL condition (with its arguments after the split name) selecting one side of the split."""
        if by == "user":
            return f"{alias}.split = ?", ()
        if by == "conversation":
            return f"split_of({alias}.conversation_id, ?) = ?", (self.heldout_fraction,)
        raise ValueError(f"split by 'user' or 'conversation', not {by!r}")

    def feedback_examples(self, split: str, max_seq: int | None = None, by: str = "user") -> list[dict]:
        """Joined feedback with its interactions: dicts with `type`, `user`, `client`, `source` and the texts
        the reward model needs. `by`: the stored split by user, or a split by conversation. The AI judge's
        choices are always on the training side, never held out."""
        cond, cond_args = self._split_filter("f", by)
        cond = f"({cond} OR f.source = 'ai')" if split == "train" else f"({cond} AND f.source = 'user')"
        q = ("SELECT f.*, a.messages AS a_messages, a.response AS a_response, a.finish_reason AS a_finish, "
             "b.response AS b_response, b.finish_reason AS b_finish FROM feedback f "
             "JOIN interactions a ON a.response_id = COALESCE(f.response_id, f.chosen_id) "
             "LEFT JOIN interactions b ON b.response_id = f.rejected_id "
             f"WHERE f.status='joined' AND {cond}" + (" AND f.seq <= ?" if max_seq is not None else "") +
             " ORDER BY f.seq")
        args = (*cond_args, split) + ((max_seq,) if max_seq is not None else ())
        rows = self.db.execute(q, args).fetchall()
        out = []
        for r in rows:
            ex = {"type": r["type"], "key": r["dedupe_key"], "seq": r["seq"], "user": r["user"],
                  "client": r["client"], "source": r["source"], "messages": json.loads(r["a_messages"])}
            if r["type"] == "thumbs":
                ex.update(response=r["a_response"], finish_reason=r["a_finish"], label=int(r["value"]))
            elif r["type"] == "demonstration":  # the corrected answer preferred over the one it corrects
                ex.update(type="pairwise", demonstration=True, chosen=r["text"], chosen_finish="stop",
                          rejected=r["a_response"], rejected_finish=r["a_finish"])
            else:
                ex.update(chosen=r["a_response"], chosen_finish=r["a_finish"],
                          rejected=r["b_response"], rejected_finish=r["b_finish"])
            out.append(ex)
        return out

    def heldout_feedback_counts(self) -> dict[str, int]:
        """Users' joined feedback on the held-out side, split as the next round splits it (by user; by
        conversation when every user with feedback is on one side): `pairs` (pairwise choices and
        corrected answers), `ups`, `downs`. What the gate can measure the reward model on."""
        sides = {r[0] for r in self.db.execute(
            "SELECT DISTINCT CASE WHEN source = 'ai' THEN 'train' ELSE split END FROM feedback WHERE status='joined'")}
        cond, cond_args = self._split_filter("f", "user" if sides == {"train", "heldout"} else "conversation")
        rows = self.db.execute(f"SELECT type, value, COUNT(*) FROM feedback f WHERE f.status='joined' AND "
                               f"f.source = 'user' AND {cond} GROUP BY type, value", (*cond_args, "heldout"))
        counts = {"pairs": 0, "ups": 0, "downs": 0}
        for kind, value, n in rows:
            counts["pairs" if kind != "thumbs" else "ups" if value else "downs"] += n
        return counts

    def user_prompts(self, split: str, per_user: int | None = None, by: str = "user") -> list[dict]:
        """Distinct prompts of logged interactions per user: dicts with `user`, `client`, `prompt_key`
        and `messages`, grouped by user and client, each user's newest first, at most `per_user` each."""
        cond, cond_args = self._split_filter("i", by)
        q = ("SELECT user, client, prompt_key, messages, ROW_NUMBER() OVER "
             "(PARTITION BY user, client ORDER BY MAX(ts) DESC, prompt_key) AS n "
             f"FROM interactions i WHERE {cond} GROUP BY user, client, prompt_key")
        q = f"SELECT * FROM ({q})" + (" WHERE n <= ?" if per_user else "") + " ORDER BY user, client, n"
        rows = self.db.execute(q, (*cond_args, split) + ((per_user,) if per_user else ())).fetchall()
        return [{"user": r["user"], "client": r["client"], "prompt_key": r["prompt_key"],
                 "messages": json.loads(r["messages"])} for r in rows]

    def record_round_users(self, round_id: int, rows: list[dict]) -> None:
        """Per user and client of a round: what it trained on and how much it counted (see `round_users`)."""
        cols = ("user", "client", "examples", "rm_share", "prompts", "policy_share", "labels", "agreed", "p_value",
                "suspect")
        with self.tx():
            self.db.execute("DELETE FROM round_users WHERE round_id=?", (round_id,))
            self.db.executemany(
                f"INSERT INTO round_users(round_id, {', '.join(cols)}) VALUES(?{', ?' * len(cols)})",
                [(round_id, *(int(r[c]) if c == "suspect" else r[c] for c in cols)) for r in rows])

    def round_users(self, round_id: int) -> list[dict]:
        """The accounting of one round, largest share of the reward model's weight first."""
        rows = self.db.execute("SELECT * FROM round_users WHERE round_id=? ORDER BY rm_share DESC, user, client",
                               (round_id,)).fetchall()
        return [{**dict(r), "suspect": bool(r["suspect"])} for r in rows]

    def record_reward_model(self, path: str, round_id: int | None, metrics: dict) -> int:
        with self.tx():
            cur = self.db.execute("INSERT INTO reward_models(path, round_id, created_at, metrics) VALUES(?,?,?,?)",
                                  (path, round_id, time.time(), json.dumps(metrics)))
        return int(cur.lastrowid)

    def latest_reward_model(self) -> dict | None:
        row = self.db.execute("SELECT * FROM reward_models ORDER BY version DESC LIMIT 1").fetchone()
        if not row:
            return None
        return {**dict(row), "metrics": json.loads(row["metrics"])}

    def joined_by_type(self) -> dict[str, int]:
        """Usable feedback per type: thumbs, pairwise, demonstration."""
        got = dict(self.db.execute("SELECT type, COUNT(*) FROM feedback WHERE status='joined' GROUP BY type"))
        return {t: got.get(t, 0) for t in ("thumbs", "pairwise", "demonstration")}

    def joined_by_source(self) -> dict[str, int]:
        """Usable feedback per source: users, and the AI judge."""
        got = dict(self.db.execute("SELECT source, COUNT(*) FROM feedback WHERE status='joined' GROUP BY source"))
        return {s: got.get(s, 0) for s in ("user", "ai")}

    def counts(self) -> dict[str, int]:
        one = lambda q: int(self.db.execute(q).fetchone()[0])  # noqa: E731
        return {
            "events": one("SELECT COUNT(*) FROM events"),
            "interactions": one("SELECT COUNT(*) FROM interactions"),
            "feedback_joined": one("SELECT COUNT(*) FROM feedback WHERE status='joined'"),
            "feedback_pending": one("SELECT COUNT(*) FROM feedback WHERE status='pending'"),
            "feedback_dead": one("SELECT COUNT(*) FROM feedback WHERE status='dead'"),
            "outbox_unsent": one("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL"),
            "rounds": one("SELECT COUNT(*) FROM rounds"),
        }


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
