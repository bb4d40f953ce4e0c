"""Blind votes on the chat page (headless Chromium) against a server whose users see a canary: a
compare turn asks the active version and the canary for one answer each, shows no version until
the user votes, then shows both; the vote is one pairwise event between the two versions."""

from __future__ import annotations

import pytest

from feedback.schema import Pairwise
from harness.broker import start_broker
from harness.loras import make_lora
from harness.waiting import wait_until
from tests.serving.test_adapters import cli
from tests.serving.test_page import browser, chat_page, feedback_events, send  # noqa: F401 - `browser`: a fixture


@pytest.fixture(scope="module")
def env(tmp_path_factory, control_env):
    broker = start_broker(tmp_path_factory.mktemp("broker") / "broker.log")
    adapters = tmp_path_factory.mktemp("adapters")
    yield {"RLHF_KAFKA_BOOTSTRAP": broker.bootstrap, "RLHF_ADAPTER_DIR": str(adapters), **control_env}
    broker.stop()


@pytest.fixture(scope="module")
def canary_server(server_factory, env, tiny_model_path, tmp_path_factory):
    """v1 active, v2 a canary; every compare turn on the page is blind (RLHF_BLIND_COMPARE_SHARE=1)."""
    server = server_factory(**env, RLHF_BLIND_COMPARE_SHARE=1.0)
    d = tmp_path_factory.mktemp("loras")
    for k, start in enumerate((["--activate"], ["--canary", "0.3"])):
        r = cli(env, server, "publish", str(make_lora(tiny_model_path, d / f"lora{k}", seed=k)), "--name", "policy",
                *start)
        assert r.returncode == 0, r.stderr
    yield server
    server.stop()


@pytest.fixture
def page(browser, canary_server):  # noqa: F811 - the imported fixture
    with chat_page(browser, canary_server.url) as pg:
        pg.wait_for_function("() => document.querySelector('[data-testid=serving]').textContent.includes('trying')")
        yield pg


def test_a_blind_turn_hides_the_versions_until_the_vote(page, env):
    page.get_by_test_id("compare").check()
    send(page, "Tell me about the sea.")
    answers = page.get_by_test_id("answer")
    assert answers.count() == 2
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=prefer]')].every(b => !b.disabled)")
    labels = [answers.nth(i).get_by_test_id("adapter").inner_text() for i in range(2)]
    assert labels == ["answer 1", "answer 2"]                                  # no version shown before the vote
    assert all(answers.nth(i).get_attribute("data-adapter") is None for i in range(2))
    ids = [answers.nth(i).get_attribute("data-response-id") for i in range(2)]

    answers.nth(1).get_by_test_id("prefer").click()
    page.wait_for_function("() => document.querySelectorAll('.answer.chosen').length === 1")
    assert page.get_by_test_id("error").is_hidden(), page.get_by_test_id("error").inner_text()
    shown = [answers.nth(i).get_by_test_id("adapter").inner_text() for i in range(2)]
    assert sorted(shown) == ["policy@v1", "policy@v2"]                         # revealed after the vote

    pair = wait_until(lambda: [e for e in feedback_events(env["RLHF_KAFKA_BOOTSTRAP"], Pairwise)
                               if e.chosen_response_id == ids[1]], 20, 0.5, "the Pairwise event on rlhf.feedback")
    assert pair[0].rejected_response_id == ids[0]
    assert {pair[0].chosen_adapter, pair[0].rejected_adapter} == {"policy@v1", "policy@v2"}
    assert pair[0].chosen_adapter == shown[1]
