"""Verify-then-apply (signature, refusal, then RoutingState.apply): the step serving's follower, the learner
and the command line share; and the snapshot, rebuilt only from the signed events it keeps."""

from __future__ import annotations

import pytest

import json

from adapters.announcements import Untrusted, apply_event, snapshot_state
from adapters.routing_state import RoutingState
from adapters.signing import make_key_pair, signed
from adapters.snapshot import SNAPSHOT, write_snapshot
from adapters.store import write_adapter
from feedback.schema import AdapterAnnounced, RoutingChanged


@pytest.fixture
def store(tmp_path, peft_folder, signing_key, trusted):
    """(adapter store, PEFT folder, sign(event), trusted keys)"""
    return tmp_path / "adapters", peft_folder, lambda ev: signed(ev, signing_key), trusted


def announced(store_dir, src, **kw) -> AdapterAnnounced:
    version, rel, sha = write_adapter(store_dir, "policy", src)
    return AdapterAnnounced(version=version, path=rel, manifest_sha256=sha, **kw)


def test_a_verified_announcement_routes_to_the_version(store):
    store_dir, src, sign, trusted = store
    state = RoutingState()
    ev = announced(store_dir, src)
    assert apply_event(state, sign(ev), store_dir, trusted) == (None, None)
    assert state.active == "policy@v1" and state.seen(ev.event_id)


def test_an_altered_adapter_is_refused_and_routing_stays(store):
    store_dir, src, sign, trusted = store
    state = RoutingState()
    apply_event(state, sign(announced(store_dir, src)), store_dir, trusted)
    ev = announced(store_dir, src)
    (store_dir / ev.path / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}  evil")
    refused, why = apply_event(state, sign(ev), store_dir, trusted)
    assert "does not match its sha256" in refused and why.startswith("refused")
    assert state.active == "policy@v1" and "policy@v2" in state.refused


def test_an_announcement_naming_another_version_is_refused(store):
    store_dir, src, sign, trusted = store
    ev = announced(store_dir, src)
    lying = AdapterAnnounced(version="policy@v7", path=ev.path, manifest_sha256=ev.manifest_sha256)
    state = RoutingState()
    refused, _ = apply_event(state, sign(lying), store_dir, trusted)
    assert "manifest says policy@v1" in refused and state.active is None


def test_a_path_outside_the_store_is_refused(store):
    store_dir, src, sign, trusted = store
    ev = announced(store_dir, src)
    escape = AdapterAnnounced(version=ev.version, path="../adapters/policy/v1", manifest_sha256=ev.manifest_sha256)
    refused, _ = apply_event(RoutingState(), sign(escape), store_dir, trusted)
    assert "must be relative to the adapter store" in refused


def test_rank_above_the_engines_limit_is_refused(store):
    store_dir, src, sign, trusted = store
    refused, _ = apply_event(RoutingState(), sign(announced(store_dir, src)), store_dir, trusted, max_rank=4)
    assert "exceeds the largest allowed" in refused


@pytest.mark.parametrize("config", ["[]", '{"r": "eight"}', '{"r": [8]}'], ids=["list", "text-rank", "list-rank"])
def test_a_config_of_the_wrong_shape_is_refused_not_raised(store, config):
    store_dir, src, sign, trusted = store
    (src / "adapter_config.json").write_text(config)
    state = RoutingState()
    refused, why = apply_event(state, sign(announced(store_dir, src)), store_dir, trusted, max_rank=16)
    assert "adapter_config.json" in refused and why.startswith("refused") and state.active is None


def test_snapshot_round_trip_and_unreadable_snapshot(store, tmp_path):
    store_dir, src, sign, trusted = store
    state = RoutingState(0.0)
    for ev in (announced(store_dir, src), announced(store_dir, src), RoutingChanged(action="rollback")):
        apply_event(state, sign(ev), store_dir, trusted)
    write_snapshot(store_dir, state, "replica:1")
    restored = snapshot_state(store_dir, 0.0, trusted)
    assert restored.describe() == state.describe() and restored.applied == state.applied
    (store_dir / SNAPSHOT).write_text("{not json")
    assert snapshot_state(store_dir, 0.0, trusted) is None
    assert snapshot_state(tmp_path / "nowhere", 0.0, trusted) is None


@pytest.mark.parametrize("forge", ["unsigned", "altered", "other_key"])
def test_an_event_that_does_not_verify_changes_nothing_and_is_not_remembered(store, tmp_path, forge):
    store_dir, src, sign, trusted = store
    state = RoutingState()
    apply_event(state, sign(announced(store_dir, src)), store_dir, trusted)
    ev = RoutingChanged(action="activate", version=None)
    if forge == "altered":  # signed, then a field changed on the way
        ev = sign(RoutingChanged(action="activate", version="policy@v1")).model_copy(update={"version": None})
    elif forge == "other_key":  # a valid signature by a key serving does not trust
        ev = signed(ev, make_key_pair(tmp_path / "attacker"))
    with pytest.raises(Untrusted, match={"unsigned": "unsigned", "altered": "bad signature",
                                         "other_key": "unknown key"}[forge]):
        apply_event(state, ev, store_dir, trusted)
    assert state.active == "policy@v1" and not state.seen(ev.event_id)
    # the event id was not taken: the real, signed event with that id still applies
    real = sign(RoutingChanged(event_id=ev.event_id, action="activate", version=None))
    assert apply_event(state, real, store_dir, trusted) == (None, None) and state.active is None


def test_a_snapshot_written_by_hand_changes_nothing(store):
    """Whoever writes the store can write routing.json: only signed events in it count."""
    store_dir, src, sign, trusted = store
    state = RoutingState()
    apply_event(state, sign(announced(store_dir, src)), store_dir, trusted)
    evil = announced(store_dir, src)  # a real folder, announced by no one
    write_snapshot(store_dir, state, "replica:1")
    data = json.loads((store_dir / SNAPSHOT).read_text())
    data["active"] = evil.version  # the fields a hand would change ...
    data["known"][evil.version] = {"version": evil.version, "path": evil.path, "manifest_sha256": evil.manifest_sha256}
    data["events"].append(evil.model_dump(mode="json"))  # ... and an unsigned event among the signed ones
    (store_dir / SNAPSHOT).write_text(json.dumps(data))
    restored = snapshot_state(store_dir, 0.0, trusted)
    assert restored.active == "policy@v1" and evil.version not in restored.known
