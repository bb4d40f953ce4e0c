"""The promotion controller on a real learner store: a canary users like more is promoted, one they
like less is rolled back, an equal one waits, each decision is one signed routing event with its
reason and numbers, and an operator's routing change wins."""

from __future__ import annotations

import json
import random

import pytest

from adapters.store import write_adapter
from feedback.schema import TOPIC_ADAPTERS, AdapterAnnounced, RoutingChanged
from learner.promotion import CONTROLLER, PromotionConfig, PromotionController
from tests.learner.test_store import ingest, interaction, open_store, thumbs


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "learner.sqlite3", heldout_fraction=0.0, adapter_dir=tmp_path / "adapters")
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    for i, fraction in ((1, 0.0), (2, 0.5)):  # v1 active, then v2 announced as a canary
        version, rel, sha = write_adapter(tmp_path / "adapters", "policy", src)
        ingest(s, [(TOPIC_ADAPTERS, AdapterAnnounced(version=version, path=rel, manifest_sha256=sha,
                                                     canary_fraction=fraction, ts=1000.0 * i))])
    routing = s._routing()
    assert (routing.active, routing.canary) == ("policy@v1", "policy@v2")
    yield s
    s.close()


def feedback(store, n_users: int, up_rate: dict[str, float], per_user: int = 3, seed: int = 0, ts: float = 3000.0):
    """n_users users, each routed to one version (as sticky routing does), thumbs up with its rate."""
    rng = random.Random(seed)
    items = []
    for u in range(n_users):
        version = "policy@v2" if u % 2 else "policy@v1"
        for k in range(per_user):
            rid = f"r-{seed}-{u}-{k}"
            items.append(interaction(rid, conv=f"c{u}", adapter=version, ts=ts))
            items.append(thumbs(rid, "up" if rng.random() < up_rate[version] else "down", ts + 1, conv=f"c{u}",
                                user=f"user{u}"))
    ingest(store, items)


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
    routing = store._routing()
    assert (routing.active, routing.canary) == ("policy@v2", None)
    assert controller(store).check() is None  # nothing left to judge


def test_a_canary_users_like_less_is_rolled_back(store):
    feedback(store, 400, {"policy@v2": 0.3, "policy@v1": 0.7})
    assert controller(store).check().decision == "rollback"
    (ev,) = decisions(store)
    assert ev["action"] == "canary" and ev["version"] is None and "worse" in ev["reason"]
    routing = store._routing()
    assert (routing.active, routing.canary) == ("policy@v1", None)


def test_an_equal_canary_waits_then_expires_without_promotion(store):
    feedback(store, 60, {"policy@v2": 0.6, "policy@v1": 0.6})
    assert controller(store).check().decision == "undecided" and decisions(store) == []
    assert controller(store, max_events=50).check().decision == "expired"
    assert store._routing().active == "policy@v1"


def test_feedback_from_before_the_canary_and_beyond_a_users_cap_does_not_count(store):
    feedback(store, 40, {"policy@v2": 1.0, "policy@v1": 0.0}, ts=500.0, seed=1)  # answers older than the canary
    feedback(store, 2, {"policy@v2": 1.0, "policy@v1": 0.0}, per_user=200, seed=2)  # two users, many thumbs
    e = controller(store, max_per_user=20).evidence("policy@v2", "policy@v1", since=2000.0)
    assert (e.canary_up, e.canary_down, e.active_up, e.active_down) == (20, 0, 0, 20)


def test_an_operators_routing_change_pauses_the_controller_for_that_version(store):
    ingest(store, [(TOPIC_ADAPTERS, RoutingChanged(action="canary", version="policy@v2", canary_fraction=0.2))])
    feedback(store, 400, {"policy@v2": 0.1, "policy@v1": 0.9})
    assert controller(store).check() is None and decisions(store) == []
    assert store._routing().canary == "policy@v2"
