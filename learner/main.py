"""`rlhf learn`: consume feedback, train when there is enough of it, publish what is better.

Three threads and one HTTP server in one process:
- consume (background thread): `rlhf.interactions`, `rlhf.feedback`, `rlhf.adapters` ->
  learner store (one SQLite transaction per poll batch) -> then commit the Kafka offsets.
  A record the store cannot take (any error but the store's own, e.g. a locked or full disk) goes to
  `rlhf.deadletter` with the reason and consumption moves on; a failed batch is narrowed to its bad
  records by storing them one at a time.
  Every few seconds: feedback that waited too long for its interaction -> dead-letter outbox;
  outbox (dead letters, announcements, the promotion controller's decisions) -> Kafka. Every few
  minutes: prune old history (learner/retention.py, `RLHF_LEARNER_KEEP_DAYS`, `RLHF_LEARNER_KEEP_EVENTS`).
- evaluate (background thread, its own store connection): every 10 s, live evaluation per version
  and the promotion controller's turn on the canary (learner/live_metrics.py, learner/promotion.py),
  its decision queued in the outbox. Its queries read the whole store; in their own thread they
  never hold up ingestion.
- train (main thread): a round runs when at least `RLHF_LEARNER_MIN_FEEDBACK` new usable
  feedback events arrived since the last round, or `RLHF_LEARNER_INTERVAL_S` passed since it
  and there is any new feedback (learner/round.py), but not while the promotion controller judges a
  canary: a new version would replace it before its users decided (rounds wait for the decision,
  which `RLHF_CANARY_MAX_EVENTS` bounds). vLLM's engine starts with the first round.
- `GET /metrics` (Prometheus) and `GET /healthz` on `RLHF_LEARNER_PORT`. `/healthz` answers 503 when
  the consume thread stopped, when records wait (lag, or a batch not stored yet) and none was
  stored for `RLHF_LEARNER_STALL_S`, or when the thread has not polled for that long.

Learner hyperparameters (reward model, PPO, gate) default to `learner.round.LearnerConfig`;
a JSON file named by `RLHF_LEARNER_CONFIG` overrides any of them, e.g.
`{"ppo": {"steps": 16}, "reward": {"learning_rate": 1e-3}}`.
"""

from __future__ import annotations

import logging
import math
import signal
import sqlite3
import threading
import time
from typing import NamedTuple

import torch
from prometheus_client import Counter, Gauge, Histogram

from feedback.consumer import EventConsumer, Record
from feedback.kafka_security import client_security
from feedback.schema import TOPIC_ADAPTERS, TOPIC_FEEDBACK, TOPIC_INTERACTIONS
from learner.gate import GateConfig, can_measure
from learner.live_metrics import EVERY_S as LIVE_EVERY_S
from learner.live_metrics import LiveEvaluation
from learner.promotion import judged_canary
from learner.publish import OutboxSender
from learner.retention import PRUNE_EVERY_S, prune
from learner.round import Learner, LearnerConfig, stage_name
from learner.starting_adapter import publish_starting_adapter
from learner.store import IngestResult, Store
from rlhf.cpu_share import bind_learner
from rlhf.models.cache import ModelError
from rlhf.settings import get_settings
from rlhf.status_http import start_status_http

log = logging.getLogger("learner")

GROUP_ID = "rlhf-learner"
TOPICS = (TOPIC_INTERACTIONS, TOPIC_FEEDBACK, TOPIC_ADAPTERS)

# ---------------------------------------------------------------------------- metrics
# (the consumer exports rlhf_consumer_lag{topic,group} itself, in the same registry)
EVENTS = Counter("rlhf_learner_events", "Events stored in the learner store (new event ids only)", ["topic"])
DUPLICATES = Counter("rlhf_learner_duplicate_events", "Redelivered events recognised by event id and skipped")
UNSTORABLE = Counter("rlhf_learner_deadletters", "Records the learner could not store, sent to rlhf.deadletter",
                     ["topic"])
PRUNED = Counter("rlhf_learner_pruned_rows", "Rows pruned from the learner store by retention", ["table"])
STALLED = Gauge("rlhf_learner_consume_stalled", "1 while records wait and none was stored for RLHF_LEARNER_STALL_S")
FEEDBACK = Gauge("rlhf_learner_feedback", "Feedback rows in the learner store", ["status"])
FEEDBACK_BY_TYPE = Gauge("rlhf_learner_feedback_by_type", "Usable (joined) feedback in the learner store by type: "
                         "thumbs, pairwise, demonstration (corrected answers)", ["type"])
