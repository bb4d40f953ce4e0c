"""The learner store: dedupe by event id, feedback replacement, the join, dead letters, rounds, routing;
only events with serving's HMAC or a trusted signature are stored.

Events reach the store as Kafka delivers them: `ingest(store, items)` seals interactions and feedback
with the event HMAC key and signs routing events, as serving and the learner do; the tests of the
checks call `store.ingest` with events that are not."""

from __future__ import annotations

import json
import sqlite3

import pytest

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.signing import ControlKeys, SigningKey, TrustedKeys, key_id_of, signed
from adapters.store import write_adapter
from feedback.event_hmac import sealed
from feedback.schema import (TOPIC_ADAPTERS, TOPIC_DEADLETTER, TOPIC_FEEDBACK, TOPIC_INTERACTIONS, AdapterAnnounced,
                             ControlEvent, DeadLetter, Demonstration, Interaction, Message, Pairwise, RoutingChanged,
                             Thumbs)
from learner.store import Store

EVENT_KEY = "tests: event hmac key of serving, 32+ chars"
_private = Ed25519PrivateKey.generate()
SIGNER = SigningKey(key_id_of(_private.public_key()), _private)
KEYS = ControlKeys(SIGNER, TrustedKeys({SIGNER.key_id: _private.public_key()}))


def open_store(path, **kw) -> Store:
    return Store(path, keys=KEYS, event_hmac_key=EVENT_KEY, **kw)


def ingest(store: Store, items, **kw):
    """store.ingest of events as their writers send them: sealed by serving, signed by the learner or CLI."""
    return store.ingest([(t, signed(e, SIGNER) if isinstance(e, ControlEvent) else sealed(e, EVENT_KEY))
                         for t, e in items], **kw)


def interaction(rid: str, conv: str = "c1", prompt: str = "Tell me about cats.", text: str = "Cats are warm.",
                **kw) -> tuple[str, Interaction]:
    return TOPIC_INTERACTIONS, Interaction(response_id=rid, completion_id="cmp-" + conv, conversation_id=conv,
                                           user="u", messages=[Message(role="user", content=prompt)], response=text,
                                           finish_reason="stop", model="tiny", **kw)


def thumbs(rid: str, value: str, ts: float, conv: str = "c1", user: str = "u") -> tuple[str, Thumbs]:
    return TOPIC_FEEDBACK, Thumbs(response_id=rid, conversation_id=conv, user=user, value=value, ts=ts)


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "learner.sqlite3", heldout_fraction=0.0, adapter_dir=tmp_path / "adapters")
    yield s
    s.close()


def test_redelivered_events_are_skipped(store):
    items = [interaction("r1"), thumbs("r1", "up", 1.0)]
    first = ingest(store, items)
    again = ingest(store, items)  # Kafka redelivers after a crash before the offset commit
    assert (first.new, first.duplicates, first.joined) == (2, 0, 1)
    assert (again.new, again.duplicates, again.joined) == (0, 2, 0)
    assert store.counts()["events"] == 2 and store.counts()["feedback_joined"] == 1
    assert store.new_feedback_count() == 1


def test_later_thumbs_replace_earlier_ones(store):
    ingest(store, [interaction("r1"), thumbs("r1", "up", 1.0)])
    res = ingest(store, [thumbs("r1", "down", 2.0)])
    assert res.replaced == 1
    ingest(store, [thumbs("r1", "up", 0.5)])  # an older opinion arriving late changes nothing
    ex = store.feedback_examples("train")
    assert len(ex) == 1 and ex[0]["label"] == 0
    ingest(store, [thumbs("r1", "up", 3.0, user="someone-else")])  # another user's thumbs add
    assert len(store.feedback_examples("train")) == 2


def test_feedback_waits_for_its_interaction_then_joins(store):
    res = ingest(store, [(TOPIC_FEEDBACK, Pairwise(chosen_response_id="a", rejected_response_id="b",
                                                  conversation_id="c1", user="u"))])
    assert res.pending == 1 and store.new_feedback_count() == 0
    ingest(store, [interaction("a", text="Cats are happy.")])
    assert store.counts()["feedback_pending"] == 1  # still waiting for b
    res = ingest(store, [interaction("b", text="Cats are cold.")])
    assert res.joined == 1 and store.new_feedback_count() == 1
    (ex,) = store.feedback_examples("train")
    assert (ex["chosen"], ex["rejected"], ex["messages"][0]["content"]) == (
        "Cats are happy.", "Cats are cold.", "Tell me about cats.")


