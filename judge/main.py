"""`rlhf judge`: the AI judge, an extra source of pairwise feedback with `source: "ai"`.

    RLHF_JUDGE_URL=http://127.0.0.1:8000/v1 rlhf judge     (the default: our own serving's base model)

It reads rlhf.interactions and rlhf.feedback (its own consumer group `judge`; events without
serving's HMAC are ignored, as the learner ignores them; malformed records are skipped, the learner
keeps them on rlhf.deadletter, so the judge writes to rlhf.feedback only), pairs different answers
to the same prompt (judge/pairs.py), asks the judge model which is better by the operator's rubric in both
orders (judge/verdict.py), and publishes each clear verdict as a Pairwise event with
`source: "ai"`, user `ai:judge`, client `judge`, sealed with RLHF_EVENT_HMAC_KEY like serving's
events, through the same durable producer (its spool in RLHF_DATA_DIR/judge). The learner weighs
these by RLHF_JUDGE_WEIGHT and never counts them as a user.

It also judges the two answers of every users' pairwise choice it can (both answers seen
recently) and tracks how often it agrees (judge/agreement.py); while that agreement is below
RLHF_JUDGE_AGREEMENT_FLOOR (after RLHF_JUDGE_MIN_AGREEMENT_SAMPLES comparisons) it publishes
nothing, and resumes when it recovers. Users' pairs are judged before new pairs in every batch.

What it has seen lives in memory: after a restart it continues from its committed offsets and
pairs only answers that arrive from then on (at most once per pair; a lost pair costs nothing).

Metrics on RLHF_JUDGE_PORT (/metrics, /healthz): rlhf_judge_agreement, rlhf_judge_agreement_lower_bound,
rlhf_judge_agreement_samples, rlhf_judge_paused, rlhf_judge_verdicts_total{outcome} (decided,
inconsistent, unparsed, error), rlhf_judge_events_total, rlhf_judge_refused_events_total.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from pathlib import Path

from prometheus_client import Counter, Gauge

from feedback.consumer import EventConsumer
from feedback.event_hmac import hmac_refusal
from feedback.producer import EventPublisher, SpoolFull
from feedback.schema import TOPIC_FEEDBACK, TOPIC_INTERACTIONS, Interaction, Pairwise
from judge.agreement import Agreement
from judge.pairs import AnswerPool
from judge.verdict import VerdictClient, load_rubric
from rlhf.models.registry import model_display_name
from rlhf.settings import Settings, get_settings
from rlhf.status_http import start_status_http

log = logging.getLogger(__name__)

JUDGE_USER, JUDGE_CLIENT = "ai:judge", "judge"  # who the judge's events name: not a user of the service
GROUP_ID = "judge"  # its consumer group: its committed offsets (and its Kafka ACL in k8s/kafka/users.yaml)
PAIRS_PER_BATCH = 8  # new pairs judged between two polls (users' pairs first, all of them)

AGREEMENT = Gauge("rlhf_judge_agreement", "Share of recent users' pairwise choices the judge agrees with")
AGREEMENT_LOWER = Gauge("rlhf_judge_agreement_lower_bound", "Wilson 95% lower bound of rlhf_judge_agreement")
SAMPLES = Gauge("rlhf_judge_agreement_samples", "Users' choices behind rlhf_judge_agreement")
PAUSED = Gauge("rlhf_judge_paused", "1 while the judge publishes nothing (agreement below the floor)")
VERDICTS = Counter("rlhf_judge_verdicts", "Verdicts asked of the judge model, by outcome", ["outcome"])
EVENTS = Counter("rlhf_judge_events", "Pairwise events with source ai published")
REFUSED = Counter("rlhf_judge_refused_events", "Events ignored because serving's HMAC on them is missing or wrong")


def endpoint(settings: Settings) -> tuple[str, str]:
    """(base URL, model) the judge asks: RLHF_JUDGE_URL / RLHF_JUDGE_MODEL, by default our serving's base model."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = settings.judge_url or f"http://{host}:{settings.port}/v1"
    return url, settings.judge_model or settings.served_model_name or model_display_name(settings.model)


