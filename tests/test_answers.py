"""Number extraction: the number the answer phrase introduces, and LaTeX numerals evaluated."""

import pytest

from jax_distill.problems.answers import check_answers, extract_answer

CASES = [
    ("The final answer is 12 apples per 2 days.", "12"),  # the phrase's number, not the last one
    ("Answer: 12, 13", "12"),
    ("the answer is -7 degrees", "-7"),  # negative numbers
    ("so the answer is $-\\frac{1}{2}$", "-1/2"),
    ("The answer is 1,234,567.", "1234567"),  # thousands separators
    ("\\boxed{1{,}000}", "1000"),
    ("The answer is \\$1,200.50", "1200.50"),  # units and currency around the number
    ("the answer is 0.75 kg", "0.75"),
    ("The answer is 50%.", "50"),  # percentages
    ("\\boxed{50\\%}", "50"),
    ("The answer is 3/4 of the cake", "3/4"),  # fractions
    ("\\boxed{\\frac{16}{2}}", "8"),  # LaTeX fractions and powers evaluated
    ("\\boxed{\\dfrac{3}{4}}", "3/4"),
    ("\\boxed{\\tfrac{10}{4}}", "5/2"),
    ("\\boxed{\\frac12}", "1/2"),
    ("\\boxed{2^3}", "8"),
    ("\\boxed{2^{10}}", "1024"),
    ("we get 7 and then 9\nSo she has 42 apples now.", "42"),  # no phrase: the last line's last number
]


@pytest.mark.parametrize("text, want", CASES)
def test_number_extraction(text, want):
    assert extract_answer(text, "number") == want


def test_latex_numerals_are_checked_as_numbers():
    golds = ["8", "8", "0.75", "1000", "-0.5"]
    preds = [extract_answer(t, "number") for t in
             ("\\boxed{\\frac{16}{2}}", "\\boxed{2^3}", "\\boxed{\\dfrac{3}{4}}", "\\boxed{1{,}000}", "$\\boxed{-\\frac{1}{2}}$")]
    assert check_answers([(p, g, "number") for p, g in zip(preds, golds)]) == [True] * 5
