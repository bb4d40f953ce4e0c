"""The starting adapter `policy@v0`: the base model's own answers under the preamble, learned by SFT.

    folder = build_starting_adapter(settings, model_path)         # `rlhf model prepare` (once per model)
    version = publish_starting_adapter(store, settings, path)     # the learner at start (once per store)

Build: the base model answers everyday questions (STARTER_QUESTIONS, none of them in
bench/first_impression.py) under the preamble with vLLM, sampled at the model card's defaults;
six answers a question; simple rules keep clean ones (ended by itself, one non-empty line, no
transcript markup, not the question or a preamble answer repeated, no looping, no word of its own
used twice as in "Mexico is the capital of Mexico."), and of those only answers the model gave at
least twice (self-consistency: its one-offs are where it is wrong, "Milk is red."); then supervised
LoRA steps (learner/sft.py) on (the question WITHOUT the preamble -> that answer). The preamble's
effect then lives in the weights and the prompt stays short. The result is kept in the model
cache (`RLHF_CACHE_DIR/<model folder>.<STARTING_RECIPE>-<hash of the preamble>`), because `rlhf
model prepare` runs without a broker.

Publish: the learner, when it starts on an adapter store that holds no `policy` version yet,
stores the prepared folder as `policy@v0` and announces it (learner/publish.py) as active, so
serving answers with it and the first round starts from it; `rlhf adapters rollback` still
returns to the bare base model.

Reference: `reference_ancestor(routing, version, corrected)` is `policy@v0` when `version` is it or
descends from it. A round that starts from such a version uses it as the policy's reference (the SFT
model of the seed documents' first stage), so its KL terms and the gate's KL budget bound the drift
from the model users started with. The starting adapter alone may be further from the bare base
than the budget allows. The walk also stops at a version that learned users' corrected answers
(`corrected`: its round took its own supervised policy as the reference, and the gate checked its
language): the rounds after it measure their KL from it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import re
import time
from collections import Counter
from pathlib import Path

from adapters.manifest import version_string
from adapters.routing_state import KnownAdapter, RoutingState
from adapters.store import list_adapters
from learner.publish import publish_adapter
from learner.rollout import RolloutEngine
from learner.sft import SFTConfig, SFTTrainer, encode_demonstration
from learner.tokenization import encode_prompt, load_tokenizer
from rlhf.models.cache import cache_root, new_build_dir, publish_build
from rlhf.models.card import (
    model_card,
    preamble_messages,
    sampling_defaults,
    with_preamble,
)

log = logging.getLogger(__name__)

STARTING_NAME = "policy"
STARTING_VERSION = version_string(STARTING_NAME, 0)   # what publish_starting_adapter publishes
STARTING_RECIPE = "policy-v0-r2"   # the cache folder's suffix; bump when the recipe below changes
BUILD_INFO = "starting_adapter.json"
MARKUP = ("Question:", "Answer:")

_COUNTRIES = ["Peru", "Kenya", "Norway", "Poland", "Sweden", "Greece", "Mexico", "India", "Argentina", "Ireland",
              "Austria", "Finland", "Denmark", "Hungary", "Thailand", "Cuba", "Chile", "Belgium"]
_THINGS = ["a lemon", "coal", "milk", "a carrot", "the sea", "blood", "a strawberry", "chocolate", "an orange",
           "a cucumber"]
_ANIMALS = ["a cat", "a horse", "a bird", "an ant", "a cow", "a chicken", "a fish", "a snake"]
_GREETINGS = ["Hello there!", "Hi!", "Hey, how are you?", "Good afternoon!", "Nice to meet you!", "Hi, how is it going?",
              "Good night!", "Thank you!", "How are you doing?", "Hello, is anyone there?"]
_HOW_TO = ["How do I make toast?", "How do I wash my hands properly?", "How do I water a houseplant?",
           "How do I cook rice?", "How do I tie my shoes?", "How can I save money?", "How do I write a thank-you note?",
           "How do I make a sandwich?", "How can I learn a new language?", "How do I clean a window?",
           "How can I stay warm in winter?", "How do I start running?"]
_WHAT_IS = ["the sun", "rain", "bread", "a library", "a volcano", "the moon", "a piano", "a river", "cheese",
            "an island"]

STARTER_QUESTIONS = (
    [f"What is the capital of {c}?" for c in _COUNTRIES]
    + [f"What language do people speak in {c}?" for c in _COUNTRIES[:10]]
    + [f"What colour is {t}?" for t in _THINGS]
    + [f"How many legs does {a} have?" for a in _ANIMALS]
    + [f"What is {w}?" for w in _WHAT_IS]
    + _GREETINGS + _HOW_TO
)


def starting_adapter_dir(settings, model_path: Path | str) -> Path:
    """Where the starting adapter of a model is kept in the model cache: one folder per recipe,
    preamble and sampling defaults, so a changed preamble makes `rlhf model prepare` build anew."""
    card = model_card(Path(model_path))
    recipe = json.dumps([STARTING_RECIPE, preamble_messages(card, settings.preamble), sampling_defaults(card)],
                        sort_keys=True)
    return cache_root() / f"{Path(model_path).name}.{STARTING_RECIPE}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"


def prepared(settings, model_path: Path | str) -> Path | None:
    folder = starting_adapter_dir(settings, model_path)
    return folder if (folder / BUILD_INFO).is_file() else None


# ------------------------------------------------------------------------------------------
# Demonstrations: which sampled answers are kept
# ------------------------------------------------------------------------------------------
def loops(text: str, n: int = 3) -> bool:
    """A word n-gram that occurs twice: the base model's way of running on."""
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def circular(text: str, min_letters: int = 4) -> bool:
    """The answer uses one of its words twice ("Mexico is the capital of Mexico.", "Bread is a type
    of bread."): a small model's way of saying nothing that looks like an answer."""
    words = [w for w in re.findall(r"[^\W\d_]+", text.lower()) if len(w) >= min_letters]
    return len(words) != len(set(words))


