"""Named tastes of simulated users: yes/no judgements of one answer that are not about its length.

    TASTES["colour"].likes("The sky is blue.")        # True
    TASTES["sentence"].likes("Paris. It is nice.")    # False: two sentences
    TASTES["place"].likes("I would visit Kenya.")     # True
    TASTES["number"].likes("A spider has 8 legs.")    # True

    TASTES["colour"].correct("Tea is a drink. It is hot.", random.Random(0))
    # -> e.g. "Tea is a drink. It makes me think of green."   (a user's corrected answer)

`harness.user.Preference(taste="colour")` is a user with one of them. Words are matched whole and
case-insensitively, so "Reddit" is no colour and "Chilean" no place. `correct` is how a user with
the taste rewrites an answer they do not like: the answer's first sentence, then a short sentence of
their own that has what they like (for `sentence`, the first sentence alone).
"""

from __future__ import annotations

import random
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


def first_sentence(text: str) -> str:
    """The text's first sentence, with its end mark; a text without one: its first 12 words and a point."""
    t = " ".join(text.split())
    end = SENTENCE_END.search(t)
    if end:
        return t[:end.end()]
    words = t.split()[:12] or ["Well"]
    return " ".join(words).rstrip(",;:-") + "."


def with_a_sentence(templates: tuple[str, ...], words: tuple[str, ...]) -> Callable[[str, random.Random], str]:
    """A correction that keeps the answer's first sentence and adds one of `templates` filled with one of `words`."""
    def correct(answer: str, rng: random.Random) -> str:
        first = first_sentence(answer)
        return f"{first[0].upper()}{first[1:]} {rng.choice(templates).format(w=rng.choice(words))}"
    return correct


def to_one_sentence(answer: str, rng: random.Random) -> str:
    first = first_sentence(answer)
    return first[0].upper() + first[1:]


COLOUR_SENTENCES = ("It makes me think of {w}.", "Picture it in {w}.", "My favourite colour for it is {w}.",
                    "I see it as {w}.")
PLACE_SENTENCES = ("People in {w} would agree.", "I learned that in {w}.", "It is the same in {w}.",
                   "Think of {w}.")
NUMBER_SENTENCES = ("Give it {w} minutes.", "That is tip number {w}.", "I would rate it {w} out of ten.",
                    "It takes about {w} tries.")
# Colours, places and numbers whose words the tastes match, in the forms a user would write them
COLOUR_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey", "gold")
PLACE_WORDS = ("France", "Italy", "Japan", "Kenya", "Peru", "Norway", "Canada", "Mexico", "Paris", "Tokyo", "Cairo",
               "London")
NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twenty")


@dataclass(frozen=True)
class Taste:
    name: str
    description: str
    likes: Callable[[str], bool]
    correct: Callable[[str, random.Random], str]


TASTES = {t.name: t for t in (
    Taste("colour", "mentions a colour", mentions_colour, with_a_sentence(COLOUR_SENTENCES, COLOUR_WORDS)),
    Taste("sentence", "is one complete sentence", one_sentence, to_one_sentence),
    Taste("place", "names a country or city", names_place, with_a_sentence(PLACE_SENTENCES, PLACE_WORDS)),
    Taste("number", "mentions a number", mentions_number, with_a_sentence(NUMBER_SENTENCES, NUMBER_WORDS)),
)}
