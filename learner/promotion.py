"""The promotion controller: the users' feedback decides whether a canary replaces the active version.

    controller = PromotionController(store, PromotionConfig(margin=0.0, confidence=0.95, max_events=2000))
    verdict = controller.check()     # None without a canary; else the Verdict, and on a decision the
                                     # signed routing event is in the store's outbox (sent like announcements)

Evidence (`evidence`), from the learner store (everything serving logged on `rlhf.feedback`),
counted only from the moment the canary started and only on answers given since then, so both
versions are measured over the same days:
- thumbs on answers each version gave (a user's later thumbs on the same answer replaces the
  earlier one in the store), at most `max_per_user` per user and version, so no single user
  (or a client inventing users within its rate limits) outweighs the rest by volume;
- blind pairwise votes between an answer of the canary and one of the active version, at most
  `max_per_user` per user (learner/live_evaluation.py counts both, for the table and leaderboard too).
The statistics are learner/canary_statistics.py's (valid however often this looks).

A decision is one signed `routing_changed` event with the reason and the numbers behind it:
promote = activate the canary; rollback and expiry = end the canary (the active version stays).
An operator's routing change always wins: the controller judges only the canary routing holds
now (an operator's rollback or activation ends the canary), and a version an operator named
in a routing change (activate, canary) is not judged again ("paused"), so the controller
never undoes a person's decision.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from feedback.schema import RoutingChanged
from learner.canary_statistics import CanaryEvidence, Verdict, decide
from learner.live_evaluation import BASE, MAX_PER_USER, thumbs_by_version, votes_by_pair

log = logging.getLogger(__name__)

CONTROLLER = "promotion-controller"
"""The `source` of the controller's routing events (an operator's have none)."""


@dataclass
class PromotionConfig:
    margin: float = 0.0        # RLHF_PROMOTE_MARGIN
    confidence: float = 0.95   # RLHF_PROMOTE_CONFIDENCE
    max_events: int = 2000     # RLHF_CANARY_MAX_EVENTS
    max_per_user: int = MAX_PER_USER
    """A user's thumbs counted per version, and votes per pair of versions (the rest add nothing)."""


def canary_started(state) -> float | None:
    """When the current canary began: the time of the newest event that made it the canary."""
    for ev in reversed(state.events):
        made = (ev.get("type") == "adapter_announced" and ev.get("version") == state.canary) or (
            ev.get("type") == "routing_changed" and ev.get("action") == "canary" and ev.get("version") == state.canary)
        if made:
            return float(ev["ts"])
    return None


def hand_routed(state) -> set[str | None]:
    """Versions an operator named in a routing change (activate or canary): not judged again."""
    return {ev.get("version") for ev in state.events
            if ev.get("type") == "routing_changed" and ev.get("source") != CONTROLLER}


def judged_canary_since(state) -> tuple[str, float] | None:
    """The canary the controller judges now and when it began: None without a canary, or when an
    operator named it."""
    canary = state.canary
    if canary is None or canary in hand_routed(state):
        return None
    since = canary_started(state)
    return None if since is None else (canary, since)


def judged_canary(state) -> str | None:
    """The canary the controller judges now (judged_canary_since without the time)."""
    judged = judged_canary_since(state)
    return judged[0] if judged else None


class PromotionController:
    def __init__(self, store, cfg: PromotionConfig):
        self.store = store
        self.cfg = cfg

    def evidence(self, canary: str, active: str | None, since: float) -> CanaryEvidence:
        cap = self.cfg.max_per_user
        thumbs = thumbs_by_version(self.store.db, cap, since)
        c_up, c_n = thumbs.get(canary, (0, 0))
        a_up, a_n = thumbs.get(active or BASE, (0, 0))
        votes = votes_by_pair(self.store.db, cap, since)
        wins, losses = votes.get((canary, active or BASE), 0), votes.get((active or BASE, canary), 0)
        return CanaryEvidence(c_up, c_n - c_up, a_up, a_n - a_up, wins, losses)

    def check(self) -> Verdict | None:
        """Judge the current canary; on a decision queue its signed routing event. None: nothing to judge."""
        state = self.store.routing()
        judged = judged_canary_since(state)
        if judged is None:
            return None
        (canary, since), active = judged, state.active
        cfg = self.cfg
        verdict = decide(self.evidence(canary, active, since), margin=cfg.margin, alpha=1 - cfg.confidence,
                         max_events=cfg.max_events)
        if verdict.decision == "undecided":
            return verdict
        numbers = {"decision": verdict.decision, "canary": canary, "active": active, "events": verdict.events,
                   "thumbs": asdict(verdict.thumbs), "pairwise": asdict(verdict.pairwise)}
        change = (RoutingChanged(action="activate", version=canary) if verdict.decision == "promote"
                  else RoutingChanged(action="canary", version=None))
        ev = self.store.keys.sign(change.model_copy(update={"source": CONTROLLER, "reason": verdict.reason,
                                                             "evidence": numbers}))
        self.store.queue_control_event(ev)
        log.info("canary %s %s: %s", canary, {"promote": "promoted", "rollback": "rolled back",
                                              "expired": "ended"}[verdict.decision], verdict.reason)
        return verdict
