"""Simulated users' feedback on base-model answers, as the events a learner store ingests.

    engine = RolloutEngine(path, ...); tok = load_tokenizer(path)
    events, counts = human_feedback(engine, tok, questions, pref, limit=100)   # thumbs and pairwise choices
    events = corrected_answers(engine, tok, questions, pref, limit=50)         # demonstrations
    events, pairs = answer_pairs(engine, tok, questions, limit=200)           # two answers per prompt, unjudged
    liked = approvals(engine, tok, questions, pref, lora=None)                # the taste on fresh answers

Answers are sampled with vLLM directly (temperature 1, seeded), as the learning tests' simulated
user does (tests/learner/simulate.py), for any taste of harness/user.py. Every answer is logged as
an Interaction of one of 20 users (`user0`..`user19`, as serving would log it); feedback refers to
it by response id. Events are (topic, event) pairs, unsealed: whoever ingests them seals them with
its RLHF_EVENT_HMAC_KEY (bench/feedback_log.py keeps them in a file between a benchmark's processes).
"""

from __future__ import annotations

import random
import re
import uuid

from feedback.schema import (
    TOPIC_FEEDBACK,
    TOPIC_INTERACTIONS,
    Demonstration,
    Interaction,
    Message,
    Pairwise,
    Thumbs,
)
from harness.user import Preference
from learner.tokenization import encode_prompt

USERS = 20  # simulated users the answers are spread over (the learner splits them into training and held-out)
# What a user with a named taste (harness/tastes.py) puts first when correcting an answer.
TASTE_REMARKS = {"colour": "Yes, the sky is blue.", "place": "Paris is lovely."}


def _sample(engine, tokenizer, questions: list[str], *, n: int, seed: int, max_tokens: int, lora=None):
    """n answers per question (temperature 1), grouped by question: [[Sample, ...], ...]."""
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    samples = engine.generate(prompts, n=n, temperature=1.0, max_tokens=max_tokens, lora=lora, seed=seed)
    grouped = [[] for _ in questions]
    for s in samples:
        grouped[s.prompt_index].append(s)
    return grouped


def _logged(question: str, answers, user: str, model: str) -> list[Interaction]:
    """The Interactions serving logs for one request's answers (one conversation, one completion)."""
    conv, completion = uuid.uuid4().hex, "c_" + uuid.uuid4().hex
    return [Interaction(response_id="r_" + uuid.uuid4().hex, completion_id=completion, choice_index=k,
                        conversation_id=conv, user=user, messages=[Message(role="user", content=question)],
                        response=s.text, finish_reason="stop" if s.finished else "length", model=model,
                        sampling={"temperature": 1.0, "n": len(answers)}, prompt_tokens=len(s.prompt_ids),
                        completion_tokens=len(s.response_ids))
            for k, s in enumerate(answers)]


def human_feedback(engine, tokenizer, questions: list[str], pref: Preference, *, limit: int, seed: int = 0,
                   model: str = "", max_tokens: int = 48) -> tuple[list, dict]:
    """Two answers per question and the user's feedback on them (Preference.feedback), question after
    question until `limit` feedback events; returns (events, counts of each kind)."""
    rng = random.Random(seed)
    events, counts = [], {"pairwise": 0, "thumbs": 0, "questions": 0}
    for q, pair in zip(questions, _sample(engine, tokenizer, questions, n=2, seed=seed, max_tokens=max_tokens)):
        if counts["pairwise"] + counts["thumbs"] >= limit:
            break
        if len(pair) != 2:
            continue
        user = f"user{rng.randrange(USERS)}"
        logged = _logged(q, pair, user, model)
        events += [(TOPIC_INTERACTIONS, ev) for ev in logged]
        counts["questions"] += 1
        action = pref.feedback(rng, pair[0].text, pair[1].text)
        if action and action[0] == "pairwise":
            events.append((TOPIC_FEEDBACK, Pairwise(chosen_response_id=logged[action[1]].response_id,
                                                    rejected_response_id=logged[action[2]].response_id,
                                                    conversation_id=logged[0].conversation_id, user=user)))
        elif action:
            events.append((TOPIC_FEEDBACK, Thumbs(response_id=logged[action[1]].response_id, value=action[2],
                                                  conversation_id=logged[0].conversation_id, user=user)))
        if action:
            counts[action[0]] += 1
    return events, counts