def keep_answer(question: str, text: str, finished: bool, preamble_answers: set[str], max_words: int = 40) -> bool:
    """One answer that ends cleanly, on one line, that is not a repeat (of the question, of a
    preamble answer, or of itself) and not circular."""
    t = text.strip()
    return (finished and bool(t) and "\n" not in t and not any(m in t for m in MARKUP)
            and len(t.split()) <= max_words and t.lower() != question.strip().lower()
            and t not in preamble_answers and not loops(t) and not circular(t))


def same_answer(text: str) -> str:
    """What two answers must share to count as the same: their words, in any case, without the end mark."""
    return " ".join(re.findall(r"\w+", text.lower()))


def demonstrations(questions: list[str], samples, preamble: list[dict], per_question: int = 2,
                   min_agreement: int = 2) -> list[tuple[str, str]]:
    """(question, answer) pairs: per question, the kept answers the model gave at least `min_agreement`
    times among its samples, most often given first, at most `per_question`. Self-consistency (Wang
    et al. 2022): a small model's most repeated answer is far more often right than a one-off, so
    "Milk is red." sampled once beside "Milk is white." three times does not become a lesson."""
    preamble_answers = {m["content"].strip() for m in preamble if m["role"] == "assistant"}
    counts: dict[int, Counter] = {}
    first_text: dict[tuple[int, str], str] = {}
    for s in samples:
        if keep_answer(questions[s.prompt_index], s.text, s.finished, preamble_answers):
            key = same_answer(s.text)
            counts.setdefault(s.prompt_index, Counter())[key] += 1
            first_text.setdefault((s.prompt_index, key), s.text.strip())
    out = []
    for i, counter in sorted(counts.items()):
        agreed = [key for key, n in counter.most_common() if n >= min_agreement][:per_question]
        out += [(questions[i], first_text[(i, key)]) for key in agreed]
    return out


