"""Live evaluation per version on a real learner store: rates with intervals, roles, answer length,
blind votes between versions, the offline figures of each version's round, the table `rlhf adapters status`
prints, and the signed live table the learner sends to serving."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from adapters.signing import signature_refusal
from feedback.schema import (
    TOPIC_ADAPTERS,
    TOPIC_DEADLETTER,
    TOPIC_FEEDBACK,
    LiveFigures,
    Pairwise,
    parse_event,
)
from learner import live_evaluation
from learner.live_evaluation import format_table, offline_by_version, version_table
from learner.live_metrics import LiveEvaluation, live_versions
from rlhf.settings import Settings
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
    active, canary, base = version_table(store.db, store.routing())
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
    by_version = {f.version: f for f in version_table(store.db, store.routing())}
    assert by_version[CANARY].pairwise_win.estimate == pytest.approx(0.8)
    assert by_version[ACTIVE].pairwise_win.estimate == pytest.approx(0.2) and by_version[ACTIVE].pairwise_win.n == 30


def test_the_status_table(store):
    feedback(store, 20, {CANARY: 1.0, ACTIVE: 0.0})
    lines = format_table(version_table(store.db, store.routing())).splitlines()
    assert lines[0].split()[:2] == ["version", "role"]
    assert lines[1].startswith(ACTIVE) and "0% [" in lines[1] and "n=30" in lines[1]
    assert lines[2].startswith(CANARY) and "100% [" in lines[2]


OFFLINE = {"reward_candidate": 0.42, "reward_serving": 0.1, "reward_gain": 0.32, "reward_gain_se": 0.08,
           "kl_candidate": 1.25, "perplexity_candidate": 31.4, "perplexity_base": 29.0,
           "answer_tokens_candidate": 18.0, "answer_tokens_serving": 24.0, "win_rate_vs_parent": 0.625,
           "win_rate_vs_parent_low": 0.45, "win_rate_vs_parent_high": 0.77, "win_rate_prompts": 32}


def test_offline_figures_beside_the_live_ones(store):
    """What a round published with (its manifest's metrics): in the status table after `|`, and a version no
    one has seen yet gets a row of its own; a rejected candidate's figures are not a version's."""
    feedback(store, 20, {CANARY: 1.0, ACTIVE: 0.0})
    store.record_adapter(CANARY, "published", metrics={**OFFLINE, "rm_loss": 0.3, "kl_budget": 5.0})
    store.record_adapter("policy@v3", "published", metrics={"kl_candidate": 0.5, "reward_gain": float("nan")})
    store.record_adapter("candidate-r9", "rejected", metrics=OFFLINE)
    offline = offline_by_version(store.db)
    assert offline == {CANARY: {k: float(v) for k, v in OFFLINE.items()}, "policy@v3": {"kl_candidate": 0.5}}
    lines = format_table(version_table(store.db, store.routing()), offline).splitlines()
    assert lines[0].split("|")[1].split() == ["reward", "gain", "KL", "perplexity", "(base)", "gate", "tokens", "A/B",
                                              "vs", "parent"]
    assert lines[1].startswith(ACTIVE) and lines[1].split("|")[1].split() == ["-"] * 5  # no round made policy@v1
    canary = lines[2].split("|")[1].split()
    assert lines[2].startswith(CANARY)
    assert canary == ["+0.32", "±", "0.08", "1.25", "31.4", "(29.0)", "18", "62%", "[45-77]", "n=32"]
    assert lines[3].split() == ["policy@v3", "0", "-", "-", "-", "-", "|", "-", "0.50", "-", "-", "-"]


def test_the_learner_exports_offline_figures_and_sends_the_live_table_signed(store):
    """One tick: rlhf_version_offline per published version, and one signed LiveFigures in the outbox; the same
    figures again are not sent twice. Its copy coming back from the broker is not stored; a forged one is a
    dead letter."""
    feedback(store, 20, {CANARY: 0.5, ACTIVE: 0.5})  # no clear difference: the controller leaves routing be
    store.record_adapter(CANARY, "published", metrics=OFFLINE)
    live = LiveEvaluation(store, Settings())
    live.tick()  # what the learner's consume thread runs every 10 s
    for figure, value in OFFLINE.items():
        assert REGISTRY.get_sample_value("rlhf_version_offline", {"version": CANARY, "figure": figure}) == value
    sent = [parse_event(bytes(r["payload"])) for r in store.unsent_outbox() if r["topic"] == TOPIC_ADAPTERS]
    assert [type(e) for e in sent] == [LiveFigures]
    ev = sent[0]
    assert signature_refusal(ev, store.keys.trusted) is None
    table = version_table(store.db, store.routing())
    assert ev.versions == live_versions(table, []) and [v.version for v in ev.versions] == [ACTIVE, CANARY]
    by_version = {v.version: v for v in ev.versions}
    assert (by_version[ACTIVE].role, by_version[CANARY].role) == ("active", "canary")
    assert by_version[CANARY].thumbs_up.n == 30 and by_version[CANARY].thumbs_up.estimate == table[1].thumbs_up.estimate
    assert by_version[ACTIVE].answers == 30 and by_version[ACTIVE].rating is None  # no blind votes: no rating
    live.next_send = 0.0  # as if FIGURES_EVERY_S had passed
    assert live.send_figures(live_versions(version_table(store.db, store.routing()), [])) is None  # the same
    feedback(store, 4, {CANARY: 0.0, ACTIVE: 1.0}, seed=1)
    assert isinstance(live.send_figures(live_versions(version_table(store.db, store.routing()), [])), LiveFigures)

    res = store.ingest([(TOPIC_ADAPTERS, ev)])
    assert (res.new, res.refused) == (0, 0)
    assert store.db.execute("SELECT 1 FROM events WHERE event_id = ?", (ev.event_id,)).fetchone() is None
    forged = ev.model_copy(update={"versions": ev.versions[:1]})
    assert store.ingest([(TOPIC_ADAPTERS, forged)]).refused == 1
    letters = [parse_event(bytes(r["payload"])) for r in store.unsent_outbox() if r["topic"] == TOPIC_DEADLETTER]
    assert any(forged.event_id in d.payload and "bad signature" in d.reason for d in letters)
    routing = store.routing()
    assert (routing.active, routing.canary) == (ACTIVE, CANARY)  # routing untouched


@pytest.mark.parametrize("name", ["ANSWERS", "THUMBS", "VOTES"])
def test_the_live_queries_look_each_row_up_once(store, name):
    # The live table is computed every few seconds on a store that keeps up to a million events: a
    # subquery re-run for every interaction (the plan says CORRELATED) makes it quadratic. Measured with
    # bench/stream.py: 104 s for one table on 12k interactions, while the consume thread stored nothing.
    query = getattr(live_evaluation, name)
    plan = [row[3] for row in store.db.execute("EXPLAIN QUERY PLAN " + query, (0,) * query.count("?"))]
    assert not [step for step in plan if "CORRELATED" in step], plan