class Judge:
    """One poll -> agreement on users' choices -> new pairs judged and published (see the module docstring)."""

    def __init__(self, settings: Settings, verdicts: VerdictClient, consumer, publisher, *,
                 pool: AnswerPool | None = None):
        self.settings, self.verdicts, self.consumer, self.publisher = settings, verdicts, consumer, publisher
        self.pool = pool or AnswerPool()
        self.agreement = Agreement(settings.judge_agreement_floor, settings.judge_min_agreement_samples)
        self._was_paused = False

    async def step(self) -> None:
        records = await asyncio.to_thread(self.consumer.poll, 1.0)
        choices = []
        for rec in records:
            ev = rec.event
            if ev is None or not isinstance(ev, (Interaction, Pairwise)):
                continue
            if hmac_refusal(ev, self.settings.event_hmac_key):
                REFUSED.inc()
                continue
            if isinstance(ev, Interaction):
                self.pool.add(ev)
            elif ev.source == "user":
                choices.append(ev)
        if records:
            await asyncio.to_thread(self.consumer.commit)
        for ev in choices:
            await self.check_agreement(ev)
        if not self.agreement.paused:
            for a, b in self.pool.take(PAIRS_PER_BATCH):
                await self.judge_pair(a, b)

    async def check_agreement(self, ev: Pairwise) -> None:
        """Judge the two answers a user compared; the pair is then not judged again for publishing."""
        chosen, rejected = self.pool.get(ev.chosen_response_id), self.pool.get(ev.rejected_response_id)
        if chosen is None or rejected is None:
            return  # answers older than the judge's memory (or from before it started)
        self.pool.mark_judged(chosen.response_id, rejected.response_id)
        v = await self.verdicts.compare([m.model_dump() for m in chosen.messages], chosen.response, rejected.response)
        VERDICTS.labels(v.outcome).inc()
        if v.outcome == "decided":
            self.agreement.record(v.winner == "a")
            self._report()

    async def judge_pair(self, a: Interaction, b: Interaction) -> None:
        v = await self.verdicts.compare([m.model_dump() for m in a.messages], a.response, b.response)
        VERDICTS.labels(v.outcome).inc()
        if v.outcome != "decided":
            return
        chosen, rejected = (a, b) if v.winner == "a" else (b, a)
        ev = Pairwise(chosen_response_id=chosen.response_id, rejected_response_id=rejected.response_id,
                      conversation_id=chosen.conversation_id, user=JUDGE_USER, client=JUDGE_CLIENT,
                      chosen_adapter=chosen.adapter, rejected_adapter=rejected.adapter, source="ai")
        try:
            await self.publisher.publish(TOPIC_FEEDBACK, ev)
        except SpoolFull as e:
            log.error("AI verdict not published: %s", e)
            return
        EVENTS.inc()

    def _report(self) -> None:
        a = self.agreement
        AGREEMENT.set(a.rate)
        AGREEMENT_LOWER.set(a.lower_bound)
        SAMPLES.set(a.samples)
        PAUSED.set(int(a.paused))
        if a.paused != self._was_paused:
            self._was_paused = a.paused
            log.warning("judge %s: agreement with users %.3f on %d choices (floor %.2f)",
                        "paused" if a.paused else "resumed", a.rate, a.samples, a.floor)

    def health(self) -> dict:
        a = self.agreement
        return {"status": "ok", "paused": a.paused, "agreement": None if math.isnan(a.rate) else a.rate,
                "agreement_samples": a.samples}


async def serve(settings: Settings, rubric: str) -> int:
    url, model = endpoint(settings)
    verdicts = VerdictClient(url, model, rubric, api_key=settings.judge_api_key, timeout_s=settings.judge_timeout_s,
                             letters_only=not settings.judge_url)  # our serving: a letter, always parseable
    consumer = EventConsumer(settings, [TOPIC_INTERACTIONS, TOPIC_FEEDBACK], group_id=GROUP_ID, dead_letters=False)
    # its own spool: serving's spool folder belongs to serving (`rlhf up` shares RLHF_DATA_DIR)
    publisher = EventPublisher(settings.model_copy(update={"data_dir": Path(settings.data_dir) / "judge"}),
                               client_id="rlhf-judge")
    await publisher.start()
    judge = Judge(settings, verdicts, consumer, publisher)
    judge._report()
    # a paused judge is healthy: it still measures its agreement with users
    http = start_status_http(settings.host, settings.judge_port, lambda: (200, judge.health()), name="judge-http")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    log.info("judge asking %s at %s; metrics on http://%s:%d/metrics", model, url, settings.host,
             settings.judge_port)
    try:
        while not stop.is_set():
            try:
                await judge.step()
            except Exception:  # the broker or the judge endpoint misbehaving: the judge waits and goes on
                log.exception("judge step failed; retrying in 5 s")
                await asyncio.sleep(5.0)
    finally:
        http.shutdown()
        await verdicts.close()
        await publisher.close()
        await asyncio.to_thread(consumer.close)
    return 0


def run() -> int:
    settings = get_settings()
    settings.check_event_hmac_key()
    rubric = load_rubric(settings.judge_rubric)
    return asyncio.run(serve(settings, rubric))
