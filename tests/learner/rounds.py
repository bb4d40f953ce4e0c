"""One learning round on the tiny model, the way every algorithm's round test runs it.

    learner = make_learner(tmp_path_factory, "rloo", RLOO_FAST)
    result, stats = round_on_synthetic_feedback(learner, thumbs_share=0.2)   # ~400 events, one round
    ann, manifest = published_adapter(learner)                               # announced and verified
    base, tuned, z = taste_of(learner, ann)                                  # "happy" base vs adapter

The simulated user prefers answers containing "happy" (tests/learner/simulate.py); its feedback on
700 prompts answered twice by the base model goes into the store as serving would have sealed it.
"""

from __future__ import annotations

import json

from adapters.store import verify_adapter
from feedback.event_hmac import sealed
from feedback.schema import TOPIC_FEEDBACK, TOPIC_INTERACTIONS, Thumbs
from learner.round import Learner, LearnerConfig, RoundResult, stage_name
from rlhf.models.dialogues import tiny_prompts
from rlhf.settings import Settings
from tests.learner.conftest import FAST_CONFIG, SPLIT_KEY
from tests.learner.simulate import WORD, adapter_vs_base, synthetic_events


def make_learner(tmp_path_factory, algorithm: str, part: dict | None = None, kl_budget: float = 5.0,
                 round_options: dict | None = None) -> Learner:
    """A learner on the tiny model with the fast test settings; `part` overrides the algorithm's stage,
    `round_options` the round's own (LearnerConfig's top-level fields)."""
    d = tmp_path_factory.mktemp(algorithm)
    settings = Settings(model="tiny", data_dir=d / "data", adapter_dir=d / "adapters", max_model_len=512,
                        kafka_bootstrap="127.0.0.1:9", kl_budget=kl_budget, rm_accuracy_floor=0.6,
                        learner_split_key=SPLIT_KEY, learner_algorithm=algorithm)
    config = {**FAST_CONFIG, **({stage_name(algorithm): part} if part else {}), **(round_options or {})}
    return Learner(settings, LearnerConfig.from_dict(config))


def round_on_synthetic_feedback(learner: Learner, thumbs_share: float, one_label_per_question: bool = False
                                ) -> tuple[RoundResult, dict]:
    """The user's feedback on 700 prompts (about 400 events), ingested, then one round. Questions come
    back; with `one_label_per_question` the down thumbs of questions that also got an up are dropped,
    so no question has both (nothing DPO could pair)."""
    events, stats = synthetic_events(learner.engine, learner.tokenizer, tiny_prompts(700, seed=11), seed=1,
                                     thumbs_share=thumbs_share)
    if one_label_per_question:
        events = single_labels(events)
        stats["thumbs"] = sum(1 for t, e in events if t == TOPIC_FEEDBACK)
    learner.store.ingest([(t, sealed(e, learner.settings.event_hmac_key)) for t, e in events])
    return learner.run_round(), stats


def single_labels(events: list) -> list:
    """The events without the down thumbs of questions that also got an up thumb."""
    question = {e.response_id: e.messages[-1].content for t, e in events if t == TOPIC_INTERACTIONS}
    thumbs = [e for t, e in events if t == TOPIC_FEEDBACK and isinstance(e, Thumbs)]
    liked = {question[e.response_id] for e in thumbs if e.value == "up"}
    return [(t, e) for t, e in events
            if not (isinstance(e, Thumbs) and e.value == "down" and question[e.response_id] in liked)]


def thumb_example(q: str, text: str, label: int) -> dict:
    """A thumb as the store gives it to a round: the prompt, the answer, 1 up or 0 down."""
    return {"type": "thumbs", "messages": [{"role": "user", "content": q}], "response": text,
            "finish_reason": "stop", "label": label, "user": "u", "client": "c"}


def published_adapter(learner: Learner) -> tuple[dict, dict]:
    """The round's one announcement in the outbox, and the manifest it names, verified against its hash."""
    (row,) = learner.store.unsent_outbox()
    ann = json.loads(row["payload"])
    assert ann["type"] == "adapter_announced"
    return ann, verify_adapter(learner.settings.adapter_dir, ann["path"], ann["manifest_sha256"])


def taste_of(learner: Learner, ann: dict) -> tuple[float, float, float]:
    """How often the base and the announced adapter write the preferred word (400 vLLM samples each,
    held-out prompts), and the z of the rise; printed for the test's log."""
    base, tuned, z = adapter_vs_base(learner.engine, learner.tokenizer, learner.settings.adapter_dir / ann["path"],
                                     ann["version"], tiny_prompts(100, seed=777))
    print(f"answers containing {WORD!r}: base {base:.3f}, {ann['version']} {tuned:.3f} (400 samples each, z {z:.1f})")
    return base, tuned, z
