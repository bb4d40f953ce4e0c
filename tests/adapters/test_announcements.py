"""Verify-then-apply (refusal, then RoutingState.apply): the step serving's follower, the learner and the command line share."""

from __future__ import annotations

import pytest

from adapters.announcements import apply_event
from adapters.routing_state import RoutingState
from adapters.snapshot import SNAPSHOT, read_snapshot, write_snapshot
from adapters.store import write_adapter
from feedback.schema import AdapterAnnounced, RoutingChanged


@pytest.fixture
def store(tmp_path, peft_folder):
    return tmp_path / "adapters", peft_folder


def announced(store_dir, src, **kw) -> AdapterAnnounced:
    version, rel, sha = write_adapter(store_dir, "policy", src)
    return AdapterAnnounced(version=version, path=rel, manifest_sha256=sha, **kw)


def test_a_verified_announcement_routes_to_the_version(store):
    store_dir, src = store
    state = RoutingState()
    ev = announced(store_dir, src)
    assert apply_event(state, ev, store_dir) == (None, None)
    assert state.active == "policy@v1" and state.seen(ev.event_id)


def test_an_altered_adapter_is_refused_and_routing_stays(store):
    store_dir, src = store
    state = RoutingState()
    apply_event(state, announced(store_dir, src), store_dir)
    ev = announced(store_dir, src)
    (store_dir / ev.path / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}  evil")
    refused, why = apply_event(state, ev, store_dir)
    assert "does not match its sha256" in refused and why.startswith("refused")
    assert state.active == "policy@v1" and "policy@v2" in state.refused


def test_an_announcement_naming_another_version_is_refused(store):
    store_dir, src = store
    ev = announced(store_dir, src)
    lying = AdapterAnnounced(version="policy@v7", path=ev.path, manifest_sha256=ev.manifest_sha256)
    state = RoutingState()
    refused, _ = apply_event(state, lying, store_dir)
    assert "manifest says policy@v1" in refused and state.active is None


def test_a_path_outside_the_store_is_refused(store):
    store_dir, src = store
    ev = announced(store_dir, src)
    escape = AdapterAnnounced(version=ev.version, path="../adapters/policy/v1", manifest_sha256=ev.manifest_sha256)
    refused, _ = apply_event(RoutingState(), escape, store_dir)
    assert "must be relative to the adapter store" in refused


def test_rank_above_the_engines_limit_is_refused(store):
    store_dir, src = store
    refused, _ = apply_event(RoutingState(), announced(store_dir, src), store_dir, max_rank=4)
    assert "exceeds the largest allowed" in refused


@pytest.mark.parametrize("config", ["[]", '{"r": "eight"}', '{"r": [8]}'], ids=["list", "text-rank", "list-rank"])
def test_a_config_of_the_wrong_shape_is_refused_not_raised(store, config):
    store_dir, src = store
    (src / "adapter_config.json").write_text(config)
    state = RoutingState()
    refused, why = apply_event(state, announced(store_dir, src), store_dir, max_rank=16)
    assert "adapter_config.json" in refused and why.startswith("refused") and state.active is None


def test_snapshot_round_trip_and_unreadable_snapshot(store, tmp_path):
    store_dir, src = store
    state = RoutingState(0.0)
    for ev in (announced(store_dir, src), announced(store_dir, src), RoutingChanged(action="rollback")):
        apply_event(state, ev, store_dir)
    write_snapshot(store_dir, state, "replica:1")
    restored = read_snapshot(store_dir)
    assert restored.describe() == state.describe() and restored.applied == state.applied
    (store_dir / SNAPSHOT).write_text("{not json")
    assert read_snapshot(store_dir) is None
    assert read_snapshot(tmp_path / "nowhere") is None