FEEDBACK_BY_SOURCE = Gauge("rlhf_learner_feedback_by_source", "Usable (joined) feedback in the learner store by "
                           "source: user, ai (the AI judge's pairwise choices)", ["source"])
NEW_FEEDBACK = Gauge("rlhf_learner_new_feedback", "Usable feedback since the last round (trigger counts this)")
RM_ACCURACY = Gauge("rlhf_learner_rm_accuracy", "Held-out reward-model accuracy of the latest version",
                    ["measure"])
REWARD_MEAN = Gauge("rlhf_learner_reward_mean", "Mean normalised reward in the latest round", ["policy"])
KL = Gauge("rlhf_learner_kl", "KL(policy || base) per answer, nats", ["stage"])
KL_COEF = Gauge("rlhf_learner_kl_coef", "KL penalty coefficient β (adaptive for PPO, fixed for RLOO)")
POLICY_LOSS = Gauge("rlhf_learner_policy_loss", "Clipped policy loss of PPO or RLOO (last iteration)")
VALUE_LOSS = Gauge("rlhf_learner_value_loss", "PPO clipped value loss (last iteration)")
CLIPFRAC = Gauge("rlhf_learner_clipfrac", "Fraction of answer tokens where the PPO or RLOO ratio was clipped")
PPO_TOKENS = Gauge("rlhf_learner_ppo_tokens_per_second", "Answer tokens per second of a PPO or RLOO iteration")
ROUND_SECONDS = Histogram("rlhf_learner_round_seconds", "Duration of a training round",
                          buckets=(10, 30, 60, 120, 300, 600, 1200, 3600, 7200))
ROUNDS = Counter("rlhf_learner_rounds", "Training rounds by outcome", ["status"])
PUBLISHED = Counter("rlhf_learner_adapters_published", "Adapters that passed the gate and were published")
REJECTED = Counter("rlhf_learner_adapters_rejected", "Candidate adapters kept back by the gate")
ROUND_RUNNING = Gauge("rlhf_learner_round_running", "1 while a training round runs")
SUSPECT_USERS = Gauge("rlhf_learner_suspect_users",
                      "Users whose feedback disagreed with the held-out consensus beyond chance in the latest round "
                      "(down-weighted)")


def _set(gauge, value, *labels) -> None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return
    (gauge.labels(*labels) if labels else gauge).set(value)


