"""Plain questions a small base model can answer, drawn from a few templates.

    questions(300, seed=1)      # "What is the capital of Peru?", "How many legs does a cow have?", ...
"""

from __future__ import annotations

import random

COUNTRIES = ["France", "Italy", "Spain", "Japan", "Egypt", "Canada", "Brazil", "Kenya", "Norway", "Peru",
             "India", "Chile", "Greece", "Poland", "Mexico", "Sweden", "Turkey", "Vietnam", "Ghana", "Cuba"]
THINGS = ["the sky", "grass", "snow", "a banana", "the sea", "coal", "a lemon", "blood", "milk", "a carrot"]
ANIMALS = ["a cat", "a dog", "a spider", "a horse", "a bird", "an ant", "a fish", "a cow", "a snake", "a frog"]
TOPICS = ["the sun", "rain", "bread", "music", "trees", "the moon", "winter", "cheese", "rivers", "books"]


def questions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    forms = [lambda: f"What is the capital of {rng.choice(COUNTRIES)}?",
             lambda: f"What color is {rng.choice(THINGS)}?",
             lambda: f"How many legs does {rng.choice(ANIMALS)} have?",
             lambda: f"Tell me something about {rng.choice(TOPICS)}.",
             lambda: f"What language do people speak in {rng.choice(COUNTRIES)}?",
             lambda: f"Why do people like {rng.choice(TOPICS)}?"]
    return [rng.choice(forms)() for _ in range(n)]
