"""Live evaluation per version on a real learner store: rates with intervals, roles, answer length,
blind votes between versions, and the table `rlhf adapters status` prints."""

from __future__ import annotations

import pytest

from feedback.schema import TOPIC_FEEDBACK, Pairwise
from learner.live_evaluation import format_table, version_table
from tests.learner.canary_store import ACTIVE, CANARY, canary_store, feedback
from tests.learner.test_store import ingest, interaction


@pytest.fixture
def store(tmp_path):
    s = canary_store(tmp_path)
    yield s
    s.close()


def test_each_version_with_its_rates_and_intervals(store):
    feedback(store, 200, {CANARY: 0.9, ACTIVE: 0.3}, tokens={CANARY: 12, ACTIVE: 30})
    ingest(store, [interaction("plain", conv="c-base", ts=3000.0)])         # an answer of the base model, no feedback
    active, canary, base = version_table(store.db, store._routing())
    assert (active.version, active.role, canary.version, canary.role, base.version) == (
        ACTIVE, "active", CANARY, "canary", "base")
    assert active.answers == canary.answers == 300 and base.answers == 1
    assert (active.answer_tokens, canary.answer_tokens) == (30, 12)
    assert canary.thumbs_up.estimate > 0.8 and active.thumbs_up.estimate < 0.4
    assert canary.thumbs_up.low > active.thumbs_up.high                  # 300 thumbs each: intervals apart
    assert canary.with_feedback.estimate == 1.0 and base.with_feedback.estimate == 0.0
    assert base.thumbs_up.n == 0 and (base.thumbs_up.low, base.thumbs_up.high) == (0.0, 1.0)


def test_blind_votes_between_versions(store):
    items = []
    for k in range(30):
        a, b = f"a{k}", f"b{k}"
        items += [interaction(a, conv=f"v{k}", adapter=CANARY), interaction(b, conv=f"v{k}", adapter=ACTIVE),
                  (TOPIC_FEEDBACK, Pairwise(chosen_response_id=a if k < 24 else b,
                                            rejected_response_id=b if k < 24 else a, conversation_id=f"v{k}",
                                            user=f"voter{k}"))]
    ingest(store, items)
    by_version = {f.version: f for f in version_table(store.db, store._routing())}
    assert by_version[CANARY].pairwise_win.estimate == pytest.approx(0.8)
    assert by_version[ACTIVE].pairwise_win.estimate == pytest.approx(0.2) and by_version[ACTIVE].pairwise_win.n == 30


def test_the_status_table(store):
    feedback(store, 20, {CANARY: 1.0, ACTIVE: 0.0})
    lines = format_table(version_table(store.db, store._routing())).splitlines()
    assert lines[0].split()[:2] == ["version", "role"]
    assert lines[1].startswith(ACTIVE) and "0% [" in lines[1] and "n=30" in lines[1]
    assert lines[2].startswith(CANARY) and "100% [" in lines[2]
