"""Capital-of-country questions: a fixed check that an adapter kept what the base model knew.

    CAPITAL_QUESTIONS[0]                          # ("What is the capital of France?", "France")
    names_capital("France", "It is Paris.")       # True
    capital_accuracy(["France"], ["Lyon."])       # 0.0

A capital counts when one of its accepted names appears as whole words, in any case, anywhere in
the answer ("Paris is lovely" is right, "Parisian" is not).
"""

from __future__ import annotations

import re

CAPITALS: dict[str, tuple[str, ...]] = {
    "France": ("Paris",), "Germany": ("Berlin",), "Italy": ("Rome",), "Spain": ("Madrid",),
    "Japan": ("Tokyo",), "China": ("Beijing", "Peking"), "Russia": ("Moscow",), "the United Kingdom": ("London",),
    "Egypt": ("Cairo",), "Canada": ("Ottawa",), "Greece": ("Athens",), "Norway": ("Oslo",),
    "Sweden": ("Stockholm",), "Poland": ("Warsaw",), "Austria": ("Vienna",), "Portugal": ("Lisbon",),
    "Ireland": ("Dublin",), "Peru": ("Lima",), "Argentina": ("Buenos Aires",), "Mexico": ("Mexico City",),
    "India": ("New Delhi", "Delhi"), "Thailand": ("Bangkok",), "Kenya": ("Nairobi",), "Cuba": ("Havana",),
    "Finland": ("Helsinki",), "Denmark": ("Copenhagen",), "Hungary": ("Budapest",), "Chile": ("Santiago",),
    "South Korea": ("Seoul",), "Belgium": ("Brussels",),
}
CAPITAL_QUESTIONS: list[tuple[str, str]] = [(f"What is the capital of {c}?", c) for c in CAPITALS]


def names_capital(country: str, answer: str) -> bool:
    """Whether the answer names the country's capital (whole words, any case)."""
    return any(re.search(r"\b" + re.escape(name) + r"\b", answer, re.IGNORECASE) for name in CAPITALS[country])


def capital_accuracy(countries: list[str], answers: list[str]) -> float:
    """Share of answers that name their country's capital."""
    if len(countries) != len(answers):
        raise ValueError(f"{len(countries)} countries but {len(answers)} answers")
    return sum(names_capital(c, a) for c, a in zip(countries, answers)) / len(countries) if countries else 0.0
