"""Intervals and paired tests against hand-computed cases."""

import math

import numpy as np
import pytest

from jax_distill import uncertainty


def _wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(10, 48), (0, 20), (20, 20), (130, 200)])
def test_wilson_matches_the_formula(k, n):
    assert uncertainty.wilson(k, n) == pytest.approx(_wilson_by_hand(k, n), abs=1e-9)


def test_mcnemar_exact_known_values():
    # b=0, c=6: two-sided 2 * 0.5**6 = 0.03125; b=3, c=3: 1.0; b=1, c=9: 2 * (1 + 10) / 1024
    assert uncertainty.mcnemar_exact(0, 6) == pytest.approx(0.03125)
    assert uncertainty.mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert uncertainty.mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert uncertainty.mcnemar_exact(0, 0) == 1.0


def _scores(acc, n, seed):
    rng = np.random.default_rng(seed)
    return {f"q{i}": float(x) for i, x in enumerate(rng.random(n) < acc)}


def test_paired_resolves_a_wide_margin_and_not_equal_accuracy():
    good, bad = _scores(0.8, 200, 1), _scores(0.3, 200, 2)
    wide = uncertainty.paired(good, bad)
    assert wide["resolved"] and wide["diff_lo"] > 0 and wide["mcnemar_p"] < 1e-6
    right = [k for k, v in good.items() if v == 1][:10]
    wrong = [k for k, v in good.items() if v == 0][:10]
    twin = {**good, **{k: 0.0 for k in right}, **{k: 1.0 for k in wrong}}  # same accuracy, 20 items differ
    same = uncertainty.paired(good, twin)
    assert same["diff"] == 0 and not same["resolved"] and same["diff_lo"] < 0 < same["diff_hi"]
    assert (same["only_a"], same["only_b"]) == (10, 10) and same["mcnemar_p"] == pytest.approx(1.0)


def test_paired_counts_and_difference_by_hand():
    a = {"1": 1, "2": 1, "3": 0, "4": 1, "extra": 1}
    b = {"1": 1, "2": 0, "3": 0, "4": 0}
    out = uncertainty.paired(a, b, n_boot=2000)
    assert out["n"] == 4 and out["diff"] == pytest.approx(0.5) and (out["only_a"], out["only_b"]) == (2, 0)
    assert out["mcnemar_p"] == pytest.approx(0.5) and out["ratio"] == pytest.approx(3.0)


def test_macro_is_the_mean_of_dataset_means():
    scores = {"a1": 1, "a2": 1, "a3": 1, "a4": 0, "b1": 0, "b2": 1}
    out = uncertainty.macro(scores, {k: k[0] for k in scores}, n_boot=2000)
    assert out["macro"] == pytest.approx((0.75 + 0.5) / 2) and out["pooled"] == pytest.approx(4 / 6)
    assert out["lo"] <= out["macro"] <= out["hi"]


def test_seed_variation_widens_the_interval():
    steady = [_scores(0.6, 300, s) for s in (1, 2, 3)]
    noisy = [_scores(acc, 300, s) for s, acc in ((1, 0.4), (2, 0.6), (3, 0.8))]
    a, b = uncertainty.across_seeds(steady), uncertainty.across_seeds(noisy)
    assert a["seeds"] == b["seeds"] == 3 and b["sd"] > a["sd"]
    assert (b["hi"] - b["lo"]) > 2 * (a["hi"] - a["lo"])