def test_feedback_without_interaction_goes_to_the_dead_letter_outbox(store):
    ingest(store, [thumbs("missing", "up", 1.0)], now=1000.0)
    assert store.expire_pending(join_wait_s=300, now=1200.0) == 0
    assert store.expire_pending(join_wait_s=300, now=1301.0) == 1
    (row,) = store.unsent_outbox()
    dl = json.loads(row["payload"])
    assert row["topic"] == "rlhf.deadletter" and dl["type"] == "deadletter" and "300" in dl["reason"]
    assert json.loads(dl["payload"])["response_id"] == "missing"
    store.mark_sent([row["event_id"]])
    assert store.unsent_outbox() == [] and store.counts()["feedback_dead"] == 1


def test_pairwise_over_different_prompts_is_dead_lettered(store):
    ingest(store, [interaction("a", prompt="Tell me about cats."), interaction("b", prompt="Tell me about dogs."),
                  (TOPIC_FEEDBACK, Pairwise(chosen_response_id="a", rejected_response_id="b", conversation_id="c1"))])
    assert store.counts()["feedback_dead"] == 1 and len(store.unsent_outbox()) == 1


def test_rounds_count_new_feedback_and_aborted_rounds_give_it_back(store):
    ingest(store, [interaction(f"r{i}") for i in range(5)] + [thumbs(f"r{i}", "up", 1.0) for i in range(3)])
    assert store.new_feedback_count() == 3
    rid, hwm, n = store.start_round()
    assert n == 3
    store.finish_round(rid, "rejected", reason="test")
    assert store.new_feedback_count() == 0
    ingest(store, [thumbs("r3", "down", 1.0), thumbs("r1", "down", 2.0)])  # one new, one replacing
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
        ingest(store, [(TOPIC_ADAPTERS, AdapterAnnounced(version=version, path=rel, manifest_sha256=sha))])
    assert store.serving_adapter()["version"] == "policy@v2"
    ingest(store, [(TOPIC_ADAPTERS, RoutingChanged(action="rollback"))])
    assert store.serving_adapter()["version"] == "policy@v1"
    ingest(store, [(TOPIC_ADAPTERS, AdapterAnnounced(version="policy@v9", path="policy/v9", manifest_sha256="0" * 64))])
    assert store.serving_adapter()["version"] == "policy@v1"  # refused: not in the store
    ingest(store, [(TOPIC_ADAPTERS, RoutingChanged(action="activate", version=None))])
    assert store.serving_adapter() is None


def test_the_same_opinion_posted_again_changes_nothing(store):
    ingest(store, [interaction("r1"), interaction("r2"), thumbs("r1", "up", 1.0)], now=100.0)
    ingest(store, [(TOPIC_FEEDBACK, Pairwise(chosen_response_id="r1", rejected_response_id="r2", conversation_id="c1",
                                            user="u", ts=1.0))], now=100.0)
    rid, _, _ = store.start_round()
    store.finish_round(rid, "rejected", reason="test")
    before = store.db.execute("SELECT dedupe_key, event_id, seq, ts, received_at FROM feedback ORDER BY 1").fetchall()
    # a retry through another replica: new event ids, later timestamps, the same opinions
    res = ingest(store, [thumbs("r1", "up", 5.0),
                        (TOPIC_FEEDBACK, Pairwise(chosen_response_id="r1", rejected_response_id="r2",
                                                  conversation_id="c1", user="u", ts=5.0))], now=500.0)
    assert (res.new, res.unchanged, res.replaced, res.joined) == (2, 2, 0, 0)
    after = store.db.execute("SELECT dedupe_key, event_id, seq, ts, received_at FROM feedback ORDER BY 1").fetchall()
    assert [tuple(r) for r in after] == [tuple(r) for r in before]  # not re-sequenced, not fresher
    assert store.new_feedback_count() == 0 and store.feedback_hwm() == 2
    # a changed opinion still replaces and counts as new
    res = ingest(store, [(TOPIC_FEEDBACK, Pairwise(chosen_response_id="r2", rejected_response_id="r1",
                                                  conversation_id="c1", user="u", ts=6.0))], now=600.0)
    assert (res.replaced, res.unchanged, res.joined) == (1, 0, 1)
    assert store.new_feedback_count() == 1
    pair = [e for e in store.feedback_examples("train") if e["type"] == "pairwise"]
    assert pair[0]["chosen"] == pair[0]["rejected"] == "Cats are warm." and pair[0]["seq"] == 3


