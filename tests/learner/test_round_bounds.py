"""A round's policy stage is bounded: by its time budget, and by much newer feedback arriving while it
runs (learner/round.py `policy_time_budget_s`, `newer_feedback_factor`). The round then goes on to the
gate with what the policy learned so far, and the feedback that arrived meanwhile is new for the next
round. DPO on the tiny model (no rollouts: the cheapest policy stage), the synthetic user of
tests/learner/simulate.py."""

from __future__ import annotations

import pytest

from feedback.event_hmac import sealed
from rlhf.models.dialogues import tiny_prompts
from tests.learner.rounds import make_learner, round_on_synthetic_feedback
from tests.learner.simulate import synthetic_events

DPO = {"steps": 4, "examples_per_step": 32, "minibatch_size": 8}


@pytest.mark.timeout(1200)
def test_a_spent_time_budget_stops_the_policy_stage_after_one_iteration(tiny_model_path, tmp_path_factory):
    lrn = make_learner(tmp_path_factory, "dpo", DPO, round_options={"policy_time_budget_s": 1e-6})
    try:
        result, _ = round_on_synthetic_feedback(lrn, thumbs_share=0.2)
        m = result.metrics
        assert m["dpo_iterations"] == 1                      # of 4: the budget was spent by the first
        assert m["dpo_cut_short"].startswith("its time budget is spent")
        assert result.status in ("published", "rejected") and "kl_candidate" in m  # the gate judged it
    finally:
        lrn.close()


@pytest.mark.timeout(1200)
def test_much_newer_feedback_cuts_the_policy_stage_short_and_counts_for_the_next_round(tiny_model_path,
                                                                                        tmp_path_factory):
    lrn = make_learner(tmp_path_factory, "dpo", DPO, round_options={"newer_feedback_factor": 0.5})
    try:
        key = lrn.settings.event_hmac_key
        first, _ = synthetic_events(lrn.engine, lrn.tokenizer, tiny_prompts(700, seed=11), seed=1)
        later, _ = synthetic_events(lrn.engine, lrn.tokenizer, tiny_prompts(700, seed=12), seed=2)
        lrn.store.ingest([(t, sealed(e, key)) for t, e in first])
        in_round = lrn.store.new_feedback_count()
        steps = []

        def arrive(stage: str, m: dict) -> None:  # while the second iteration ends, as much feedback again
            if stage == "dpo_step":
                steps.append(m["step"])
                if m["step"] == 2:
                    lrn.store.ingest([(t, sealed(e, key)) for t, e in later])

        result = lrn.run_round(arrive)
        m = result.metrics
        newer = lrn.store.new_feedback_count()
        assert newer >= 0.5 * in_round > 0
        assert steps == [1, 2] and m["dpo_iterations"] == 2  # of 4: stopped right after the feedback came
        assert f"{newer} feedback events arrived during the round" in m["dpo_cut_short"]
        assert result.status in ("published", "rejected") and "kl_candidate" in m  # the gate judged it
    finally:
        lrn.close()
