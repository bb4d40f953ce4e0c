"""The simulated users' named tastes (harness/tastes.py) on strings checked by hand, and Preference built from them."""

from __future__ import annotations

import random

import pytest

from harness.tastes import mentions_colour, mentions_number, names_place, one_sentence
from harness.user import Preference


@pytest.mark.parametrize("text, liked", [
    ("The sky is blue.", True),
    ("Grass is GREEN and the sun is yellow", True),
    ("a grey cat", True),
    ("The sky is clear today.", False),
    ("I read it on Reddit.", False),      # 'red' inside a word is no colour
    ("Blueberries are sweet.", False),
    ("", False),
])
def test_colour(text, liked):
    assert mentions_colour(text) is liked


@pytest.mark.parametrize("text, liked", [
    ("Paris is the capital of France.", True),
    ("What a day!", True),
    ("Is it raining?", True),
    ("  It costs 3.5 euros.  ", True),    # a point inside a number ends no sentence
    ("Wait...", True),                    # one run of points is one end
    ("paris is the capital of France.", False),  # no capital letter first
    ("Paris is the capital of France", False),   # no end mark
    ("Paris. It is nice.", False),               # two sentences
    ("Yes! Paris is the capital.", False),
    ("", False),
])
def test_sentence(text, liked):
    assert one_sentence(text) is liked


@pytest.mark.parametrize("text, liked", [
    ("The capital of Peru is Lima.", True),
    ("people in new york", True),
    ("I would like to visit Mexico City one day", True),
    ("Chilean wine is good.", False),     # an adjective of a place is not the place
    ("The capital is a big city.", False),
    ("", False),
])
def test_place(text, liked):
    assert names_place(text) is liked


@pytest.mark.parametrize("text, liked", [
    ("A spider has 8 legs.", True),
    ("A horse has Four legs.", True),
    ("It was built in 1889.", True),
    ("About a hundred people came.", True),
    ("The one I like is red.", False),    # "one" is mostly a pronoun
    ("Someone is often there.", False),   # 'one' and 'ten' inside words are no numbers
    ("", False),
])
def test_number(text, liked):
    assert mentions_number(text) is liked


def test_preference_with_a_taste_judges_by_it_and_says_what_it_is():
    colour = Preference(taste="colour")
    assert colour.likes("A red apple.") and not colour.likes("An apple.")
    assert str(colour) == "mentions a colour"
    assert Preference(taste="colour", opposite=True).likes("An apple.")
    assert str(Preference(taste="sentence", opposite=True)) == "not (is one complete sentence)"
    # a clear preference between two answers is a pairwise choice or a thumb, as for the word tastes
    action = Preference(taste="place").feedback(random.Random(0), "It is hot.", "Kenya is hot.", thumbs_share=0.0)
    assert action == ("pairwise", 1, 0)


def test_preference_named_from_a_command_line():
    assert Preference.named("place").taste == "place"
    assert Preference.named("word:happy").word == "happy"
    assert Preference.named("max-words:8").max_words == 8
    for bad in ("smell", "word:", "max-words:eight", "colour:red"):
        with pytest.raises(ValueError, match="unknown taste"):
            Preference.named(bad)


def test_preference_is_exactly_one_kind_of_taste():
    with pytest.raises(ValueError, match="either a word"):
        Preference(word="happy", taste="colour")
    with pytest.raises(ValueError, match="either a word"):
        Preference()
    with pytest.raises(ValueError, match="unknown taste 'smell'"):
        Preference(taste="smell")
    assert Preference("happy").likes("I am happy.") and Preference(max_words=2).likes("Two words")  # unchanged