# ---------------------------------------------------------------------------- consume thread
class ConsumeLoop(threading.Thread):
    """Kafka -> learner store -> commit offsets. Owns its consumer, store connection and producer."""

    HOUSEKEEPING_S = 2.0

    def __init__(self, settings, heldout_fraction: float, stop: threading.Event):
        super().__init__(name="learner-consume", daemon=True)
        self.settings = settings
        self.heldout_fraction = heldout_fraction
        self.stop = stop
        self.error: str | None = None
        self.last_poll = time.monotonic()
        self.consumed = 0
        self.progress_at = time.monotonic()  # last time records were stored, or nothing was waiting
        self.waiting = 0  # records polled and not stored yet, plus the lag last measured

    def stalled(self, stall_s: float) -> bool:
        """Records wait and none was stored for `stall_s`, or the thread has not polled for that long
        (stuck elsewhere, so it cannot see what waits). Read from the HTTP thread."""
        now = time.monotonic()
        stalled = (self.waiting > 0 and now - self.progress_at > stall_s) or now - self.last_poll > stall_s
        STALLED.set(int(stalled))
        return stalled

    def store_batch(self, store: Store, consumer: EventConsumer, records: list[Record]) -> IngestResult:
        """Store a poll batch in one transaction; if that fails, store its records one by one and send those
        that fail to rlhf.deadletter with the reason. The store's own errors (locked, disk full or broken:
        sqlite3.OperationalError) are raised instead: no record is to blame, the batch is read again."""
        try:
            return store.ingest([(r.topic, r.event) for r in records])
        except sqlite3.OperationalError:
            raise
        except Exception as e:  # noqa: BLE001 - narrowed to the record(s) at fault below
            log.warning("a batch of %d records failed to store (%s: %s); storing them one by one", len(records),
                        type(e).__name__, e)
        total = IngestResult()
        for rec in records:
            try:
                res = store.ingest([(rec.topic, rec.event)])
            except sqlite3.OperationalError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever one record makes ingest raise, it must not stop the rest
                consumer.deadletter(rec, f"the learner could not store {rec.topic}/{rec.partition}@{rec.offset}: "
                                         f"{type(e).__name__}: {e}")
                UNSTORABLE.labels(rec.topic).inc()
                continue
            total.new += res.new
            total.duplicates += res.duplicates
            for topic, n in res.by_topic.items():
                total.by_topic[topic] = total.by_topic.get(topic, 0) + n
        return total

    def run(self) -> None:
        store = Store.open(self.settings, self.heldout_fraction)
        consumer = EventConsumer(self.settings, TOPICS, group_id=GROUP_ID, from_beginning=True)
        sender = None
        next_housekeeping = next_prune = 0.0
        last_log, logged = time.monotonic(), 0
        try:
            while not self.stop.is_set():
                try:
                    records = consumer.poll(1.0)
                    self.last_poll = time.monotonic()
                    if records:
                        self.waiting = len(records)
                        try:
                            res = self.store_batch(store, consumer, records)  # durable first...
                        except Exception:
                            consumer.rewind()  # not stored: read the batch again
                            raise
                        consumer.commit()                                     # ...then the offsets
                        self.waiting, self.progress_at = 0, time.monotonic()
                        for topic, n in res.by_topic.items():
                            EVENTS.labels(topic).inc(n)
                        if res.duplicates:
                            DUPLICATES.inc(res.duplicates)
                        self.consumed += res.new
                    if time.monotonic() >= next_housekeeping:
                        next_housekeeping = time.monotonic() + self.HOUSEKEEPING_S
                        expired = store.expire_pending(self.settings.learner_join_wait_s)
                        if expired:
                            log.warning("%d feedback events never met their interaction within %g s: "
                                        "sent to the dead-letter topic", expired, self.settings.learner_join_wait_s)
                        if store.unsent_outbox(1):
                            sender = sender or OutboxSender(self.settings)
                            sender.flush(store)
                        counts = store.counts()
                        for status in ("joined", "pending", "dead"):
                            FEEDBACK.labels(status).set(counts[f"feedback_{status}"])
                        for kind, n in store.joined_by_type().items():
                            FEEDBACK_BY_TYPE.labels(kind).set(n)
                        for source, n in store.joined_by_source().items():
                            FEEDBACK_BY_SOURCE.labels(source).set(n)
                        NEW_FEEDBACK.set(store.new_feedback_count())
                        self.waiting = sum(consumer.lag().values())
                        if not self.waiting:
                            self.progress_at = time.monotonic()
                    if time.monotonic() >= next_prune:
                        next_prune = time.monotonic() + PRUNE_EVERY_S
                        pruned = prune(store, self.settings.learner_keep_days, self.settings.learner_keep_events)
                        for table, n in pruned.items():
                            PRUNED.labels(table).inc(n)
                        if any(pruned.values()):
                            log.info("retention pruned %s", pruned)
                    self.error = None
                    if self.consumed > logged and time.monotonic() - last_log > 30:
                        log.info("consumed %d new events so far (%s)", self.consumed, store.counts())
                        last_log, logged = time.monotonic(), self.consumed
                except Exception as e:  # noqa: BLE001 - keep consuming; what was not stored is not committed
                    self.error = f"{type(e).__name__}: {e}"
                    log.warning("consume loop: %s; retrying", self.error)
                    self.stop.wait(2.0)
        finally:
            consumer.close()
            if sender is not None:
                sender.close()
            store.close()


# ---------------------------------------------------------------------------- evaluate thread
class EvaluateLoop(threading.Thread):
    """Live evaluation and the promotion controller's turn every LIVE_EVERY_S, on its own store connection
    (SQLite's write-ahead log lets it read while the consume thread writes)."""

    def __init__(self, settings, heldout_fraction: float, stop: threading.Event):
        super().__init__(name="learner-evaluate", daemon=True)
        self.settings = settings
        self.heldout_fraction = heldout_fraction
        self.stop = stop
        self.error: str | None = None

    def run(self) -> None:
        store = Store.open(self.settings, self.heldout_fraction)
        live = LiveEvaluation(store, self.settings)
        try:
            while True:
                try:
                    live.tick()
                    self.error = None
                except Exception as e:  # noqa: BLE001 - the next turn reads the store again
                    self.error = f"{type(e).__name__}: {e}"
                    log.warning("live evaluation: %s; trying again in %g s", self.error, LIVE_EVERY_S)
                if self.stop.wait(LIVE_EVERY_S):
                    break
        finally:
            store.close()


