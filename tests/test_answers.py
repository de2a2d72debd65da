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
    ("\\boxed{12 \\text{ apples per } 2 \\text{ days}}", "12"),  # a box, too, holds the answer first
    ("\\boxed{12, 13}", "12"),
    ("The answer is 7 - 3 = 4 apples per 2 days.", "4"),  # a worked equation: its result
    ("\\boxed{7-3=4}", "4"),
    ("The answer is 12 = 3 * 4.", "12"),  # one number before "=": that number
    ("The answer is 12. Check: 3 + 8 = 11", "12"),  # only the phrase's first clause
    ("The answer is 3 1/2 cups", "7/2"),  # mixed numbers
    ("\\boxed{3\\frac{1}{2}}", "7/2"),
    ("\\boxed{-2\\frac{1}{4}}", "-9/4"),
    ("The answer is 12, 1/2", "12"),  # not a mixed number
    ("The answer is -\\$5 per day", "-5"),  # a sign before the currency
    ("\\boxed{-\\$5}", "-5"),
    ("the answer is COVID-19", "19"),  # a hyphen after a word is no minus sign
    ("\\boxed{5 \\times 10^3}", "5000"),  # scientific notation
    ("the answer is 1.5 \\times 10^{-2} m", "3/200"),
]


@pytest.mark.parametrize("text, want", CASES)
def test_number_extraction(text, want):
    assert extract_answer(text, "number") == want


def test_latex_numerals_are_checked_as_numbers():
    golds = ["8", "8", "0.75", "1000", "-0.5", "3.5", "5000"]
    preds = [extract_answer(t, "number") for t in
             ("\\boxed{\\frac{16}{2}}", "\\boxed{2^3}", "\\boxed{\\dfrac{3}{4}}", "\\boxed{1{,}000}", "$\\boxed{-\\frac{1}{2}}$",
              "The answer is 3 1/2 hours.", "\\boxed{5 \\times 10^3}")]
    assert check_answers([(p, g, "number") for p, g in zip(preds, golds)], timeout_s=30) == [True] * 7
