"""Named tastes of simulated users: yes/no judgements of one answer that are not about its length.

    TASTES["colour"].likes("The sky is blue.")        # True
    TASTES["sentence"].likes("Paris. It is nice.")    # False: two sentences
    TASTES["place"].likes("I would visit Kenya.")     # True
    TASTES["number"].likes("A spider has 8 legs.")    # True

`harness.user.Preference(taste="colour")` is a user with one of them. Words are matched whole and
case-insensitively, so "Reddit" is no colour and "Chilean" no place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "brown", "black", "white",
           "grey", "gray", "gold", "silver", "turquoise")
PLACES = ("France", "Italy", "Spain", "Japan", "Egypt", "Canada", "Brazil", "Kenya", "Norway", "Peru", "India",
          "Chile", "Greece", "Poland", "Mexico", "Sweden", "Turkey", "Vietnam", "Ghana", "Cuba", "China", "Germany",
          "England", "Australia", "Paris", "Rome", "Madrid", "Tokyo", "Cairo", "Ottawa", "Nairobi", "Oslo", "Lima",
          "New Delhi", "Santiago", "Athens", "Warsaw", "Mexico City", "Stockholm", "Ankara", "Hanoi", "Accra",
          "Havana", "London", "Berlin", "New York", "Beijing", "Sydney")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "twenty",
           "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred", "thousand", "million",
           "billion")
"""Number words; "one" is left out, as it is mostly a pronoun ("the one I like")."""
# A sentence ends at a run of . ! ? followed by white space or the end of the text ("3.5" does not end one).
SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def _any_word(words: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(re.escape(w.lower()) for w in words) + r")\b")


_COLOUR_WORDS, _PLACE_WORDS, _NUMBER_WORDS = _any_word(COLOURS), _any_word(PLACES), _any_word(NUMBERS)
_DIGITS = re.compile(r"\d")


def mentions_colour(text: str) -> bool:
    """The answer names a colour from COLOURS."""
    return _COLOUR_WORDS.search(text.lower()) is not None


def one_sentence(text: str) -> bool:
    """The answer is one complete sentence: starts with a capital letter, ends with . ! or ?, and has
    exactly one sentence end."""
    t = text.strip()
    return bool(t) and t[0].isupper() and t[-1] in ".!?" and len(SENTENCE_END.findall(t)) == 1


def names_place(text: str) -> bool:
    """The answer names a country or city from PLACES."""
    return _PLACE_WORDS.search(text.lower()) is not None


def mentions_number(text: str) -> bool:
    """The answer has a digit or a number word from NUMBERS."""
    return _DIGITS.search(text) is not None or _NUMBER_WORDS.search(text.lower()) is not None


@dataclass(frozen=True)
class Taste:
    name: str
    description: str
    likes: Callable[[str], bool]


TASTES = {t.name: t for t in (
    Taste("colour", "mentions a colour", mentions_colour),
    Taste("sentence", "is one complete sentence", one_sentence),
    Taste("place", "names a country or city", names_place),
    Taste("number", "mentions a number", mentions_number),
)}
