import pytest

from harness.capitals import CAPITAL_QUESTIONS, CAPITALS, capital_accuracy, names_capital


@pytest.mark.parametrize("country, answer, right", [
    ("France", "The capital of France is Paris.", True),
    ("France", "paris", True),                        # any case
    ("France", "It is a Parisian city.", False),      # whole words only
    ("France", "Lyon.", False),
    ("India", "Delhi.", True),                         # one of several accepted names
    ("Mexico", "Mexico.", False),                      # the country is not its capital
    ("Argentina", "Buenos Aires, of course.", True),
])
def test_an_answer_names_the_capital_as_whole_words(country, answer, right):
    assert names_capital(country, answer) is right


def test_accuracy_is_the_share_of_answers_naming_their_capital():
    assert capital_accuracy(["France", "Peru", "Japan", "Kenya"], ["Paris", "Lima!", "Kyoto", ""]) == 0.5
    assert capital_accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="2 countries but 1 answers"):
        capital_accuracy(["France", "Peru"], ["Paris"])


def test_every_country_has_one_question():
    assert [c for _, c in CAPITAL_QUESTIONS] == list(CAPITALS)
    assert all(q == f"What is the capital of {c}?" for q, c in CAPITAL_QUESTIONS)