# ---------------------------------------------------------------------------- HTTP
def learner_health(state: dict) -> tuple[int, dict]:
    """/healthz: 200 while the consume loop is alive and not stalled (the liveness probe), else 503."""
    consumer: ConsumeLoop | None = state.get("consumer")
    alive = consumer is not None and consumer.is_alive()
    stall_s = state.get("stall_s", 300.0)
    stalled = alive and consumer.stalled(stall_s)
    status = "ok" if alive and not stalled else "consumer stopped" if not alive else \
        f"consumption stalled: records wait and none was stored for over {stall_s:g} s"
    info = {"status": status, "consumer_alive": alive, "consumer_stalled": stalled,
            "records_waiting": consumer.waiting if consumer else None,
            "consumer_error": consumer.error if consumer else None,
            "round_running": state.get("round_running", False),
            "last_round": state.get("last_round")}
    return (200 if alive and not stalled else 503), info


# ---------------------------------------------------------------------------- rounds
class Trigger(NamedTuple):
    """should_train's answer: run a round?, the new-feedback count, why (empty when there is nothing to
    say), and whether the held-out feedback was too thin for the gate at that count."""
    go: bool
    new: int
    why: str
    heldout_thin: bool = False

    @property
    def thin_at(self) -> int | None:
        """What the loop passes back as should_train's `thin_at`: the count, only when held-out feedback
        was too thin at it (a wait for a canary must not skip the check after the decision)."""
        return self.new if self.heldout_thin else None


def should_train(store, settings, since_last: float, gate: GateConfig,
                 thin_at: int | None = None) -> Trigger:
    """The trigger documented in docs/learner.md: enough new feedback (or some, and long enough since the
    last round), no canary the promotion controller is judging, and held-out feedback the gate can
    measure the reward model on; a round that could not pass the gate is not started. The held-out
    count scans the feedback table: with `thin_at` (the new-feedback count at which it was last too
    thin) it is not redone until more feedback arrived."""
    new = store.new_feedback_count()
    if new >= settings.learner_min_feedback:
        why = f"{new} new feedback events (>= {settings.learner_min_feedback})"
    elif new > 0 and since_last >= settings.learner_interval_s:
        why = f"{new} new feedback events and {since_last:.0f} s since the last round"
    else:
        return Trigger(False, new, "")
    judged = judged_canary(store.routing())
    if judged:
        return Trigger(False, new, f"{why}, but users are judging the canary {judged}: a new version would end "
                                   f"that before they decided; waiting for the promotion controller")
    if new == thin_at:
        return Trigger(False, new, "", heldout_thin=True)
    held = store.heldout_feedback_counts()
    if not can_measure(held["pairs"], held["ups"], held["downs"], gate):
        return Trigger(False, new, (f"{why}, but held-out users gave {held['pairs']} pairs, {held['ups']} ups "
                                    f"and {held['downs']} downs: the gate needs {gate.min_heldout_pairs} pairs "
                                    f"or {gate.min_heldout_thumbs} ups and as many downs; waiting for more"),
                       heldout_thin=True)
    return Trigger(True, new, why)


def report_round(result) -> None:
    m = result.metrics
    _set(RM_ACCURACY, m.get("rm_pairwise_accuracy"), "pairwise")
    _set(RM_ACCURACY, m.get("rm_thumbs_auc"), "thumbs_auc")
    _set(RM_ACCURACY, m.get("rm_accuracy"), "gate")
    _set(REWARD_MEAN, m.get("reward_candidate"), "candidate")
    _set(REWARD_MEAN, m.get("reward_serving"), "serving")
    algo = stage_name(m.get("algorithm", "ppo"))  # the policy stage's metrics are <stage>_*
    _set(REWARD_MEAN, m.get(f"{algo}_score"), algo)
    _set(KL, m.get("kl_candidate"), "candidate")
    _set(KL, m.get(f"{algo}_kl"), algo)
    _set(SUSPECT_USERS, m.get("suspect_users"))
    if m.get("round_seconds"):
        ROUND_SECONDS.observe(m["round_seconds"])
    ROUNDS.labels(result.status).inc()
    (PUBLISHED if result.status == "published" else REJECTED).inc()


