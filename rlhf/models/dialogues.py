"""Generated conversations in the tiny model's small world (topics, adjectives, short sentences).

The tiny model is trained on `tiny_dialogues`; tests, benchmarks and simulated users ask it
`tiny_prompts`, so their questions are ones it has learnt to answer.
"""

from __future__ import annotations

import random

_TOPICS = ["cats", "dogs", "rain", "bread", "rivers", "stars", "music", "trees", "boats", "tea",
           "apples", "clocks", "snow", "birds", "books", "the sea", "gardens", "bikes"]
_ADJ = ["good", "warm", "small", "bright", "quiet", "happy", "old", "green", "soft", "blue",
        "fast", "calm", "sweet", "wild", "kind", "red", "cold", "big"]
_VERB = ["like", "see", "love", "find", "make", "keep", "want", "know", "hear", "help"]
_NOUN = ["friends", "people", "children", "the sun", "a day", "the night", "home", "water",
         "a song", "the wind", "a smile", "the town", "a story", "the hill"]
_OPEN = ["I think", "Well,", "Yes,", "Sure,", "Maybe", "Often", "Some say", "In short,"]
_Q = ["Tell me about {t}.", "What do you think of {t}?", "Do you like {t}?", "Why are {t} nice?",
      "Say something about {t}.", "Can you describe {t}?", "What is good about {t}?"]


def _sentence(rng: random.Random, topic: str) -> str:
    s = f"{rng.choice(_OPEN)} {topic} are {rng.choice(_ADJ)}"
    if rng.random() < 0.6:
        s += f" and {rng.choice(_VERB)} {rng.choice(_NOUN)}"
    if rng.random() < 0.3:
        s += f", very {rng.choice(_ADJ)}"
    return s + "."


def tiny_dialogues(n: int, seed: int = 0) -> list[list[dict]]:
    """Generated conversations the tiny model is trained on (also handy as test prompts)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.choice(_TOPICS)
        answer = " ".join(_sentence(rng, t) for _ in range(rng.randint(1, 3)))
        out.append([{"role": "user", "content": rng.choice(_Q).format(t=t)},
                    {"role": "assistant", "content": answer}])
    return out


def tiny_prompts(n: int, seed: int = 1) -> list[str]:
    """User prompts in the tiny model's domain."""
    return [d[0]["content"] for d in tiny_dialogues(n, seed)]
