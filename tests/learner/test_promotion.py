"""The promotion controller on a real learner store: a canary users like more is promoted, one they
like less is rolled back, an equal one waits, each decision is one signed routing event with its
reason and numbers, and an operator's routing change wins."""

from __future__ import annotations

import json

import pytest

from feedback.schema import TOPIC_ADAPTERS, RoutingChanged
from learner.promotion import CONTROLLER, PromotionConfig, PromotionController
from tests.learner.canary_store import canary_store, feedback
from tests.learner.test_store import ingest


@pytest.fixture
def store(tmp_path):
    s = canary_store(tmp_path)
    yield s
    s.close()


def controller(store, **kw) -> PromotionController:
    return PromotionController(store, PromotionConfig(**{"confidence": 0.95, "max_events": 5000, **kw}))


def decisions(store) -> list[dict]:
    return [json.loads(r["payload"]) for r in store.unsent_outbox() if r["topic"] == TOPIC_ADAPTERS
            and json.loads(r["payload"]).get("source") == CONTROLLER]


def test_a_canary_users_like_more_is_promoted(store):
    feedback(store, 400, {"policy@v2": 0.8, "policy@v1": 0.4})
    verdict = controller(store).check()
    assert verdict.decision == "promote" and verdict.thumbs.low > 0
    (ev,) = decisions(store)
    assert ev["action"] == "activate" and ev["version"] == "policy@v2" and ev["signature"]
    assert ev["evidence"]["decision"] == "promote" and "not worse" in ev["reason"]
    routing = store.routing()
    assert (routing.active, routing.canary) == ("policy@v2", None)
    assert controller(store).check() is None  # nothing left to judge


def test_a_canary_users_like_less_is_rolled_back(store):
    feedback(store, 400, {"policy@v2": 0.3, "policy@v1": 0.7})
    assert controller(store).check().decision == "rollback"
    (ev,) = decisions(store)
    assert ev["action"] == "canary" and ev["version"] is None and "worse" in ev["reason"]
    routing = store.routing()
    assert (routing.active, routing.canary) == ("policy@v1", None)


def test_an_equal_canary_waits_then_expires_without_promotion(store):
    feedback(store, 60, {"policy@v2": 0.6, "policy@v1": 0.6})
    assert controller(store).check().decision == "undecided" and decisions(store) == []
    assert controller(store, max_events=50).check().decision == "expired"
    assert store.routing().active == "policy@v1"


def test_feedback_from_before_the_canary_and_beyond_a_users_cap_does_not_count(store):
    feedback(store, 40, {"policy@v2": 1.0, "policy@v1": 0.0}, ts=500.0, seed=1)  # answers older than the canary
    feedback(store, 2, {"policy@v2": 1.0, "policy@v1": 0.0}, per_user=200, seed=2)  # two users, many thumbs
    e = controller(store, max_per_user=20).evidence("policy@v2", "policy@v1", since=2000.0)
    assert (e.canary_up, e.canary_down, e.active_up, e.active_down) == (20, 0, 0, 20)


def test_an_operators_routing_change_pauses_the_controller_for_that_version(store):
    ingest(store, [(TOPIC_ADAPTERS, RoutingChanged(action="canary", version="policy@v2", canary_fraction=0.2))])
    feedback(store, 400, {"policy@v2": 0.1, "policy@v1": 0.9})
    assert controller(store).check() is None and decisions(store) == []
    assert store.routing().canary == "policy@v2"
