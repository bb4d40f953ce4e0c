"""A simulated user with one hidden preference (harness.user): answers containing a given word are better.

Used by the learning tests without a server: `synthetic_events` samples base-model answers
with vLLM directly (n=2 per prompt) and records the user's feedback on them as events;
`preference_rate` measures how often a policy (base or adapter) writes the word. The user who
corrects answers instead rewrites each with `happy_correction`. Through a server,
`served_adapter_vs_base` measures the same as `adapter_vs_base`, sampling through serving.
"""

from __future__ import annotations

import random
import uuid

from feedback.schema import TOPIC_FEEDBACK, TOPIC_INTERACTIONS, Interaction, Message, Pairwise, Thumbs
from harness.proportions import two_proportion_z
from harness.user import Preference, liked_answers
from learner.tokenization import encode_prompt

WORD = "happy"  # the tiny model writes it in about 13 % of its answers


def happy_correction(answer: str) -> str:
    """The corrected answer of a user with the hidden taste: a happy remark, then the answer."""
    return f"Yes, birds are {WORD}. {answer.strip()}"


def synthetic_events(engine, tokenizer, questions: list[str], *, word: str = WORD, thumbs_share: float = 0.2,
                     seed: int = 0, model: str = "tiny", max_tokens: int = 48):
    """Interactions sampled from the base model (n=2 per question) and the user's feedback on them.

    Returns (events, stats) where events is a list of (topic, event) in the order a real
    stream would carry them (interactions before the feedback on them)."""
    pref = Preference(word)
    rng = random.Random(seed)
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    samples = engine.generate(prompts, n=2, temperature=1.0, max_tokens=max_tokens, seed=seed)
    events, stats = [], {"pairwise": 0, "thumbs": 0, "interactions": 0}
    for i, q in enumerate(questions):
        pair = [s for s in samples if s.prompt_index == i]
        conv, completion, user = uuid.uuid4().hex, "c_" + uuid.uuid4().hex, f"user{rng.randrange(20)}"
        rids = []
        for k, s in enumerate(pair):
            rid = "r_" + uuid.uuid4().hex
            rids.append(rid)
            events.append((TOPIC_INTERACTIONS, Interaction(
                response_id=rid, completion_id=completion, choice_index=k, conversation_id=conv, user=user,
                messages=[Message(role="user", content=q)], response=s.text,
                finish_reason="stop" if s.finished else "length", model=model, sampling={"temperature": 1.0, "n": 2},
                prompt_tokens=len(s.prompt_ids), completion_tokens=len(s.response_ids))))
            stats["interactions"] += 1
        action = pref.feedback(rng, pair[0].text, pair[1].text, thumbs_share=thumbs_share)
        if action and action[0] == "pairwise":
            events.append((TOPIC_FEEDBACK, Pairwise(chosen_response_id=rids[action[1]],
                                                    rejected_response_id=rids[action[2]],
                                                    conversation_id=conv, user=user)))
            stats["pairwise"] += 1
        elif action:
            events.append((TOPIC_FEEDBACK, Thumbs(response_id=rids[action[1]], conversation_id=conv, user=user,
                                                  value=action[2])))
            stats["thumbs"] += 1
    return events, stats


def preference_rate(engine, tokenizer, questions: list[str], *, lora=None, word: str = WORD, n: int = 4,
                    seed: int = 99, max_tokens: int = 48) -> float:
    """Share of sampled answers (temperature 1) that contain the word."""
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    samples = engine.generate(prompts, n=n, temperature=1.0, max_tokens=max_tokens, lora=lora, seed=seed)
    return sum(Preference(word).likes(s.text) for s in samples) / max(1, len(samples))


def share_z(p1: float, p2: float, n: int) -> float:
    """z of the rise from share p1 to share p2, each measured on n samples."""
    return two_proportion_z(round(p1 * n), n, round(p2 * n), n)


def adapter_vs_base(engine, tokenizer, folder, name: str, questions: list[str], n: int = 4
                    ) -> tuple[float, float, float]:
    """(base rate, the adapter's rate, z of the rise) of answers with the word, n samples per question each."""
    base = preference_rate(engine, tokenizer, questions, n=n)
    tuned = preference_rate(engine, tokenizer, questions, lora=engine.lora(folder, name), n=n)
    return base, tuned, share_z(base, tuned, n * len(questions))


def served_adapter_vs_base(url: str, version: str, questions: list[str], n: int = 4, base: str = "tiny"
                           ) -> tuple[float, float, float]:
    """`adapter_vs_base` through serving at `url`: both asked by name (seeded), n answers per question each."""
    def rate(model: str) -> float:
        hits = liked_answers(url, model, questions, Preference(WORD), n=n, seed=10_000)
        return sum(hits) / len(hits)

    base_rate, tuned = rate(base), rate(version)
    return base_rate, tuned, share_z(base_rate, tuned, n * len(questions))