def test_client_is_kept_and_the_split_is_by_user(tmp_path):
    s = open_store(tmp_path / "learner.sqlite3", heldout_fraction=0.5, adapter_dir=tmp_path / "adapters")
    users = [f"acme:user{i}" for i in range(40)]
    items = []
    for i, user in enumerate(users):
        for k in range(2):  # two conversations per user: they land on the user's side, not each their own
            conv = f"c{i}-{k}"
            items.append((TOPIC_INTERACTIONS, Interaction(
                response_id=f"r{i}-{k}", completion_id="cmp" + conv, conversation_id=conv, user=user, client="acme",
                messages=[Message(role="user", content=f"q{i}-{k}")], response="a", model="tiny")))
            items.append((TOPIC_FEEDBACK, Thumbs(response_id=f"r{i}-{k}", conversation_id=conv, user=user,
                                                 client="acme", value="up")))
    ingest(s, items)
    train, held = s.feedback_examples("train"), s.feedback_examples("heldout")
    assert len(train) + len(held) == 80 and train and held
    assert {e["user"] for e in train}.isdisjoint({e["user"] for e in held})
    assert {e["client"] for e in train + held} == {"acme"}
    for side, rows in (("train", train), ("heldout", held)):
        prompts = s.user_prompts(side)
        assert {p["user"] for p in prompts} == {e["user"] for e in rows}
        assert {p["client"] for p in prompts} == {"acme"}
    # the fallback split by conversation puts one user's conversations on both sides
    by_conv = s.feedback_examples("heldout", by="conversation")
    assert by_conv and {e["user"] for e in by_conv} & {e["user"] for e in train}
    s.close()


def held_out_users(s: Store) -> set[str]:
    return {e["user"] for e in s.feedback_examples("heldout")}


def users_thumbs(n: int) -> list:
    items = []
    for i in range(n):
        items.append(interaction(f"r{i}", conv=f"c{i}"))
        items.append(thumbs(f"r{i}", "up", 1.0, conv=f"c{i}", user=f"acme:user{i}"))
    return items


def test_the_split_is_keyed_per_store_kept_on_reopen_and_redone_for_a_new_key(tmp_path):
    """Without RLHF_LEARNER_SPLIT_KEY each store draws its own secret key, so no one can pick
    user ids that land on the side they want; the key and the split survive a reopen."""
    splits = []
    for name in ("a", "b"):
        s = open_store(tmp_path / name / "learner.sqlite3", heldout_fraction=0.5, adapter_dir=tmp_path / "adapters")
        ingest(s, users_thumbs(40))
        splits.append(held_out_users(s))
        s.close()
    assert splits[0] != splits[1]  # 40 users at 0.5: the same split by chance has probability 2^-40
    s = open_store(tmp_path / "a" / "learner.sqlite3", heldout_fraction=0.5, adapter_dir=tmp_path / "adapters")
    assert held_out_users(s) == splits[0]
    s.close()

    keyed = [open_store(tmp_path / n / "learner.sqlite3", heldout_fraction=0.5, adapter_dir=tmp_path / "adapters",
                   split_key="operator's key") for n in ("a", "b")]  # a key set: both stores re-split by it
    assert held_out_users(keyed[0]) == held_out_users(keyed[1]) not in splits
    for s in keyed:
        s.close()


