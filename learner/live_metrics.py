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
  thumbs | pairwise; rlhf_canary_decisions_total{decision}: promote | rollback | expired;
- rlhf_version_offline{version, figure}: each published version's offline figures from its round
  (live_evaluation.OFFLINE_FIGURES: reward, KL, perplexity, answer tokens, A/B win rate vs parent).

The same live table goes to every serving replica as a signed `LiveFigures` event on `rlhf.adapters`
(through the outbox, like the controller's decisions), at most every `FIGURES_EVERY_S` and only when it
changed: serving shows it on GET /v1/adapters without reading the learner's store.
"""

from __future__ import annotations

import math
import time

from prometheus_client import Counter, Gauge

from feedback.schema import (
    MAX_LIVE_VERSIONS,
    TOPIC_ADAPTERS,
    LiveFigures,
    LiveRate,
    LiveRating,
    VersionLive,
)
from learner.canary_statistics import Interval
from learner.leaderboard import Rating, leaderboard
from learner.live_evaluation import VersionFigures, offline_by_version, version_table
from learner.promotion import PromotionConfig, PromotionController

EVERY_S = 10.0
FIGURES_EVERY_S = 30.0
"""Least time between two LiveFigures events (each stays on rlhf.adapters, which replicas replay on start)."""

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
OFFLINE = Gauge("rlhf_version_offline", "Offline figures per published version from the round that made it "
                "(its manifest's metrics): reward, KL to the reference, perplexity on the reference text, answer "
                "tokens, A/B win rate against the parent", ["version", "figure"])


def _bounds(gauge, i: Interval, *labels: str) -> None:
    for bound, value in (("estimate", i.estimate), ("low", i.low), ("high", i.high)):
        gauge.labels(*labels, bound).set(value)


def _rate(i: Interval) -> LiveRate:
    return LiveRate(estimate=None if math.isnan(i.estimate) else i.estimate, low=i.low, high=i.high, n=i.n)


def live_versions(table: list[VersionFigures], board: list[Rating]) -> list[VersionLive]:
    """The live table as LiveFigures carries it: the first MAX_LIVE_VERSIONS rows (active, canary, newest)."""
    ratings = {r.version: r for r in board}
    out = []
    for f in table[:MAX_LIVE_VERSIONS]:
        r = ratings.get(f.version)
        out.append(VersionLive(version=f.version, role=f.role, answers=f.answers, answer_tokens=f.answer_tokens,
                               thumbs_up=_rate(f.thumbs_up), with_feedback=_rate(f.with_feedback),
                               pairwise_win=_rate(f.pairwise_win),
                               rating=LiveRating(points=r.points[0], low=r.points[1], high=r.points[2], votes=r.votes)
                               if r else None))
    return out


class LiveEvaluation:
    def __init__(self, store, settings):
        self.store = store
        self.controller = PromotionController(store, PromotionConfig(
            margin=settings.promote_margin, confidence=settings.promote_confidence,
            max_events=settings.canary_max_events))
        self.sent: list[VersionLive] | None = None  # the figures of the last LiveFigures queued
        self.next_send = 0.0

    def tick(self) -> None:
        verdict = self.controller.check()
        if verdict is not None:
            _bounds(CANARY_DIFFERENCE, verdict.thumbs, "thumbs")
            _bounds(CANARY_DIFFERENCE, verdict.pairwise, "pairwise")
            if verdict.decision != "undecided":
                DECISIONS.labels(verdict.decision).inc()
        table = version_table(self.store.db, self.store.routing())
        for f in table:
            ANSWERS.labels(f.version).set(f.answers)
            ANSWER_TOKENS.labels(f.version).set(f.answer_tokens)
            for figure, i in (("thumbs_up", f.thumbs_up), ("with_feedback", f.with_feedback),
                              ("pairwise_win", f.pairwise_win)):
                _bounds(RATE, i, f.version, figure)
                OBSERVATIONS.labels(f.version, figure).set(i.n)
        board = leaderboard(self.store.db)
        for r in board:
            for bound, points in zip(("estimate", "low", "high"), r.points):
                RATING.labels(r.version, bound).set(points)
        for version, figures in offline_by_version(self.store.db).items():
            for figure, value in figures.items():
                OFFLINE.labels(version, figure).set(value)
        self.send_figures(live_versions(table, board))

    def send_figures(self, versions: list[VersionLive]) -> LiveFigures | None:
        """Queue a signed LiveFigures in the outbox when the figures changed and FIGURES_EVERY_S passed;
        returns it (None: nothing new, too soon, or no signing key to sign it with)."""
        if versions == self.sent or time.monotonic() < self.next_send or self.store.keys.signing is None:
            return None
        ev = self.store.keys.sign(LiveFigures(versions=versions))
        with self.store.tx():
            self.store.add_to_outbox(TOPIC_ADAPTERS, ev)
        self.sent, self.next_send = versions, time.monotonic() + FIGURES_EVERY_S
        return ev
