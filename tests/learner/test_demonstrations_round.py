"""Users' corrected answers teach a taste: a round whose feedback is only demonstrations (answers of
the tiny model that users rewrote to say "happy") runs the supervised stage on them, takes its
policy as the reference from there on, trains the reward model on each correction as preferred over
the answer it corrects, publishes under the default KL budget once the gate has checked the
language, and the adapter writes the word far more often than the base model on held-out prompts (z > 3)."""

from __future__ import annotations

import math
import random
import uuid

import pytest

from feedback.event_hmac import sealed
from feedback.schema import (TOPIC_ADAPTERS, TOPIC_FEEDBACK, TOPIC_INTERACTIONS, Demonstration, Interaction, Message,
                             Thumbs, parse_event)
from learner.tokenization import encode_prompt
from rlhf.models.dialogues import tiny_prompts
from tests.learner.rounds import make_learner, published_adapter, taste_of
from tests.learner.simulate import happy_correction
from tests.learner.test_dpo import DPO_FAST


@pytest.fixture(scope="module")
def learner(tiny_model_path, tmp_path_factory):
    lrn = make_learner(tmp_path_factory, "dpo", DPO_FAST)
    yield lrn
    lrn.close()


def answered(engine, tokenizer, questions: list[str], seed: int, feedback) -> list:
    """One base-model answer per question from a random user of 20, and `feedback(response_id,
    conversation_id, user, answer)`: that user's feedback event on it."""
    rng = random.Random(seed)
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    events = []
    for q, s in zip(questions, engine.generate(prompts, n=1, temperature=1.0, max_tokens=48, seed=seed)):
        conv, rid, user = uuid.uuid4().hex, "r_" + uuid.uuid4().hex, f"user{rng.randrange(20)}"
        events.append((TOPIC_INTERACTIONS, Interaction(
            response_id=rid, completion_id="c_" + conv, conversation_id=conv, user=user,
            messages=[Message(role="user", content=q)], response=s.text,
            finish_reason="stop" if s.finished else "length", model="tiny", completion_tokens=len(s.response_ids))))
        events.append((TOPIC_FEEDBACK, feedback(rid, conv, user, s.text)))
    return events


def corrected_answers(engine, tokenizer, questions: list[str], seed: int = 0) -> list:
    """Each answer with its user's correction (a happy remark, then the answer)."""
    return answered(engine, tokenizer, questions, seed, lambda rid, conv, user, text: Demonstration(
        response_id=rid, conversation_id=conv, user=user, text=happy_correction(text)))


def thumbs_up_on_answers(engine, tokenizer, questions: list[str], seed: int = 1) -> list:
    """Each answer with a thumbs up: feedback that forms no preference pair."""
    return answered(engine, tokenizer, questions, seed, lambda rid, conv, user, text: Thumbs(
        response_id=rid, conversation_id=conv, user=user, value="up"))


def corrections(engine, tokenizer) -> list:
    """The corrected answers of every test here: 300 questions of the tiny model's."""
    return corrected_answers(engine, tokenizer, tiny_prompts(300, seed=21))


def fresh_round(tmp_path_factory, make_events, kl_budget: float = 5.0):
    """One round of a new DPO learner on the events `make_events(engine, tokenizer)` returns."""
    lrn = make_learner(tmp_path_factory, "dpo", DPO_FAST, kl_budget=kl_budget)
    try:
        events = make_events(lrn.engine, lrn.tokenizer)
        lrn.store.ingest([(t, sealed(e, lrn.settings.event_hmac_key)) for t, e in events])
        return lrn.run_round()
    finally:
        lrn.close()


def test_corrected_answers_alone_teach_a_taste(learner):
    events = corrections(learner.engine, learner.tokenizer)
    learner.store.ingest([(t, sealed(e, learner.settings.event_hmac_key)) for t, e in events])
    result = learner.run_round()
    m = result.metrics
    print(f"\nround: {result.status} {result.reasons}; {m['sft_demonstrations']} corrected answers, SFT loss "
          f"{m.get('sft_loss')}; RM pairwise accuracy {m['rm_pairwise_accuracy']:.3f}; KL {m['kl_candidate']:.3f}; "
          f"perplexity {m.get('perplexity_rise', math.nan):+.3f} over the base")
    assert m["sft_demonstrations"] > 100 and m["sft_steps"] > 0
    assert m["examples_demonstration"] == m["sft_demonstrations"] and m["examples_thumbs"] == m["examples_pairwise"] == 0
    assert m["rm_pairwise_accuracy"] > 0.8      # held-out users' corrections beat the answers they corrected
    assert m["reference"] == f"supervised steps of round {result.round_id}"
    assert result.status == "published", result.reasons
    assert m["kl_candidate"] <= 5.0 and m["perplexity_rise"] <= 0.10  # the default budget; the language checked
    assert not (learner.data_dir / "sft" / f"round-{result.round_id}").exists()  # the stage's folder is cleaned up
    ann, _ = published_adapter(learner)
    _, _, z = taste_of(learner, ann)
    assert z > 3
    # the announcement back from the broker: the next round measures its KL from this version, not policy@v0
    (row,) = learner.store.unsent_outbox()
    learner.store.ingest([(TOPIC_ADAPTERS, parse_event(bytes(row["payload"])))])
    assert learner.store.corrected_versions() == {ann["version"]}
    assert learner.reference_adapter_dir(ann["version"])[0] == ann["version"]


def test_a_round_whose_kl_guard_undoes_every_update_ends_with_the_gate_verdict(tiny_model_path, tmp_path_factory):
    """The same corrections under a budget of 0.001 nats from the supervised policy: every DPO update
    goes over it, so the KL guard undoes them all; the round still ends with a verdict of the gate
    (instead of failing on an empty history), and its candidate is the supervised policy itself."""
    result = fresh_round(tmp_path_factory, corrections, kl_budget=0.001)
    m = result.metrics
    print(f"\nround: {result.status} {result.reasons}; KL {m['kl_candidate']:.6f}")
    assert m["sft_demonstrations"] > 100 and m["dpo_iterations"] == 0 and "dpo_kl_guard" in m
    assert result.status in ("published", "rejected") and m["gate_prompts"] > 0
    assert m["kl_candidate"] == pytest.approx(0.0, abs=1e-4)  # the policy is its reference


def test_corrections_with_feedback_that_forms_no_pair_make_the_supervised_policy_the_candidate(
        tiny_model_path, tmp_path_factory):
    """Corrections and thumbs up on other answers: the supervised steps learn the corrections, DPO has
    no pair left (and KTO is not run on the thumbs), so the candidate is the supervised policy, at KL 0
    from itself; the gate still decides on it."""
    result = fresh_round(tmp_path_factory, lambda engine, tok: (
        corrections(engine, tok) + thumbs_up_on_answers(engine, tok, tiny_prompts(60, seed=22))))
    m = result.metrics
    print(f"\nround: {result.status} {result.reasons}; algorithm {m['algorithm']}, KL {m['kl_candidate']}")
    assert m["sft_demonstrations"] > 100 and m["examples_thumbs"] > 0 and m["examples_pairwise"] == 0
    assert m["algorithm"] == "sft" and m["algorithm_configured"] == "dpo"
    assert m["dpo_iterations"] == 0 and "kto_iterations" not in m
    assert m["reference"] == f"supervised steps of round {result.round_id}"
    assert m["kl_candidate"] == 0.0
    assert result.status in ("published", "rejected") and m["gate_prompts"] > 0