def test_user_prompts_are_distinct_per_user_newest_first_and_bounded(store):
    items = [interaction(f"r{i}", conv=f"c{i}", prompt=f"q{i % 3}", ts=float(i)) for i in range(6)]
    ingest(store, items)
    rows = store.user_prompts("train")
    assert [r["messages"][0]["content"] for r in rows] == ["q2", "q1", "q0"]  # q2 last asked at ts 5
    assert [r["messages"][0]["content"] for r in store.user_prompts("train", per_user=2)] == ["q2", "q1"]


def test_an_older_store_file_gains_client_columns_and_a_split_by_user(tmp_path):
    path = tmp_path / "learner.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE interactions (response_id TEXT PRIMARY KEY, event_id TEXT NOT NULL, completion_id TEXT NOT NULL,
            conversation_id TEXT NOT NULL, user TEXT NOT NULL, messages TEXT NOT NULL, prompt_key TEXT NOT NULL,
            response TEXT NOT NULL, finish_reason TEXT, model TEXT NOT NULL, adapter TEXT, sampling TEXT NOT NULL,
            ts REAL NOT NULL, split TEXT NOT NULL);
        CREATE TABLE feedback (dedupe_key TEXT PRIMARY KEY, event_id TEXT NOT NULL, type TEXT NOT NULL,
            user TEXT NOT NULL, conversation_id TEXT NOT NULL, response_id TEXT, value INTEGER, chosen_id TEXT,
            rejected_id TEXT, ts REAL NOT NULL, received_at REAL NOT NULL, status TEXT NOT NULL, reason TEXT,
            seq INTEGER, split TEXT NOT NULL);
        INSERT INTO interactions VALUES ('r1', 'e1', 'cmp', 'conv', 'alice', '[{"role": "user", "content": "q"}]',
            'k', 'a', 'stop', 'tiny', NULL, '{}', 1.0, 'heldout');
        INSERT INTO feedback VALUES ('thumbs:alice:r1', 'e2', 'thumbs', 'alice', 'conv', 'r1', 1, NULL, NULL, 1.0,
            1.0, 'joined', NULL, 1, 'heldout');
    """)
    old.close()
    s = open_store(path, heldout_fraction=0.0, adapter_dir=tmp_path / "adapters")  # every user trains
    (ex,) = s.feedback_examples("train")
    assert ex["client"] == "" and ex["user"] == "alice"
    assert [r["user"] for r in s.user_prompts("train")] == ["alice"]
    ingest(s, [interaction("r2", client="acme"), (TOPIC_FEEDBACK, Thumbs(response_id="r2", conversation_id="c1",
                                                                        user="u", client="acme", value="up"))])
    assert {e["client"] for e in s.feedback_examples("train")} == {"", "acme"}
    s.close()
    open_store(path, heldout_fraction=1.0, adapter_dir=tmp_path / "adapters").close()  # reopened: not re-split again
    s = open_store(path, heldout_fraction=0.0, adapter_dir=tmp_path / "adapters")
    assert len(s.feedback_examples("train")) == 2
    s.close()


def test_round_users_record_the_accounting(store):
    rid, _, _ = store.start_round()
    store.record_round_users(rid, [
        {"user": "a", "client": "k", "examples": 10, "rm_share": 0.05, "prompts": 3, "policy_share": 0.04,
         "labels": 10, "agreed": 1, "p_value": 1e-6, "suspect": True},
        {"user": "b", "client": "k", "examples": 2, "rm_share": 0.95, "prompts": 30, "policy_share": 0.96,
         "labels": 0, "agreed": 0, "p_value": None, "suspect": False}])
    rows = store.round_users(rid)
    assert [(r["user"], r["suspect"], r["examples"]) for r in rows] == [("b", False, 2), ("a", True, 10)]
    assert rows[1]["rm_share"] == pytest.approx(0.05) and rows[1]["p_value"] == pytest.approx(1e-6)
    assert store.round_users(rid + 1) == []


def dead_letters(store: Store) -> list[DeadLetter]:
    rows = store.db.execute("SELECT payload FROM outbox WHERE topic=?", (TOPIC_DEADLETTER,)).fetchall()
    return [DeadLetter.model_validate_json(r["payload"]) for r in rows]


def test_feedback_without_serving_hmac_goes_to_the_dead_letter_not_the_store(store):
    ingest(store, [interaction("r1")])
    _, unsealed = thumbs("r1", "up", 1.0)
    forged = sealed(Thumbs(response_id="r1", conversation_id="c1", user="u", value="up", ts=1.0), "not the key" * 4)
    _, real = interaction("r2")
    altered = sealed(real, EVENT_KEY).model_copy(update={"response": "words put in the model's mouth"})
    res = store.ingest([(TOPIC_FEEDBACK, unsealed), (TOPIC_FEEDBACK, forged), (TOPIC_INTERACTIONS, altered)])
    assert (res.new, res.refused) == (0, 3)
    assert store.counts()["feedback_joined"] == 0 and store.counts()["interactions"] == 1
    letters = dead_letters(store)
    assert sorted(d.reason for d in letters) == ["interaction refused: interaction event with a wrong HMAC (altered, "
                                                 "or not written by serving)",
                                                 "thumbs refused: thumbs event with a wrong HMAC (altered, or not "
                                                 "written by serving)",
                                                 "thumbs refused: thumbs event without an HMAC (not written by serving)"]
    assert all(d.origin == "learner" and d.source_topic for d in letters)
    store.ingest([(TOPIC_FEEDBACK, unsealed)])  # redelivered: one dead letter per refused event
    assert len(dead_letters(store)) == 3
    # the refused event's id was not taken: the real event with that id is stored
    assert ingest(store, [(TOPIC_FEEDBACK, unsealed)]).new == 1 and store.counts()["feedback_joined"] == 1


def test_routing_events_not_signed_by_a_trusted_key_change_nothing(store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    version, rel, sha = write_adapter(tmp_path / "adapters", "policy", src)
    ingest(store, [(TOPIC_ADAPTERS, AdapterAnnounced(version=version, path=rel, manifest_sha256=sha))])
    assert store.serving_adapter()["version"] == version
    stranger = Ed25519PrivateKey.generate()
    forged = [RoutingChanged(action="activate", version=None),  # unsigned, as anyone who can write Kafka sends it
              signed(RoutingChanged(action="rollback"), SigningKey(key_id_of(stranger.public_key()), stranger)),
              signed(RoutingChanged(action="activate", version=version), SIGNER).model_copy(update={"version": None})]
    res = store.ingest([(TOPIC_ADAPTERS, ev) for ev in forged])
    assert res.refused == 3 and store.serving_adapter()["version"] == version
    assert sorted(d.reason.split(":")[0] for d in dead_letters(store)) == [
        "routing_changed refused", "routing_changed refused", "routing_changed refused"]
    assert {d.reason.split(": ", 1)[1].split(":")[0] for d in dead_letters(store)} == {
        "unsigned", "unknown key", "bad signature"}


def demonstration(rid: str, text: str, ts: float, conv: str = "c1", user: str = "u") -> tuple[str, Demonstration]:
    return TOPIC_FEEDBACK, Demonstration(response_id=rid, conversation_id=conv, user=user, text=text, ts=ts)


def test_a_corrected_answer_is_preferred_over_the_answer_it_corrects(store):
    res = ingest(store, [demonstration("r1", "Cats purr.", 1.0)])    # before its interaction: waits
    assert res.pending == 1 and store.feedback_examples("train") == []
    ingest(store, [interaction("r1", text="Cats are warm.")])
    (ex,) = store.feedback_examples("train")
    assert (ex["type"], ex["demonstration"], ex["chosen"], ex["chosen_finish"], ex["rejected"]) == (
        "pairwise", True, "Cats purr.", "stop", "Cats are warm.")
    assert store.new_feedback_count() == 1                               # counts toward a round
    assert store.joined_by_type() == {"thumbs": 0, "pairwise": 0, "demonstration": 1}
    ingest(store, [demonstration("r1", "Cats purr when content.", 2.0)])  # a later correction replaces it
    assert [e["chosen"] for e in store.feedback_examples("train")] == ["Cats purr when content."]
    again = ingest(store, [demonstration("r1", "Cats purr when content.", 3.0)])
    assert again.unchanged == 1
