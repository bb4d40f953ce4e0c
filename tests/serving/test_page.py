"""The chat page in a real headless Chromium (Debian's `chromium`, driven by Playwright) against the
session's real server and broker: chat, thumbs up, compare mode; the events are read back from
the topics with an independent consumer. Then against a server that wants API keys: the page
asks for one, keeps it, chats and sends feedback with it, and asks again when it is refused.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
from playwright.sync_api import sync_playwright

from feedback.schema import Demonstration, Interaction, Pairwise, Thumbs
from harness import browser as chromium
from harness.kafka import read_topic
from harness.waiting import wait_until
from tests.serving.conftest import rlhf_keys


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(chromium.CHROMIUM):
        pytest.fail(f"{chromium.CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    with sync_playwright() as p:
        b = chromium.launch(p)
        yield b
        b.close()


@contextmanager
def chat_page(browser, url: str | None, expected_error: str | None = None):
    """A fresh browser context on the chat page at `url` (None: not opened yet); fails the test
    on any page error or console error (except messages containing `expected_error`)."""
    context = browser.new_context()
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and not (
        expected_error and expected_error in m.text) else None)
    pg.set_default_timeout(60_000)
    if url is not None:
        pg.goto(url + "/")
    yield pg
    context.close()
    assert not errors, errors


@pytest.fixture
def page(browser, server):
    with chat_page(browser, server.url) as pg:
        yield pg


def send(page, text: str) -> None:
    page.get_by_test_id("input").fill(text)
    page.get_by_test_id("send").click()
    page.wait_for_function("() => !document.querySelector('[data-testid=send]').disabled"
                           " && document.querySelectorAll('[data-testid=answer]').length > 0")


def feedback_events(broker, kind):
    return [e for e in read_topic(broker, "rlhf.feedback") if isinstance(e, kind)]


def test_chat_then_thumbs_up_reaches_the_feedback_topic(page, broker):
    assert page.title() == "rlhf chat"
    page.wait_for_function("() => document.querySelector('[data-testid=serving]').dataset.active !== undefined")
    assert "answering with base model (tiny)" in page.get_by_test_id("serving").inner_text()

    send(page, "Tell me about cats.")
    answer = page.get_by_test_id("answer").last
    assert answer.get_by_test_id("answer-text").inner_text().strip()
    assert answer.get_by_test_id("adapter").inner_text() == "base model (tiny)"
    assert page.get_by_test_id("error").is_hidden()
    response_id = answer.get_attribute("data-response-id")
    user = page.evaluate("localStorage.getItem('rlhf-user-id')")
    assert response_id.startswith("r_") and user.startswith("web-")

    answer.get_by_test_id("thumbs-up").click()
    page.wait_for_function("() => document.querySelector('[data-testid=feedback-status]').textContent !== ''")
    assert answer.get_by_test_id("thumbs-up").get_attribute("aria-pressed") == "true"
    assert page.get_by_test_id("error").is_hidden(), page.get_by_test_id("error").inner_text()

    thumbs = wait_until(lambda: [e for e in feedback_events(broker, Thumbs) if e.response_id == response_id],
                        20, 0.5, "the Thumbs event on rlhf.feedback")
    assert len(thumbs) == 1
    assert thumbs[0].value == "up" and thumbs[0].user == user

    # The same browser keeps its id: a reload shows the same user.
    page.reload()
    assert page.evaluate("localStorage.getItem('rlhf-user-id')") == user


def test_compare_mode_records_a_pairwise_event(page, broker):
    page.get_by_test_id("compare").check()
    send(page, "What do you think of rain?")
    answers = page.get_by_test_id("answer")
    assert answers.count() == 2
    left, right = answers.nth(0), answers.nth(1)
    ids = [left.get_attribute("data-response-id"), right.get_attribute("data-response-id")]
    assert ids[0] != ids[1] and ids[0].rsplit("_", 1)[0] == ids[1].rsplit("_", 1)[0]  # two choices of one request
    assert right.get_by_test_id("adapter").inner_text() == "base model (tiny)"
    chosen_text = right.get_by_test_id("answer-text").inner_text()

    right.get_by_test_id("prefer").click()
    page.wait_for_function("() => document.querySelectorAll('.answer.chosen').length === 1")
    assert page.get_by_test_id("error").is_hidden(), page.get_by_test_id("error").inner_text()
    assert left.get_by_test_id("prefer").is_disabled()

    pair = wait_until(lambda: [e for e in feedback_events(broker, Pairwise) if e.chosen_response_id == ids[1]],
                      20, 0.5, "the Pairwise event on rlhf.feedback")
    assert pair[0].rejected_response_id == ids[0]

    # The conversation goes on with the preferred answer.
    page.get_by_test_id("compare").uncheck()
    send(page, "And snow?")
    follow_id = page.get_by_test_id("answer").last.get_attribute("data-response-id")
    inter = wait_until(lambda: [e for e in read_topic(broker, "rlhf.interactions")
                                if isinstance(e, Interaction) and e.response_id == follow_id], 20, 0.5, "interaction")
    assert [m.role for m in inter[0].messages] == ["user", "assistant", "user"]
    assert inter[0].messages[1].content.strip() == chosen_text.strip()


def test_improve_this_answer_sends_one_demonstration_and_the_chat_goes_on_with_it(page, broker):
    send(page, "What is the capital of France?")
    answer = page.get_by_test_id("answer").last
    response_id = answer.get_attribute("data-response-id")
    answer.get_by_test_id("improve").click()
    area = answer.get_by_test_id("improve-text")
    assert area.input_value() == answer.get_by_test_id("answer-text").inner_text()  # starts from the answer
    area.fill("The capital of France is Paris.")
    answer.get_by_test_id("improve-send").click()
    page.wait_for_function("() => document.querySelector('.answer.corrected') !== null")
    assert page.get_by_test_id("error").is_hidden(), page.get_by_test_id("error").inner_text()
    assert answer.get_by_test_id("answer-text").inner_text() == "The capital of France is Paris."
    assert answer.get_by_test_id("improve-text").count() == 0   # the editor closed

    demos = wait_until(lambda: [e for e in feedback_events(broker, Demonstration) if e.response_id == response_id],
                       20, 0.5, "the Demonstration event on rlhf.feedback")
    assert len(demos) == 1 and demos[0].text == "The capital of France is Paris."

    send(page, "And of Italy?")  # the conversation goes on with the corrected answer
    follow_id = page.get_by_test_id("answer").last.get_attribute("data-response-id")
    inter = wait_until(lambda: [e for e in read_topic(broker, "rlhf.interactions")
                                if isinstance(e, Interaction) and e.response_id == follow_id], 20, 0.5, "interaction")
    assert inter[0].messages[1].content == "The capital of France is Paris."
    assert len([e for e in feedback_events(broker, Demonstration) if e.response_id == response_id]) == 1


def test_compare_two_models_pairs_answers_of_two_requests(page, broker):
    """"second answer from" a named model: two requests with the same messages, one answer each;
    the feedback route accepts the pair because both tokens carry the same prompt digest."""
    page.get_by_test_id("compare").check()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=compare-with] option').length > 1")
    page.get_by_test_id("compare-with").select_option("tiny")
    send(page, "Do you like music?")
    answers = page.get_by_test_id("answer")
    assert answers.count() == 2
    ids = [answers.nth(i).get_attribute("data-response-id") for i in range(2)]
    assert ids[0].rsplit("_", 1)[0] != ids[1].rsplit("_", 1)[0]  # two completions
    answers.nth(0).get_by_test_id("prefer").click()
    page.wait_for_function("() => document.querySelectorAll('.answer.chosen').length === 1")
    assert page.get_by_test_id("error").is_hidden(), page.get_by_test_id("error").inner_text()
    pair = wait_until(lambda: [e for e in feedback_events(broker, Pairwise) if e.chosen_response_id == ids[0]],
                      20, 0.5, "the Pairwise event on rlhf.feedback")
    assert pair[0].rejected_response_id == ids[1]


# ----------------------------------------------------------------------------- with API keys
REFUSED = "the server responded with a status of 401"  # Chromium logs each refused call; expected here


@pytest.fixture
def keyed_page(browser, api_key_server):
    with chat_page(browser, None, REFUSED) as pg:
        yield pg


def test_the_page_asks_for_an_api_key_then_chats_and_sends_feedback(keyed_page, api_key_server, new_client,
                                                                    keys_file, broker):
    page = keyed_page
    key = new_client("web-page")
    page.goto(api_key_server.url + "/")
    page.get_by_test_id("auth").wait_for(state="visible")  # the first call was refused: it asks
    assert "needs an API key" in page.get_by_test_id("auth-reason").inner_text()
    page.get_by_test_id("auth-key").fill(key)
    page.get_by_test_id("auth-save").click()
    page.wait_for_function("() => document.querySelector('[data-testid=serving]').dataset.active !== undefined")
    assert page.get_by_test_id("auth").is_hidden()
    assert page.evaluate("localStorage.getItem('rlhf-credential')") == key

    send(page, "Tell me about dogs.")
    answer = page.get_by_test_id("answer").last
    assert page.get_by_test_id("error").is_hidden(), page.get_by_test_id("error").inner_text()
    response_id = answer.get_attribute("data-response-id")
    answer.get_by_test_id("thumbs-up").click()
    page.wait_for_function("() => document.querySelector('[data-testid=feedback-status]').textContent !== ''")
    assert page.get_by_test_id("error").is_hidden(), page.get_by_test_id("error").inner_text()
    thumbs = wait_until(lambda: [e for e in feedback_events(broker, Thumbs) if e.response_id == response_id],
                        20, 0.5, "the Thumbs event on rlhf.feedback")
    browser_user = page.evaluate("localStorage.getItem('rlhf-user-id')")
    assert (thumbs[0].user, thumbs[0].client) == (f"web-page:{browser_user}", "web-page")

    # The key is kept: a reload asks nothing.
    page.reload()
    page.wait_for_function("() => document.querySelector('[data-testid=serving]').dataset.active !== undefined")
    assert page.get_by_test_id("auth").is_hidden()

    # Refused (revoked): it asks again, and a new key works.
    assert rlhf_keys(keys_file, "revoke", "web-page").returncode == 0
    page.get_by_test_id("input").fill("Are you still there?")
    page.get_by_test_id("send").click()
    page.get_by_test_id("auth").wait_for(state="visible", timeout=20_000)
    assert "refused" in page.get_by_test_id("auth-reason").inner_text()
    page.get_by_test_id("auth-key").fill(new_client("web-page-2"))
    page.get_by_test_id("auth-save").click()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=answer]').length === 1"  # since the reload
                           " && !document.querySelector('[data-testid=send]').disabled")
    assert page.get_by_test_id("error").is_hidden(), page.get_by_test_id("error").inner_text()
    assert page.get_by_test_id("answer").last.get_attribute("data-response-id").startswith("r_")