def correction(pref: Preference, answer: str) -> str | None:
    """What a user with this taste writes instead of an answer it does not like: the answer changed as
    little as the taste needs (a remark with its word or colour or place put first, its word removed,
    cut to its number of words or to its first sentence), or None when no such change makes the taste
    like it (the opposite of a named taste, say)."""
    answer = answer.strip()
    if pref.taste == "sentence" and not pref.opposite:
        first = re.match(r".*?[.!?]+(?=\s|$)", answer)
        text = first.group(0) if first else answer.rstrip(",;:") + "."
        text = text[:1].upper() + text[1:]
    elif pref.taste in TASTE_REMARKS and not pref.opposite:
        text = f"{TASTE_REMARKS[pref.taste]} {answer}"
    elif pref.taste:
        return None
    elif pref.word and not pref.opposite:
        text = f"Yes, it is {pref.word}. {answer}"
    elif pref.word:
        text = re.sub(rf"\s*\b{re.escape(pref.word)}\b", "", answer, flags=re.IGNORECASE).strip()
    elif not pref.opposite:
        text = " ".join(answer.split()[:pref.max_words])
    else:
        text = answer + " That is what I know about it." * max(1, pref.max_words)
    return text if text and pref.likes(text) else None


def corrected_answers(engine, tokenizer, questions: list[str], pref: Preference, *, limit: int, seed: int = 1,
                      model: str = "", max_tokens: int = 48) -> list:
    """One answer per question; the user corrects those the taste does not like (`correction`), until
    `limit` corrections: the answers' Interactions and the Demonstration events."""
    rng = random.Random(seed)
    events, made = [], 0
    for q, (s,) in zip(questions, _sample(engine, tokenizer, questions, n=1, seed=seed, max_tokens=max_tokens)):
        if made >= limit:
            break
        text = None if pref.likes(s.text) else correction(pref, s.text)
        if text is None:
            continue
        user = f"user{rng.randrange(USERS)}"
        (logged,) = _logged(q, [s], user, model)
        events += [(TOPIC_INTERACTIONS, logged),
                   (TOPIC_FEEDBACK, Demonstration(response_id=logged.response_id, text=text, user=user,
                                                  conversation_id=logged.conversation_id))]
        made += 1
    return events


def answer_pairs(engine, tokenizer, questions: list[str], *, limit: int, seed: int = 2, model: str = "",
                 max_tokens: int = 48) -> tuple[list, list[tuple[Interaction, Interaction]]]:
    """Two logged answers per question, kept when their texts differ (what judge/pairs.py pairs), up to
    `limit` pairs: (the Interactions as events, the pairs)."""
    rng = random.Random(seed)
    events, pairs = [], []
    for q, two in zip(questions, _sample(engine, tokenizer, questions, n=2, seed=seed, max_tokens=max_tokens)):
        if len(pairs) >= limit:
            break
        if len(two) != 2 or two[0].text.strip() == two[1].text.strip():
            continue
        logged = _logged(q, two, f"user{rng.randrange(USERS)}", model)
        events += [(TOPIC_INTERACTIONS, ev) for ev in logged]
        pairs.append((logged[0], logged[1]))
    return events, pairs


def approvals(engine, tokenizer, questions: list[str], pref: Preference, *, lora=None, n: int = 4,
              seed: int = 10_000, max_tokens: int = 48) -> list[bool]:
    """The taste's verdict on n fresh answers (temperature 1, seeded) per question of a policy."""
    grouped = _sample(engine, tokenizer, questions, n=n, seed=seed, max_tokens=max_tokens, lora=lora)
    return [pref.likes(s.text) for answers in grouped for s in answers]


