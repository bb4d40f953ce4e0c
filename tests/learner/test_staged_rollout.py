"""Staged rollout by default: with no RLHF_CANARY_FRACTION set, a version the learner publishes
(learner/publish.py) starts as a canary on a sticky 10 % of users and is not active; serving's
routing (the same RoutingState over the same announcement, then adapters/router.py) sends the
same users to it on every request. The end-to-end check over HTTP is tests/learner/test_e2e_http.py."""

from __future__ import annotations

import pytest

from adapters.router import LoadedAdapter, Router
from adapters.routing_state import RoutingState
from learner.publish import publish_adapter
from learner.store import Store
from rlhf.settings import get_settings

USERS = [f"user-{i}" for i in range(2000)]


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.delenv("RLHF_CANARY_FRACTION", raising=False)
    for name, sub in (("RLHF_ADAPTER_DIR", "adapters"), ("RLHF_DATA_DIR", "data")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def peft_folder(path):
    """Enough of a PEFT adapter for the store and its verification (the weights are never loaded)."""
    path.mkdir()
    (path / "adapter_config.json").write_text('{"r": 8}')
    (path / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return path


def test_a_learner_published_version_starts_as_a_sticky_canary_on_10_percent(settings, tmp_path):
    assert settings.canary_fraction == 0.1
    store = Store.open(settings)
    try:
        ev = publish_adapter(store, settings, peft_folder(tmp_path / "round1"), parent=None, base_model="tiny",
                             metrics={}, feedback_count=0, round_id=1)
        assert ev.version == "policy@v1" and ev.canary_fraction is None  # each replica's RLHF_CANARY_FRACTION
        routing = store.routing()  # the learner's mirror of what serving routes
        assert (routing.active, routing.canary, routing.canary_fraction) == (None, "policy@v1", 0.1)
        assert store.serving_adapter() is None  # default traffic stays on the base model
    finally:
        store.close()

    # a serving replica with the same default settings, following the same announcement
    state = RoutingState(settings.canary_fraction)
    assert state.apply(ev) is None
    router = Router("tiny")
    router.loaded[ev.version] = LoadedAdapter(ev.version, 1, tmp_path)
    router.active, router.canary, router.canary_fraction = state.active, state.canary, state.canary_fraction

    def answered_by() -> dict[str, str | None]:
        return {u: (a.version if (a := router.pick(u, None)) else None) for u in USERS}

    first = answered_by()
    assert answered_by() == first  # sticky: the same users, every time
    share = sum(v == "policy@v1" for v in first.values()) / len(USERS)
    assert set(first.values()) == {"policy@v1", None}
    assert 0.08 <= share <= 0.12, share  # 10 %: a hash of the user id, 2000 users (3 standard errors)
