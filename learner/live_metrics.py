"""The learner's live view of its versions: per-version gauges and the promotion controller's turn.

The consume thread calls `LiveEvaluation.tick()` every `EVERY_S` seconds, after storing what
arrived and before sending the outbox, so a decision goes out within seconds of the event that
settled it. Gauges (Prometheus, on the learner's /metrics; the dashboard plots them):
- rlhf_version_rate{version, figure, bound}: figure thumbs_up | with_feedback | pairwise_win,
  bound estimate | low | high (always-valid 95 % intervals, learner/live_evaluation.py);
- rlhf_version_observations{version, figure}: the count behind each rate;
- rlhf_version_answers{version}, rlhf_version_answer_tokens{version};
- rlhf_version_rating{version, bound}: Bradley-Terry rating from blind votes on the Elo scale, the
  base model 0, bound estimate | low | high (95 %; learner/leaderboard.py);
- rlhf_canary_difference{signal, bound}: the controller's view of canary minus active, signal
  thumbs | pairwise; rlhf_canary_decisions_total{decision}: promote | rollback | expired.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from learner.canary_statistics import Interval
from learner.leaderboard import leaderboard
from learner.live_evaluation import version_table
from learner.promotion import PromotionConfig, PromotionController

EVERY_S = 10.0

RATE = Gauge("rlhf_version_rate", "Live rate per adapter version with its always-valid 95% interval",
             ["version", "figure", "bound"])
OBSERVATIONS = Gauge("rlhf_version_observations", "Observations behind each live rate", ["version", "figure"])
ANSWERS = Gauge("rlhf_version_answers", "Answers logged per adapter version", ["version"])
ANSWER_TOKENS = Gauge("rlhf_version_answer_tokens", "Mean answer length per adapter version, tokens", ["version"])
CANARY_DIFFERENCE = Gauge("rlhf_canary_difference", "Canary minus active version as the promotion controller sees "
                          "it (thumbs-up rate difference, pairwise advantage), with its interval", ["signal", "bound"])
RATING = Gauge("rlhf_version_rating", "Bradley-Terry rating per version from blind pairwise votes, Elo scale, "
               "the base model 0, with its 95% interval", ["version", "bound"])
DECISIONS = Counter("rlhf_canary_decisions", "Decisions of the promotion controller", ["decision"])


def _bounds(gauge, i: Interval, *labels: str) -> None:
    for bound, value in (("estimate", i.estimate), ("low", i.low), ("high", i.high)):
        gauge.labels(*labels, bound).set(value)


class LiveEvaluation:
    def __init__(self, store, settings):
        self.store = store
        self.controller = PromotionController(store, PromotionConfig(
            margin=settings.promote_margin, confidence=settings.promote_confidence,
            max_events=settings.canary_max_events))

    def tick(self) -> None:
        verdict = self.controller.check()
        if verdict is not None:
            _bounds(CANARY_DIFFERENCE, verdict.thumbs, "thumbs")
            _bounds(CANARY_DIFFERENCE, verdict.pairwise, "pairwise")
            if verdict.decision != "undecided":
                DECISIONS.labels(verdict.decision).inc()
        for f in version_table(self.store.db, self.store._routing()):
            ANSWERS.labels(f.version).set(f.answers)
            ANSWER_TOKENS.labels(f.version).set(f.answer_tokens)
            for figure, i in (("thumbs_up", f.thumbs_up), ("with_feedback", f.with_feedback),
                              ("pairwise_win", f.pairwise_win)):
                _bounds(RATE, i, f.version, figure)
                OBSERVATIONS.labels(f.version, figure).set(i.n)
        for r in leaderboard(self.store.db):
            for bound, points in zip(("estimate", "low", "high"), r.points):
                RATING.labels(r.version, bound).set(points)
