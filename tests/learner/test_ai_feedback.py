"""The AI judge's pairwise choices in the learner: stored with their source, always on the training side,
weighed at RLHF_JUDGE_WEIGHT times a person's example outside the per-user and per-client caps; and the
`source` field sealed with the rest of the event."""

from __future__ import annotations

import json

import pytest

from feedback.event_hmac import hmac_refusal, sealed
from feedback.schema import TOPIC_FEEDBACK, Pairwise, parse_event
from learner.round import feedback_kinds
from learner.weighting import capped_weights, with_ai_examples
from tests.learner.test_store import EVENT_KEY, ingest, interaction, open_store


def choice(source: str, user: str, conv: str = "c1") -> tuple[str, Pairwise]:
    return TOPIC_FEEDBACK, Pairwise(chosen_response_id="r1", rejected_response_id="r2", conversation_id=conv,
                                    user=user, source=source)


def test_ai_choices_are_stored_with_their_source_and_never_held_out(tmp_path):
    # every user held out: the users' choice is held out, the judge's still trains
    s = open_store(tmp_path / "learner.sqlite3", heldout_fraction=1.0, adapter_dir=tmp_path / "adapters")
    ingest(s, [interaction("r1", text="Cats purr."), interaction("r2", text="Dogs bark."),
               choice("user", "u"), choice("ai", "ai:judge")])
    train, held = s.feedback_examples("train"), s.feedback_examples("heldout")
    assert [(e["source"], e["user"]) for e in train] == [("ai", "ai:judge")]
    assert [(e["source"], e["user"]) for e in held] == [("user", "u")]
    assert [e["source"] for e in s.feedback_examples("heldout", by="conversation")] == ["user"]
    assert s.joined_by_source() == {"user": 1, "ai": 1}
    assert feedback_kinds(train + held)["examples_ai"] == 1 and feedback_kinds(train + held)["examples_user"] == 1
    s.close()


def test_the_judge_and_a_user_named_like_it_do_not_replace_each_other():
    ai, user = choice("ai", "")[1], choice("user", "")[1]
    assert ai.dedupe_key() != user.dedupe_key()


def test_source_is_sealed_and_older_events_without_it_still_verify():
    ev = sealed(choice("user", "u")[1], EVENT_KEY)
    data = json.loads(ev.model_dump_json())
    del data["source"]  # as serving wrote pairwise events before the field existed
    assert hmac_refusal(parse_event(json.dumps(data)), EVENT_KEY) is None
    data["source"] = "ai"  # a user's choice passed off as the judge's
    assert hmac_refusal(parse_event(json.dumps(data)), EVENT_KEY) is not None


def test_an_ai_example_weighs_the_judge_weight_times_a_person_example_outside_the_caps():
    users, clients = ["u1", "u1", "u1", "u2"], ["k"] * 4
    people = capped_weights(users, clients, max_user_share=0.5, max_client_share=1.0)
    w = with_ai_examples(people, [False, True, False, False, True, False], ai_weight=0.5)
    assert sum(w.weights) == pytest.approx(1.0)
    person = [w.weights[i] for i in (0, 2, 3, 5)]
    mean_person = sum(person) / 4
    assert w.weights[1] == pytest.approx(0.5 * mean_person) and w.weights[4] == pytest.approx(0.5 * mean_person)
    # the people keep their capped proportions: u2's one example still weighs as much as u1's three
    assert person[3] == pytest.approx(sum(person[:3]))
    assert w.user_shares == people.user_shares and "ai:judge" not in w.user_shares
    assert with_ai_examples(people, [False] * 4, 0.5).weights == pytest.approx(people.weights)
    only_ai = with_ai_examples(capped_weights([], [], max_user_share=0.5, max_client_share=1.0), [True, True], 0.5)
    assert only_ai.weights == [0.5, 0.5]
