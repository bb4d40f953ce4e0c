"""The learner store: dedupe by event id, feedback replacement, the join, dead letters, rounds, routing."""

from __future__ import annotations

import json

import pytest

from adapters.store import write_adapter
from feedback.schema import (TOPIC_ADAPTERS, TOPIC_FEEDBACK, TOPIC_INTERACTIONS, AdapterAnnounced, Interaction,
                             Message, Pairwise, RoutingChanged, Thumbs)
from learner.store import Store


def interaction(rid: str, conv: str = "c1", prompt: str = "Tell me about cats.", text: str = "Cats are warm.",
                **kw) -> tuple[str, Interaction]:
    return TOPIC_INTERACTIONS, Interaction(response_id=rid, completion_id="cmp-" + conv, conversation_id=conv,
                                           user="u", messages=[Message(role="user", content=prompt)], response=text,
                                           finish_reason="stop", model="tiny", **kw)


def thumbs(rid: str, value: str, ts: float, conv: str = "c1", user: str = "u") -> tuple[str, Thumbs]:
    return TOPIC_FEEDBACK, Thumbs(response_id=rid, conversation_id=conv, user=user, value=value, ts=ts)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "learner.sqlite3", heldout_fraction=0.0, adapter_dir=tmp_path / "adapters")
    yield s
    s.close()


def test_redelivered_events_are_skipped(store):
    items = [interaction("r1"), thumbs("r1", "up", 1.0)]
    first = store.ingest(items)
    again = store.ingest(items)  # Kafka redelivers after a crash before the offset commit
    assert (first.new, first.duplicates, first.joined) == (2, 0, 1)
    assert (again.new, again.duplicates, again.joined) == (0, 2, 0)
    assert store.counts()["events"] == 2 and store.counts()["feedback_joined"] == 1
    assert store.new_feedback_count() == 1


def test_later_thumbs_replace_earlier_ones(store):
    store.ingest([interaction("r1"), thumbs("r1", "up", 1.0)])
    res = store.ingest([thumbs("r1", "down", 2.0)])
    assert res.replaced == 1
    store.ingest([thumbs("r1", "up", 0.5)])  # an older opinion arriving late changes nothing
    ex = store.feedback_examples("train")
    assert len(ex) == 1 and ex[0]["label"] == 0
    store.ingest([thumbs("r1", "up", 3.0, user="someone-else")])  # another user's thumbs add
    assert len(store.feedback_examples("train")) == 2


def test_feedback_waits_for_its_interaction_then_joins(store):
    res = store.ingest([(TOPIC_FEEDBACK, Pairwise(chosen_response_id="a", rejected_response_id="b",
                                                  conversation_id="c1", user="u"))])
    assert res.pending == 1 and store.new_feedback_count() == 0
    store.ingest([interaction("a", text="Cats are happy.")])
    assert store.counts()["feedback_pending"] == 1  # still waiting for b
    res = store.ingest([interaction("b", text="Cats are cold.")])
    assert res.joined == 1 and store.new_feedback_count() == 1
    (ex,) = store.feedback_examples("train")
    assert (ex["chosen"], ex["rejected"], ex["messages"][0]["content"]) == (
        "Cats are happy.", "Cats are cold.", "Tell me about cats.")


def test_feedback_without_interaction_goes_to_the_dead_letter_outbox(store):
    store.ingest([thumbs("missing", "up", 1.0)], now=1000.0)
    assert store.expire_pending(join_wait_s=300, now=1200.0) == 0
    assert store.expire_pending(join_wait_s=300, now=1301.0) == 1
    (row,) = store.unsent_outbox()
    dl = json.loads(row["payload"])
    assert row["topic"] == "rlhf.deadletter" and dl["type"] == "deadletter" and "300" in dl["reason"]
    assert json.loads(dl["payload"])["response_id"] == "missing"
    store.mark_sent([row["event_id"]])
    assert store.unsent_outbox() == [] and store.counts()["feedback_dead"] == 1


def test_pairwise_over_different_prompts_is_dead_lettered(store):
    store.ingest([interaction("a", prompt="Tell me about cats."), interaction("b", prompt="Tell me about dogs."),
                  (TOPIC_FEEDBACK, Pairwise(chosen_response_id="a", rejected_response_id="b", conversation_id="c1"))])
    assert store.counts()["feedback_dead"] == 1 and len(store.unsent_outbox()) == 1


def test_rounds_count_new_feedback_and_aborted_rounds_give_it_back(store):
    store.ingest([interaction(f"r{i}") for i in range(5)] + [thumbs(f"r{i}", "up", 1.0) for i in range(3)])
    assert store.new_feedback_count() == 3
    rid, hwm, n = store.start_round()
    assert n == 3
    store.finish_round(rid, "rejected", reason="test")
    assert store.new_feedback_count() == 0
    store.ingest([thumbs("r3", "down", 1.0), thumbs("r1", "down", 2.0)])  # one new, one replacing
    assert store.new_feedback_count() == 2
    store.start_round()  # killed during this round...
    assert store.abort_unfinished_rounds() == 1
    assert store.new_feedback_count() == 2  # ...so its feedback still counts as new


def test_routing_follows_rlhf_adapters(store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    vs = [write_adapter(tmp_path / "adapters", "policy", src) for _ in range(2)]
    assert store.serving_adapter() is None
    for version, rel, sha in vs:
        store.ingest([(TOPIC_ADAPTERS, AdapterAnnounced(version=version, path=rel, manifest_sha256=sha))])
    assert store.serving_adapter()["version"] == "policy@v2"
    store.ingest([(TOPIC_ADAPTERS, RoutingChanged(action="rollback"))])
    assert store.serving_adapter()["version"] == "policy@v1"
    store.ingest([(TOPIC_ADAPTERS, AdapterAnnounced(version="policy@v9", path="policy/v9", manifest_sha256="0" * 64))])
    assert store.serving_adapter()["version"] == "policy@v1"  # refused: not in the store
    store.ingest([(TOPIC_ADAPTERS, RoutingChanged(action="activate", version=None))])
    assert store.serving_adapter() is None