def on_progress(stage: str, m: dict) -> None:
    if stage in ("ppo_step", "rloo_step", "dpo_step", "online_dpo_step", "kto_step"):
        algo = stage.removesuffix("_step")
        _set(POLICY_LOSS, m.get("policy_loss"))
        _set(VALUE_LOSS, m.get("value_loss"))  # PPO's critic only
        _set(CLIPFRAC, m.get("clipfrac"))
        _set(KL, m.get("kl"), algo)
        _set(KL_COEF, m.get("kl_coef"))
        _set(REWARD_MEAN, m.get("score"), algo)
        _set(PPO_TOKENS, m.get("tokens_per_s"))
    elif stage == "reward_model":
        _set(RM_ACCURACY, m.get("rm_pairwise_accuracy"), "pairwise")
        _set(RM_ACCURACY, m.get("rm_thumbs_auc"), "thumbs_auc")
        _set(SUSPECT_USERS, m.get("suspect_users"))


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT while a round runs."""


def load_config():
    path = get_settings().learner_config
    return LearnerConfig.from_file(path) if path else LearnerConfig()


def run() -> int:
    settings = get_settings()
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))  # chatty at INFO
    try:
        client_security(settings)  # Kafka security settings that cannot work stop the start, with why
        cpus = bind_learner(settings.learner_cpus)  # before the engine starts: its worker reads the binding then
        if cpus:
            torch.set_num_threads(len(cpus))
            log.info("the learner computes on cores %s (%d torch thread%s)", settings.learner_cpus, len(cpus),
                     "" if len(cpus) == 1 else "s")
        cfg = load_config()
        learner = Learner(settings, cfg)
    except (ModelError, ValueError, OSError) as e:
        log.error("cannot start the learner: %s", e)
        return 2
    store: Store = learner.store
    try:  # once per adapter store: the starting adapter `rlhf model prepare` built becomes policy@v0
        publish_starting_adapter(store, settings, learner.model_path, learner.model_name)
    except (ValueError, OSError) as e:
        log.warning("the starting adapter was not published: %s", e)
    aborted = store.abort_unfinished_rounds()
    if aborted:
        log.warning("%d round(s) were interrupted by a stop; their feedback counts as new again", aborted)

    stop = threading.Event()
    state: dict = {"round_running": False, "last_round": store.last_round(), "stall_s": settings.learner_stall_s}
    running = {"round": False}

    def on_signal(signum, frame):
        log.info("signal %d: stopping", signum)
        stop.set()
        if running["round"]:
            raise _Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    consumer = ConsumeLoop(settings, cfg.heldout_fraction, stop)
    state["consumer"] = consumer
    consumer.start()
    evaluator = EvaluateLoop(settings, cfg.heldout_fraction, stop)
    evaluator.start()
    http = start_status_http(settings.host, settings.learner_port, lambda: learner_health(state),
                             name="learner-http")
    log.info("learner up: model %s, store %s, metrics on :%d; trains on >= %d new feedback or every %g s",
             settings.model, store.path, settings.learner_port, settings.learner_min_feedback,
             settings.learner_interval_s)
    started = time.time()
    thin_at = None  # new-feedback count at which the held-out feedback was last too thin for the gate
    waiting_for = ""  # what the learner last waited for (held-out feedback, a canary): said once at info level
    try:
        while not stop.is_set():
            last = store.last_round()
            since = time.time() - (last["finished_at"] if last else started)
            trigger = should_train(store, settings, since, learner.cfg.gate, thin_at)
            NEW_FEEDBACK.set(trigger.new)
            thin_at = trigger.thin_at
            if not trigger.go:
                if trigger.why:
                    kind = "held-out feedback" if trigger.heldout_thin else "canary"
                    (log.info if kind != waiting_for else log.debug)("no round yet: %s", trigger.why)
                    waiting_for = kind
                stop.wait(1.0)
                continue
            waiting_for = ""
            log.info("starting a round: %s", trigger.why)
            running["round"] = True
            state["round_running"] = True
            ROUND_RUNNING.set(1)
            try:
                result = learner.run_round(on_progress)
                report_round(result)
                log.info("round %d %s%s", result.round_id, result.status,
                         f" as {result.version}" if result.version else ": " + "; ".join(result.reasons))
            except _Stop:
                break
            except Exception:  # noqa: BLE001 - a failed round is recorded; wait for new feedback
                log.exception("round failed")
                ROUNDS.labels("failed").inc()
            finally:
                running["round"] = False
                state["round_running"] = False
                ROUND_RUNNING.set(0)
                state["last_round"] = store.last_round(finished_only=False)
    except _Stop:
        pass
    finally:
        stop.set()
        # a signal that lands between the round's row being written and its own try block
        # (or in the bookkeeping after it) leaves the row open: a stop mid-round is a failed round
        store.end_unfinished_rounds("failed", "the learner was stopped during the round")
        consumer.join(timeout=15)
        evaluator.join(timeout=15)
        learner.close()
        http.shutdown()
        log.info("learner stopped")
    return 0
