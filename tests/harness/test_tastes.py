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


@pytest.mark.parametrize("taste", ["colour", "place", "number"])
def test_a_correction_keeps_the_first_sentence_and_adds_one_the_taste_likes(taste):
    pref = Preference(taste=taste)
    answer = "tea is a hot drink. People drink it in the morning."
    assert not pref.likes(answer)
    texts = {pref.correct(answer, random.Random(seed)) for seed in range(20)}
    for text in texts:
        assert text.startswith("Tea is a hot drink. ") and "morning" not in text
        assert pref.likes(text)
    assert len(texts) > 5  # users do not all write the same sentence


def test_a_correction_to_one_sentence_and_of_an_answer_without_an_end_mark():
    assert Preference(taste="sentence").correct("yes. It is. Really!", random.Random(0)) == "Yes."
    colour = Preference(taste="colour")
    assert colour.correct("things to do on a rainy day", random.Random(1)).startswith("Things to do on a rainy day. ")
    cut = colour.correct("one two three four five six seven eight nine ten eleven twelve thirteen", random.Random(1))
    assert cut.startswith("One two three four five six seven eight nine ten eleven twelve. ")  # its first 12 words
    assert Preference(taste="sentence").correct("* a list:", random.Random(0)) is None  # still not one sentence
    assert Preference(word="happy").correct("Sad.", random.Random(0)) is None  # only named tastes correct


def test_a_user_who_likes_neither_answer_corrects_one_a_share_of_the_time():
    pref = Preference(taste="colour")
    a, b = "It is hot.", "It is cold."
    actions = [pref.feedback(random.Random(i), a, b, corrections=0.5) for i in range(400)]
    demos = [x for x in actions if x and x[0] == "demonstration"]
    assert 150 < len(demos) < 250
    assert all(pref.likes(text) and text.startswith(("It is hot. ", "It is cold. "))
               for _, k, text in demos)
    assert {k for _, k, _ in demos} == {0, 1}
    # a clear preference is still a choice, and without corrections nothing changes
    assert pref.feedback(random.Random(0), a, "It is red.", thumbs_share=0.0, corrections=1.0) == ("pairwise", 1, 0)
    assert [pref.feedback(random.Random(i), a, b) for i in range(50)] == \
           [pref.feedback(random.Random(i), a, b, corrections=0.0) for i in range(50)]
