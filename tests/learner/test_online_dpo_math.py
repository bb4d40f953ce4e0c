"""Online DPO's pairs: of each prompt's k sampled answers, the best and the worst by reward-model score,
near-ties dropped."""

from __future__ import annotations

import pytest

from learner.online_dpo import ranked_pairs


def test_two_answers_the_higher_scored_is_chosen():
    # prompt 0: answer 1 better; prompt 1: answer 2 better; prompt 2: answer 5 better
    assert ranked_pairs([0.1, 0.9, 2.0, -1.0, -0.5, 0.5], k=2, min_gap=0.1) == [(1, 0), (2, 3), (5, 4)]


def test_k_answers_the_best_over_the_worst():
    scores = [0.2, 1.5, -0.3, 0.9,    # prompt 0: best 1, worst 2
              0.0, 0.1, 0.05, 0.08]   # prompt 1: best 5, worst 4, 0.1 apart
    assert ranked_pairs(scores, k=4, min_gap=0.5) == [(1, 2)]
    assert ranked_pairs(scores, k=4, min_gap=0.1) == [(1, 2), (5, 4)]


def test_answers_closer_than_the_gap_make_no_pair():
    assert ranked_pairs([0.30, 0.35, 1.0, 1.2, 0.0, 0.0], k=2, min_gap=0.1) == [(3, 2)]
    assert ranked_pairs([0.0, 0.0, 0.0], k=3, min_gap=0.0) == []  # all equal says nothing, whatever the gap


def test_answers_must_come_in_groups_of_k():
    with pytest.raises(ValueError, match="3 consecutive answers"):
        ranked_pairs([0.1, 0.2, 0.3, 0.4], k=3, min_gap=0.0)
    with pytest.raises(ValueError, match="k >= 2"):
        ranked_pairs([0.1], k=1, min_gap=0.0)
