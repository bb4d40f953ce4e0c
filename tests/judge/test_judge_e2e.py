"""The AI judge against real processes: `rlhf serve` (tiny model), the broker, `rlhf judge` and `rlhf learn`.

The judge model in the first and last test is harness/rule_judge.py, a real OpenAI-compatible HTTP
server that follows a fixed rule: the tiny model (random weights) does not answer "A" or "B" to a
judge question, and no model we can produce here reliably agrees, or disagrees, with a rule.
The middle test points the judge at our own serving (asked for a single letter, which the tiny model
then always gives), to show its questions are never logged.
"""

from __future__ import annotations

import httpx
import pytest

from feedback.schema import TOPIC_FEEDBACK, TOPIC_INTERACTIONS, Pairwise
from harness.broker import start_broker
from harness.kafka import read_topic
from harness.metrics import metric_value, scrape
from harness.waiting import wait_until
from tests.learner.conftest import LearnerProcess


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = start_broker(tmp_path_factory.mktemp("broker") / "broker.log")
    yield b.bootstrap
    b.stop()


@pytest.fixture(scope="module")
def server(server_factory, broker):
    return server_factory(RLHF_KAFKA_BOOTSTRAP=broker, RLHF_FEEDBACK_RATE_LIMIT=100000)


def ask(server, question: str, user: str, *, seed: int, store: bool = True) -> dict:
    r = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": question}], "n": 2, "max_tokens": 24, "temperature": 1.0,
        "seed": seed, "user": user, "store": store})
    r.raise_for_status()
    return r.json()


def texts(body: dict) -> list[str]:
    return [c["message"]["content"] for c in body["choices"]]


def metric(process, name: str, labels: str = "") -> float:
    return metric_value(scrape(process.url), name, labels) or 0.0


def ai_events(broker: str) -> list[Pairwise]:
    return [e for e in read_topic(broker, TOPIC_FEEDBACK) if isinstance(e, Pairwise) and e.source == "ai"]


@pytest.mark.timeout(900)
def test_the_judges_verdicts_reach_the_learner_with_source_ai(broker, server, judge_factory, rule_judge, tmp_path,
                                                             control_env):
    endpoint = rule_judge("longer")
    judge = judge_factory(RLHF_KAFKA_BOOTSTRAP=broker, RLHF_JUDGE_URL=endpoint.url + "/v1",
                          RLHF_JUDGE_MIN_AGREEMENT_SAMPLES=1000)
    (tmp_path / "learner").mkdir()
    learner = LearnerProcess(tmp_path / "learner", {**control_env, "RLHF_KAFKA_BOOTSTRAP": broker,
                                                    "RLHF_LEARNER_MIN_FEEDBACK": 100000,
                                                    "RLHF_LEARNER_INTERVAL_S": 100000})
    learner.start(300)
    try:
        answers = {}
        for i in range(4):
            body = ask(server, f"Tell me about topic number {i}.", "u1", seed=i)
            for ref, text in zip(body["rlhf"]["responses"], texts(body)):
                answers[ref["response_id"]] = text
        rows = learner.wait("the judge's choices in the learner store", lambda: learner.query(
            "SELECT chosen_id, rejected_id, user, client, split FROM feedback "
            "WHERE source = 'ai' AND status = 'joined'"), timeout=300, every=0.5)
        for chosen, rejected, user, client, split in rows:
            assert len(answers[chosen]) >= len(answers[rejected])  # the rule: the longer answer
            assert (user, client, split) == ("ai:judge", "judge", "train")
        learner.wait("the learner's per-source gauge", lambda: metric(
            learner, "rlhf_learner_feedback_by_source", 'source="ai"') >= len(rows), timeout=60, every=0.5)
        assert metric(judge, "rlhf_judge_events_total") >= len(rows)
        assert metric(judge, "rlhf_judge_paused") == 0
        assert metric(judge, "rlhf_judge_verdicts_total", 'outcome="decided"') >= len(rows)
    finally:
        learner.stop()


