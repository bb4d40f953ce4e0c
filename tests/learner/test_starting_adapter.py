"""The starting adapter (learner/starting_adapter.py): which sampled answers become demonstrations,
and how the prepared adapter becomes `policy@v0` once per adapter store: active, the parent of
the learner's first round and its reference, and a rollback away from the bare base model."""

from __future__ import annotations

import json

import pytest

from adapters.store import list_adapters, write_adapter
from feedback.schema import TOPIC_ADAPTERS, RoutingChanged
from learner.rollout import Sample
from learner.round import Learner
from learner.sft import SFTConfig, SFTTrainer, encode_demonstration
from learner.starting_adapter import (
    BUILD_INFO,
    circular,
    demonstrations,
    keep_answer,
    prepared,
    publish_starting_adapter,
    starting_adapter_dir,
)
from learner.store import Store
from learner.tokenization import load_tokenizer
from rlhf.settings import get_settings

PREAMBLE = [{"role": "user", "content": "Good morning!"},
            {"role": "assistant", "content": "Good morning! How can I help you today?"}]


@pytest.mark.parametrize("text, finished, kept", [
    (" The capital of Peru is Lima.", True, True),
    (" The capital of Peru is Lima.", False, False),                 # cut off at max_tokens
    (" Lima.\nIt is a big city.", True, False),                      # more than one line
    (" Lima. Question: what else?", True, False),                    # transcript markup
    ("   ", True, False),                                            # empty
    (" What is the capital of Peru?", True, False),                  # the question repeated
    (" Good morning! How can I help you today?", True, False),       # a preamble answer copied
    (" Lima is a city and Lima is a city and Lima is a city.", True, False),  # looping
    (" Peru is the capital of Peru.", True, False),                  # circular: a word of its own twice
    (" Lima, in Peru.", True, True),                                 # the question's words are not its own
])
def test_the_rules_keep_one_clean_answer(text, finished, kept):
    preamble_answers = {m["content"] for m in PREAMBLE if m["role"] == "assistant"}
    assert keep_answer("What is the capital of Peru?", text, finished, preamble_answers) is kept


@pytest.mark.parametrize("text, circle", [
    ("Bread is a type of bread.", True),      # in any case
    ("A volcano is a volcano.", True),
    ("It is a big city, a big one.", False),   # short words may repeat
    ("The capital of Peru is Lima.", False),
])
def test_an_answer_that_uses_a_word_of_its_own_twice_is_circular(text, circle):
    assert circular(text) is circle


def test_demonstrations_keep_the_answers_the_model_gave_at_least_twice_most_given_first():
    questions = ["What is the capital of Peru?", "Hello!", "What colour is milk?"]
    texts = [(0, " It is Lima.", True), (0, " Lima.", True), (0, " lima", True), (0, " It is Lima!", True),
             (0, " It is Lima.", True), (0, " Cusco.", True),
             (1, " Hello!\nQuestion: hi", True), (1, " Hello!\nQuestion: hi", True), (1, " Hello! Nice to meet you.", True),
             (2, " Milk is white.", True), (2, " Milk is red.", True), (2, " Milk is white.", False)]
    samples = [Sample(i, [], [], t, f) for i, t, f in texts]
    assert demonstrations(questions, samples, PREAMBLE) == [
        ("What is the capital of Peru?", "It is Lima."),   # 3 times, in any case and end mark
        ("What is the capital of Peru?", "Lima.")]          # twice; "Cusco." once is no lesson
    # "Hello!" has no clean answer given twice, milk's white answer was cut off once: nothing from them
    assert demonstrations(questions, samples, PREAMBLE, per_question=1) == [("What is the capital of Peru?", "It is Lima.")]
    assert ("What colour is milk?", "Milk is red.") in demonstrations(questions, samples, PREAMBLE, min_agreement=1)


@pytest.fixture
def settings(tmp_path, monkeypatch):
    for name, sub in (("RLHF_CACHE_DIR", "cache"), ("RLHF_ADAPTER_DIR", "adapters"), ("RLHF_DATA_DIR", "data")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("RLHF_MODEL", "tiny")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def prepare_tiny_starting_adapter(settings, model_path) -> None:
    """What build_starting_adapter leaves in the model cache, from one SFT step on the tiny model."""
    tok = load_tokenizer(model_path)
    trainer = SFTTrainer(model_path, tok, SFTConfig(epochs=1))
    stats = trainer.train([encode_demonstration(tok, [{"role": "user", "content": "Hello!"}], "Hello! How can I help?")])
    folder = trainer.save(starting_adapter_dir(settings, model_path))
    (folder / BUILD_INFO).write_text(json.dumps({"kept": 1, "sft": stats}))


def test_published_once_as_active_policy_v0_the_first_rounds_parent_and_rollback_returns_to_base(
        settings, tiny_model_path):
    store = Store.open(settings, 0.2)
    try:
        assert publish_starting_adapter(store, settings, tiny_model_path, "tiny") is None  # nothing prepared
        prepare_tiny_starting_adapter(settings, tiny_model_path)
        assert prepared(settings, tiny_model_path) is not None

        assert publish_starting_adapter(store, settings, tiny_model_path, "tiny") == "policy@v0"
        assert [a["version"] for a in list_adapters(settings.adapter_dir)] == ["policy@v0"]
        assert store.serving_adapter()["version"] == "policy@v0"       # active, not a canary
        sent = [json.loads(r["payload"]) for r in store.unsent_outbox()]
        assert [(e["version"], e["canary_fraction"]) for e in sent] == [("policy@v0", 0.0)]
        # the learner's first round continues from it
        learner = Learner(settings, store=store)
        version, folder = learner.serving_adapter_dir()
        assert version == "policy@v0" and (folder / "adapter_model.safetensors").is_file()
        assert learner.reference_adapter_dir(version) == (version, folder)  # and the policy's reference

        # once per store: a restart publishes nothing, and the learner's next version is v1
        assert publish_starting_adapter(store, settings, tiny_model_path, "tiny") is None
        assert write_adapter(settings.adapter_dir, "policy", folder)[0] == "policy@v1"

        store.ingest([(TOPIC_ADAPTERS, store.keys.sign(RoutingChanged(action="rollback")))])
        assert store.serving_adapter() is None                         # the bare base model
        assert learner.reference_adapter_dir(None) == (None, None)    # a round from it: the base is the reference
    finally:
        store.close()