# ------------------------------------------------------------------------------------------
# Build (`rlhf model prepare`) and publish (the learner at start)
# ------------------------------------------------------------------------------------------
def build_starting_adapter(settings, model_path: Path | str, *, samples_per_question: int = 6,
                           sft: SFTConfig | None = None, questions: list[str] | None = None) -> Path | None:
    """Build the starting adapter into the model cache (once); None when the model has no preamble."""
    model_path = Path(model_path)
    if (done := prepared(settings, model_path)) is not None:
        return done
    card = model_card(model_path)
    preamble = preamble_messages(card, settings.preamble)
    if not preamble:
        log.info("%s has no preamble: no starting adapter to distil from it", model_path.name)
        return None
    questions = questions or STARTER_QUESTIONS
    start = time.perf_counter()
    tok = load_tokenizer(model_path)
    sampling = sampling_defaults(card)
    engine = RolloutEngine(model_path, max_model_len=1024, max_lora_rank=settings.max_lora_rank, seed=0,
                           kv_cache_gb=settings.kv_cache_gb, stop=card.get("stop"))
    try:
        prompts = [encode_prompt(tok, with_preamble([{"role": "user", "content": q}], preamble)) for q in questions]
        samples = engine.generate(prompts, n=samples_per_question, temperature=sampling["temperature"],
                                  top_p=sampling["top_p"], max_tokens=64)  # no seed: vLLM's CPU sampler fails on one with n > 1
    finally:
        engine.close()
        del engine
        gc.collect()
    sampled_s = time.perf_counter() - start
    pairs = demonstrations(questions, samples, preamble)
    if not pairs:
        log.warning("no sampled answer passed the rules: no starting adapter")
        return None
    log.info("starting adapter: %d of %d sampled answers kept for %d questions", len(pairs), len(samples),
             len(questions))
    trainer = SFTTrainer(model_path, tok, sft)
    stats = trainer.train([encode_demonstration(tok, [{"role": "user", "content": q}], a) for q, a in pairs])
    final = starting_adapter_dir(settings, model_path)
    tmp = new_build_dir(final)
    trainer.save(tmp)
    info = {"questions": len(questions), "sampled": len(samples), "kept": len(pairs), "sampling": sampling,
            "sample_seconds": round(sampled_s, 1), "sft": stats, "seconds": round(time.perf_counter() - start, 1),
            "demonstrations": [{"question": q, "answer": a} for q, a in pairs]}
    (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2))
    publish_build(tmp, final)
    log.info("starting adapter ready in %s (%.0f s)", final, info["seconds"])
    return final


def reference_ancestor(routing: RoutingState, version: str | None, corrected: set[str]) -> KnownAdapter | None:
    """The reference of a round that starts from `version`: the nearest of it and its ancestors (through
    announced parents) that is the starting adapter or was trained on users' corrected answers
    (`corrected`: such a round took its supervised policy as the reference, and the gate checked the
    version's language). None: the base model is the reference (for the base model itself, a lineage
    that began elsewhere, e.g. a fresh LoRA after a rollback to the base, or a chain whose ancestors
    are no longer known)."""
    seen = set()
    while version in routing.known and version not in seen:
        if version == STARTING_VERSION or version in corrected:
            return routing.known[version]
        seen.add(version)
        version = routing.known[version].parent
    return None


def publish_starting_adapter(store, settings, model_path: Path | str, base_model: str) -> str | None:
    """Publish the prepared starting adapter as `policy@v0`, active, if the store holds no `policy`
    version yet; returns the version published (None: nothing to do)."""
    folder = prepared(settings, model_path)
    if folder is None or any(a["name"] == STARTING_NAME for a in list_adapters(settings.adapter_dir)):
        return None
    info = json.loads((folder / BUILD_INFO).read_text())
    ev = publish_adapter(store, settings, folder, name=STARTING_NAME, parent=None, base_model=base_model,
                         metrics={"starting_adapter": True, "demonstrations": info["kept"],
                                  "sft_epoch_losses": info["sft"]["epoch_losses"]},
                         feedback_count=0, round_id=None, number=0, canary_fraction=0.0)
    log.info("published the starting adapter %s from %s", ev.version, folder)
    return ev.version