@pytest.mark.timeout(600)
def test_the_judges_questions_to_our_serving_are_not_logged(broker, server, judge_factory):
    unlogged = ask(server, "A question that must not be logged.", "u2", seed=1, store=False)
    assert unlogged["rlhf"]["responses"] == []  # nothing to give feedback on: it was never logged
    judge = judge_factory("judge-on-serving", RLHF_KAFKA_BOOTSTRAP=broker, RLHF_PORT=server.port,
                          RLHF_JUDGE_MIN_AGREEMENT_SAMPLES=1000)  # RLHF_JUDGE_URL unset: our serving
    logged = [ask(server, f"Question {i} for the judge on serving.", "u2", seed=100 + i) for i in range(2)]
    wait_until(lambda: sum(metric_value(scrape(judge.url), "rlhf_judge_verdicts_total", f'outcome="{o}"') or 0
                           for o in ("decided", "inconsistent", "unparsed", "error")) >= 2, 300, 0.5,
               "the judge asking our serving")
    # asked for one letter (structured outputs, our serving's vLLM extension), the tiny model always gives one
    assert metric(judge, "rlhf_judge_verdicts_total", 'outcome="error"') == 0
    assert metric(judge, "rlhf_judge_verdicts_total", 'outcome="unparsed"') == 0
    # every interaction serving logged is a user's: serving publishes before it answers, so any the
    # judge's questions had made would be on the topic by now
    ids = {r["response_id"] for b in logged for r in b["rlhf"]["responses"]}
    mine = [e for e in read_topic(broker, TOPIC_INTERACTIONS) if e.user == "u2"]
    assert {e.response_id for e in mine} == ids
    assert all(not e.messages[0].content.startswith("You compare two answers")
               for e in read_topic(broker, TOPIC_INTERACTIONS))


@pytest.mark.timeout(900)
def test_a_judge_that_disagrees_with_users_pauses(broker, server, judge_factory, rule_judge):
    endpoint = rule_judge("shorter")  # users below prefer the longer answer: this judge always disagrees
    judge = judge_factory("contrary", RLHF_KAFKA_BOOTSTRAP=broker, RLHF_JUDGE_URL=endpoint.url + "/v1",
                          RLHF_JUDGE_MIN_AGREEMENT_SAMPLES=5, RLHF_JUDGE_AGREEMENT_FLOOR=0.6)
    sent = 0

    def users_choose(n: int, offset: int) -> None:
        """Users pick the longer of two answers through POST /v1/feedback, `n` times."""
        nonlocal sent
        target, i = sent + n, offset
        while sent < target:
            body = ask(server, f"What do you think of item {i}?", f"v{i % 3}", seed=1000 + i)
            i += 1
            (a, b), refs = texts(body), [{k: r[k] for k in ("response_id", "feedback_token")}
                                         for r in body["rlhf"]["responses"]]
            if len(a) == len(b):
                continue
            chosen, rejected = (refs[0], refs[1]) if len(a) > len(b) else (refs[1], refs[0])
            fb = {"type": "pairwise", "chosen": chosen, "rejected": rejected, "user": f"v{(i - 1) % 3}"}
            if sent == 0:  # a client cannot pass its choice off as the judge's
                refused = httpx.post(server.url + "/v1/feedback", json={**fb, "source": "ai"}, timeout=30)
                assert refused.status_code == 400, refused.text  # an unknown field, as any other
            r = httpx.post(server.url + "/v1/feedback", json=fb, timeout=30)
            assert r.status_code == 202, r.text
            sent += 1

    users_choose(6, 0)
    wait_until(lambda: metric(judge, "rlhf_judge_paused") == 1, 300, 0.5, "the judge to pause")
    assert metric(judge, "rlhf_judge_agreement_samples") >= 5
    assert metric(judge, "rlhf_judge_agreement") == 0.0
    published = metric(judge, "rlhf_judge_events_total")
    on_topic = len(ai_events(broker))

    # more answers to judge and more users' choices: the judge keeps measuring, publishes nothing
    samples = metric(judge, "rlhf_judge_agreement_samples")
    users_choose(3, 100)
    wait_until(lambda: metric(judge, "rlhf_judge_agreement_samples") >= samples + 3, 300, 0.5,
               "the judge to measure the new choices")
    assert metric(judge, "rlhf_judge_paused") == 1
    assert metric(judge, "rlhf_judge_events_total") == published
    assert len(ai_events(broker)) == on_topic
    health = httpx.get(judge.url + "/healthz", timeout=5).json()
    assert health["paused"] is True and health["agreement"] == 0.0
