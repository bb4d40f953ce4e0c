"""The first answer a person sees. How serving applies a model card (preamble before the conversation
on the base model only, card stops beside the request's, the card's sampling defaults when a request
gives none), then the chat page in headless Chromium on the default model: the first answer to
"What is the capital of France?" is one short line naming Paris.

Set RLHF_UPDATE_SCREENSHOT=1 to write that page to docs/first_answer.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from adapters.router import LoadedAdapter, Router
from harness import browser as chromium
from rlhf.models.card import MODEL_CARD
from rlhf.models.registry import resolve_model
from rlhf.settings import Settings
from serving.auth import Caller
from serving.chat import ChatService
from serving.engine import Engine
from serving.protocol import ChatCompletionRequest

ROOT = Path(__file__).resolve().parents[2]
PREAMBLE = [{"role": "user", "content": "Example question"}, {"role": "assistant", "content": "Example answer."}]
CARD = {"stop": ["\nUser:"], "preamble": PREAMBLE, "sampling": {"temperature": 0.25, "top_p": 0.8}}


@pytest.fixture(scope="module")
def carded_model(tiny_model_path, tmp_path_factory) -> Path:
    """The tiny model with a model card of its own."""
    folder = tmp_path_factory.mktemp("carded") / "tiny-with-card"
    shutil.copytree(tiny_model_path, folder)
    (folder / MODEL_CARD).write_text(json.dumps(CARD))
    return folder


def chat_service(model: Path, **settings) -> ChatService:
    """Serving's own ChatService over an Engine whose tokenizer is loaded (rendering and sizing
    need no running vLLM)."""
    s = Settings(model=str(model), **settings)
    engine = Engine(s, model, "tiny")
    from transformers import AutoTokenizer  # heavy: loaded only by the tests that render

    engine.tokenizer = AutoTokenizer.from_pretrained(model)
    return ChatService(engine, Router("tiny"), s)


def prepare(service: ChatService, **body):
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "Hello there"}], **body)
    return asyncio.run(service.prepare(req, Caller(client="")))


def rendered(service: ChatService, prep) -> str:
    return service.engine.tokenizer.decode(prep.prompt_ids)


def test_the_card_shapes_a_request_that_gives_no_sampling(carded_model):
    service = chat_service(carded_model)
    prep = prepare(service, stop="END")
    text = rendered(service, prep)
    assert text.index("Example question") < text.index("Example answer.") < text.index("Hello there")
    assert prep.messages == [{"role": "user", "content": "Hello there"}]  # the event records the conversation only
    assert (prep.params.temperature, prep.params.top_p) == (0.25, 0.8)
    assert prep.sampling["temperature"] == 0.25 and prep.sampling["top_p"] == 0.8
    assert prep.params.stop == ["END", "\nUser:"]


def test_a_requests_own_sampling_wins(carded_model):
    prep = prepare(chat_service(carded_model), temperature=0.0, top_p=1.0)
    assert (prep.params.temperature, prep.params.top_p) == (0.0, 1.0)


def test_the_operator_turns_the_preamble_off_or_replaces_it(carded_model, tmp_path):
    service = chat_service(carded_model, preamble="none")
    assert "Example" not in rendered(service, prepare(service))
    own = tmp_path / "preamble.json"
    own.write_text(json.dumps([{"role": "user", "content": "Operator's question"},
                               {"role": "assistant", "content": "Operator's answer."}]))
    service = chat_service(carded_model, preamble=str(own))
    text = rendered(service, prepare(service))
    assert "Operator's answer." in text and "Example" not in text


def test_adapters_are_served_without_the_preamble(carded_model, tmp_path):
    """Adapters (policy@v0 and what the learner trains from it) learn from bare conversations."""
    service = chat_service(carded_model)
    service.router.loaded["policy@v0"] = LoadedAdapter("policy@v0", 1, tmp_path)
    service.router.active = "policy@v0"
    prep = prepare(service)
    assert prep.adapter.version == "policy@v0"
    assert "Example" not in rendered(service, prep)
    assert "Example" in rendered(service, prepare(service, model="tiny"))  # the base model, by name


def test_a_model_without_a_card_keeps_openais_defaults(tiny_model_path):
    prep = prepare(chat_service(tiny_model_path))
    assert (prep.params.temperature, prep.params.top_p) == (1.0, 1.0)


# ------------------------------------------------------------------------------ the page, default model
@pytest.fixture(scope="module")
def gemma_server(server_factory, broker):
    resolve_model("gemma-3-270m")  # prepared once (make test runs `rlhf model prepare` first)
    return server_factory(RLHF_MODEL="gemma-3-270m", RLHF_MAX_MODEL_LEN=1024, RLHF_KAFKA_BOOTSTRAP=broker)


def test_the_pages_first_answer_names_paris_on_one_short_line(gemma_server, tmp_path):
    if not os.path.exists(chromium.CHROMIUM):
        pytest.fail(f"{chromium.CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    with sync_playwright() as p:
        browser = chromium.launch(p)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 420})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(120_000)
            page.goto(gemma_server.url + "/")
            page.get_by_test_id("input").fill("What is the capital of France?")
            page.get_by_test_id("send").click()
            page.wait_for_function("() => !document.querySelector('[data-testid=send]').disabled"
                                   " && document.querySelectorAll('[data-testid=answer]').length > 0")
            text = page.get_by_test_id("answer").last.get_by_test_id("answer-text").inner_text().strip()
            shot = tmp_path / "first_answer.png"
            page.screenshot(path=str(shot))
            if os.environ.get("RLHF_UPDATE_SCREENSHOT") == "1":
                shutil.copyfile(shot, ROOT / "docs" / "first_answer.png")
        finally:
            browser.close()
    assert not errors, errors
    assert "Paris" in text, text
    assert "\n" not in text and len(text.split()) <= 12, text  # one short line
    assert "Question:" not in text and "Answer:" not in text
