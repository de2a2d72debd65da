"""95% intervals and paired tests for the report: every accuracy and every comparison carries its noise.

- a proportion (accuracy over n items): Wilson score interval (scipy's binomtest);
- a paired difference of two variants on the same items: the difference of means with a paired
  bootstrap percentile interval over items, and the exact McNemar p-value (two-sided binomial test on
  the discordant pairs) for 0/1 scores;
- a ratio of paired means (retention = acc(variant) / acc(raw)): paired bootstrap over items;
- a macro average over datasets: bootstrap over items within each dataset (stratified);
- several training seeds of one cell: a two-level bootstrap (seeds, then items), so the interval
  includes seed-to-seed variation.

Every bootstrap is seeded (`seed`) and uses `n_boot` resamples; results are plain floats for JSON.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
N_BOOT = 10_000


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials ((nan, nan) for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (b: only A right, c: only B right)."""
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(int(b), int(b + c), 0.5).pvalue)


def _percentile(draws: np.ndarray, level: float) -> tuple[float, float]:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _resample(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n, size=(n_boot, n))


def paired(
    a: Mapping[str, float], b: Mapping[str, float], *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0
) -> dict:
    """A minus B on the items both scored: difference, paired bootstrap interval, exact McNemar p (for
    0/1 scores), ratio A/B with its bootstrap interval, and whether the interval excludes 0."""
    ids = sorted(set(a) & set(b))
    if not ids:
        raise ValueError("paired comparison: the two variants share no evaluation items")
    x = np.array([a[i] for i in ids], np.float64)
    y = np.array([b[i] for i in ids], np.float64)
    idx = _resample(len(ids), n_boot, np.random.default_rng(seed))
    mx, my = x[idx].mean(axis=1), y[idx].mean(axis=1)
    diff_lo, diff_hi = _percentile(mx - my, level)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_lo, ratio_hi = _percentile(mx / my, level)
    out = {
        "n": len(ids),
        "a": float(x.mean()),
        "b": float(y.mean()),
        "diff": float(x.mean() - y.mean()),
        "diff_lo": diff_lo,
        "diff_hi": diff_hi,
        "ratio": float(x.mean() / y.mean()) if y.mean() else float("nan"),
        "ratio_lo": ratio_lo,
        "ratio_hi": ratio_hi,
        "resolved": bool(diff_lo > 0 or diff_hi < 0),
    }
    if np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all():
        out["only_a"] = int(((x == 1) & (y == 0)).sum())
        out["only_b"] = int(((x == 0) & (y == 1)).sum())
        out["mcnemar_p"] = mcnemar_exact(out["only_a"], out["only_b"])
    return out


def macro(
    scores: Mapping[str, float], group_of: Mapping[str, str], *, level: float = LEVEL, n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict:
    """Mean over groups (datasets) of the mean score per group, with a bootstrap over items within each
    group; the pooled mean beside it."""
    groups: dict[str, list[float]] = {}
    for item, s in scores.items():
        groups.setdefault(group_of[item], []).append(s)
    if not groups:
        return {"macro": float("nan"), "lo": float("nan"), "hi": float("nan"), "pooled": float("nan"), "groups": {}}
    rng = np.random.default_rng(seed)
    per_group = []
    for name in sorted(groups):
        v = np.array(groups[name], np.float64)
        per_group.append(v[_resample(len(v), n_boot, rng)].mean(axis=1))
    lo, hi = _percentile(np.mean(per_group, axis=0), level)
    means = {name: float(np.mean(groups[name])) for name in sorted(groups)}
    return {
        "macro": float(np.mean(list(means.values()))),
        "lo": lo,
        "hi": hi,
        "pooled": float(np.mean([s for v in groups.values() for s in v])),
        "groups": means,
    }


def across_seeds(
    runs: Sequence[Mapping[str, float]], *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0
) -> dict:
    """One cell trained with several seeds: mean and spread of the per-seed accuracies, and a two-level
    bootstrap interval (resample seeds, then items within each drawn seed) that includes seed variation."""
    if not runs:
        raise ValueError("across_seeds: no runs")
    per_seed = [np.array(list(r.values()), np.float64) for r in runs]
    accs = np.array([v.mean() for v in per_seed])
    rng = np.random.default_rng(seed)
    k = len(per_seed)
    # slot (t, j) of resample t draws seed picks[t, j] and its own item resample number t * k + j
    item_means = np.stack([v[_resample(v.size, n_boot * k, rng)].mean(axis=1) for v in per_seed])
    picks = rng.integers(0, k, size=(n_boot, k))
    slots = np.arange(n_boot * k).reshape(n_boot, k)
    lo, hi = _percentile(item_means[picks, slots].mean(axis=1), level)
    return {
        "seeds": len(runs),
        "mean": float(accs.mean()),
        "sd": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
        "lo": lo,
        "hi": hi,
        "per_seed": [float(a) for a in accs],
    }


def mean_interval(scores: Sequence[float], *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """The mean of per-item scores with its 95% interval: Wilson when every score is 0/1 (one sample per
    item), else a bootstrap over items (several samples per item give fractional scores)."""
    x = np.asarray(scores, np.float64)
    if x.size == 0:
        return {"n": 0, "mean": float("nan"), "lo": float("nan"), "hi": float("nan")}
    if np.isin(x, (0.0, 1.0)).all():
        lo, hi = wilson(int(x.sum()), x.size, level)
    else:
        lo, hi = _percentile(x[_resample(x.size, n_boot, np.random.default_rng(seed))].mean(axis=1), level)
    return {"n": int(x.size), "mean": float(x.mean()), "lo": lo, "hi": hi}


def paired_statistic(
    a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]], statistic, *, level: float = LEVEL,
    n_boot: int = N_BOOT, seed: int = 0,
) -> dict:
    """A statistic of the per-column means of two variants on their shared items (e.g. per-token
    efficiency: statistic(ma, mb) = (ma[0] / ma[1]) / (mb[0] / mb[1]) with columns accuracy and output
    tokens), with a paired bootstrap interval over items. a, b: item -> that item's column values."""
    ids = sorted(set(a) & set(b))
    if not ids:
        raise ValueError("paired statistic: the two variants share no evaluation items")
    x = np.array([a[i] for i in ids], np.float64)  # [items, columns]
    y = np.array([b[i] for i in ids], np.float64)
    idx = _resample(len(ids), n_boot, np.random.default_rng(seed))
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = np.array(statistic(x[idx].mean(axis=1).T, y[idx].mean(axis=1).T), np.float64)
        value = float(statistic(x.mean(axis=0), y.mean(axis=0)))
    lo, hi = _percentile(draws, level)
    return {"n": len(ids), "value": value, "lo": lo, "hi": hi}
