"""Stage 6: the paper's tables and plot from a grid of runs, every figure with its uncertainty.
`python -m jax_distill.report --config configs/eval/report.py --config.runs='runs/*' --config.output_dir=report`.

A run is a directory holding `train_summary.json` (jax_distill.train: teacher, student, method, variant,
seed, train_tokens, train_time_s, data_path) and `eval_results.json` + `eval_samples.jsonl`
(jax_distill.evaluate), beside it or below it (e.g. `<run>/eval/`). Runs with a missing or unreadable
file are skipped and listed; two runs of one cell with the same seed are an error naming both. A cell
is (teacher, student, method, variant); runs of one cell with different training seeds are aggregated.

Per item (an evaluation problem) the score is its share of correct samples (an unverifiable answer
counts as wrong, as in the evaluate stage). Statistics, all at 95% (jax_distill.uncertainty):
  accuracy      one seed: Wilson interval (0/1 scores) or bootstrap over items (several samples per
                item); several seeds: mean of the seeds, sd across them, and a two-level bootstrap
                (seeds, then items) whose interval includes seed variation. With several datasets
                also the macro average (mean of per-dataset accuracies; bootstrap within datasets),
                in the CSV and report.json beside the pooled accuracy, and the datasets table: each
                dataset's accuracy with its interval, the macro and the pooled accuracy per cell
  comparisons   each variant against the baseline (raw) of its teacher/student/method, and
                compressed:X against truncated:X (the length-matched ablation): paired difference on the
                shared items, paired bootstrap interval, exact McNemar p (0/1 scores only: one seed, one
                sample); "resolved" = the interval excludes 0. Several seeds: item scores are first
                averaged over seeds.
  efficiency    one statistic throughout, the MEAN output tokens per sample (think block and answer):
                train speedup = raw train time / variant train time; train-token ratio = variant / raw
                train tokens; length reduction = raw mean output tokens / variant mean output tokens;
                retention = accuracy / raw accuracy; per-token efficiency = (accuracy / mean output
                tokens) / (raw accuracy / raw mean output tokens). Retention and per-token efficiency
                carry paired bootstrap intervals over items; the training figures are single
                measurements (seed-averaged).

Tables (markdown + CSV each, in output_dir): compression (teacher x compressor, from the compress stage's
summary in each compressed run's data folder; and a row "effort:<e> (<teacher>)" per teacher at a lower
reasoning effort, config.efforts: its kept raw traces against the same teacher's at the reference effort,
paired by question, a question's length the mean over its kept samples, rho = effort / reference length
in chars and student tokens over the questions kept at both, *_all with a lost question at 1; inputs,
examples, dropped and errors count questions: kept at the reference, kept at both, lost at the effort
(rejected; with an engine error), beside unpaired and kept_only_at_effort; stats.effort_table), main
(rows teacher/student/method, a column per variant), comparisons, truncation (compressed vs truncated at matched budget), equal_budget (per compressor X:
raw, the rewrite compressed-X, prune-tokens-X, prune-steps-X and truncated-X, all but raw at X's
per-example budget in student tokens: accuracy, mean output tokens, the paired difference against raw
and against the rewrite with its interval and McNemar p; "*" = resolved), ood (multiple-choice tasks, acc and
acc_norm per variant with Wilson intervals), efficiency. The plot `accuracy_vs_length.png` has one panel
per student: accuracy (error bars: the 95% interval) against mean output tokens. `report.json` holds
every number.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import statistics
import sys
from collections import defaultdict
from typing import Any, Sequence

from ml_collections import ConfigDict

from jax_distill import checks, storage, uncertainty
from jax_distill.records import iter_records, markdown_table

log = logging.getLogger("jax_distill.report")  # not __name__: under python -m it is __main__, below INFO

KEY = ("teacher", "student", "method", "variant")
ROW = KEY[:3]  # a table row: one teacher/student/method, variants side by side
EFFORTS = ("low", "medium", "high")  # gpt-oss reasoning_effort values, lowest first


# ----------------------------------------------------------------------------- config


def default_config() -> ConfigDict:
    """Every field of the report stage; configs/eval/report.py starts here."""
    c = ConfigDict()
    c.runs = ()  # globs of run directories, or of a grid root to search below (command line: a,b)
    c.output_dir = ""  # the tables (markdown + CSV), accuracy_vs_length.png and report.json
    c.baseline = "raw"  # the variant every comparison and relative column is against
    # teacher at a lower reasoning effort -> {of: the same teacher at its reference effort, effort and
    # of_effort: the two reasoning efforts, traces and of_traces: their raw trace folders}: a row each
    # in the compression table (the experiment fills it from its effort_of field)
    c.efforts = ConfigDict()
    c.n_boot = uncertainty.N_BOOT  # bootstrap resamples per interval
    c.seed = 0  # bootstrap seed (the report is deterministic)
    return c


def validate(config: ConfigDict) -> None:
    """Every field before any work, each failure naming config.<field>."""
    checks.is_type(config, "runs", tuple)
    checks.need(bool(config.runs), "runs", "must name run directory globs")
    checks.need(all(isinstance(p, str) and p for p in config.runs), "runs", f"entries must be globs; got {config.runs!r}")
    checks.is_type(config, "output_dir", str)
    checks.need(bool(config.output_dir), "output_dir", "must be set (the tables and plots are written there)")
    checks.is_type(config, "baseline", str)
    checks.need(bool(config.baseline), "baseline", "must name the variant comparisons are against")
    checks.is_type(config, "n_boot", int)
    checks.at_least(config, "n_boot", 100)
    for teacher, pair in config.efforts.items():
        field = f"efforts.{teacher}"
        for name in ("of", "effort", "of_effort", "traces", "of_traces"):
            checks.need(isinstance(pair.get(name), str) and bool(pair.get(name)), f"{field}.{name}", "must be set")
        for name in ("effort", "of_effort"):
            checks.one_of(config, f"{field}.{name}", EFFORTS)
        checks.need(EFFORTS.index(pair.effort) < EFFORTS.index(pair.of_effort), f"{field}.effort",
                    f"{pair.effort!r} must be a lower reasoning effort than of_effort {pair.of_effort!r}")
        for name in ("traces", "of_traces"):
            checks.exists(config, f"{field}.{name}", what="raw trace folder")
    checks.is_type(config, "seed", int)


# ----------------------------------------------------------------------------- reading runs


def _find(run_dir: str, name: str) -> str | None:
    if storage.exists(os.path.join(run_dir, name)):
        return os.path.join(run_dir, name)
    found = storage.glob(os.path.join(run_dir, "*", name))
    return found[0] if found else None


def run_dirs(patterns: Sequence[str]) -> list[str]:
    """Directories (local or gs://) named by globs; a directory without train_summary.json is searched
    below for run directories (so the grid's root works too)."""
    out: list[str] = []
    for pattern in patterns:
        for d in storage.glob(pattern.rstrip("/")):
            if not storage.isdir(d):
                continue
            if storage.exists(os.path.join(d, "train_summary.json")) or storage.exists(os.path.join(d, "eval_results.json")):
                out.append(d)
            else:
                out.extend(os.path.dirname(q) for q in storage.glob(os.path.join(d, "**", "train_summary.json")))
    return sorted(set(out))


def item_scores(samples_path: str) -> dict[str, list[float]]:
    """Per evaluation item: [share of correct samples, mean output tokens] from eval_samples.jsonl."""
    correct, tokens = defaultdict(list), defaultdict(list)
    for where, s in iter_records(str(samples_path)):
        if isinstance(s, Exception):
            raise ValueError(f"{where}: unreadable sample ({s})")
        item = f"{s['dataset']}/{s['id']}"
        correct[item].append(1.0 if s.get("correct") is True else 0.0)
        tokens[item].append(float(s["output_tokens"]))
    return {i: [statistics.fmean(correct[i]), statistics.fmean(tokens[i])] for i in correct}


def collect_runs(patterns: Sequence[str]) -> tuple[list[dict], list[str]]:
    """(runs, skipped): each run is {dir, train: summary, eval: results, items: item_scores}; skipped lists
    the directories left out with the reason."""
    runs, skipped = [], []
    for d in run_dirs(patterns):
        train_path, eval_path = os.path.join(d, "train_summary.json"), _find(d, "eval_results.json")
        if eval_path is None:
            skipped.append(f"{d}: no eval_results.json")
            continue
        samples_path = os.path.join(os.path.dirname(eval_path), "eval_samples.jsonl")
        try:
            train = json.loads(storage.read_bytes(train_path))
            results = json.loads(storage.read_bytes(eval_path))
            items = item_scores(samples_path) if storage.exists(samples_path) else None
        except (OSError, ValueError, KeyError) as e:
            skipped.append(f"{d}: unreadable ({e})")
            continue
        missing = [k for k in KEY + ("train_tokens", "train_time_s") if train.get(k) is None]
        if missing:
            skipped.append(f"{train_path}: missing field(s) {', '.join(missing)}")
            continue
        if "generation" not in results or "overall" not in results["generation"]:
            skipped.append(f"{eval_path}: no generation results")
            continue
        if items is None:
            skipped.append(f"{d}: no eval_samples.jsonl (needed for intervals and paired comparisons)")
            continue
        runs.append({"dir": str(d), "train": train, "eval": results, "items": items})
    if skipped:
        log.warning("report: skipped %d run(s): %s", len(skipped), "; ".join(skipped))
    return runs, skipped


# ----------------------------------------------------------------------------- cells


def group_cells(runs: list[dict]) -> dict[tuple, list[dict]]:
    """Runs by cell (teacher, student, method, variant), seeds in order; a repeated seed is an error."""
    cells: dict[tuple, dict] = defaultdict(dict)
    for r in runs:
        key = tuple(str(r["train"][k]) for k in KEY)
        seed = r["train"].get("seed", 0)
        if seed in cells[key]:
            raise ValueError(f"two runs for {dict(zip(KEY, key))} seed {seed}: {cells[key][seed]['dir']} and {r['dir']}")
        cells[key][seed] = r
    return {key: [by_seed[s] for s in sorted(by_seed)] for key, by_seed in cells.items()}


def _mean(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(values) if values else None


def cell_summary(key: tuple, runs: list[dict], items: dict[str, list[float]], n_boot: int, seed: int) -> dict:
    """Accuracy with its interval (seed variation included), lengths and training figures of one cell;
    `items`: its seed_averaged_items, keyed "<dataset>/<id>"."""
    per_seed = [{i: v[0] for i, v in r["items"].items()} for r in runs]
    if len(runs) == 1:
        acc = uncertainty.mean_interval(list(per_seed[0].values()), n_boot=n_boot, seed=seed)
        acc.update(sd=0.0, seeds=1)
    else:
        s = uncertainty.across_seeds(per_seed, n_boot=n_boot, seed=seed)
        acc = {"n": len(per_seed[0]), "mean": s["mean"], "lo": s["lo"], "hi": s["hi"], "sd": s["sd"], "seeds": s["seeds"]}
    overall = [r["eval"]["generation"]["overall"] for r in runs]
    by_dataset = uncertainty.macro({i: v[0] for i, v in items.items()}, {i: i.split("/", 1)[0] for i in items},
                                   n_boot=n_boot, seed=seed)
    return {
        **dict(zip(KEY, key)),
        "seeds": acc["seeds"],
        "n": acc["n"],
        "accuracy": acc["mean"],
        "accuracy_lo": acc["lo"],
        "accuracy_hi": acc["hi"],
        "accuracy_sd": acc["sd"],
        # the mean over datasets of each dataset's accuracy (seed-averaged items), bootstrap within datasets
        "macro_accuracy": by_dataset["macro"],
        "macro_accuracy_lo": by_dataset["lo"],
        "macro_accuracy_hi": by_dataset["hi"],
        "accuracy_by_dataset": by_dataset["groups"],
        "mean_output_tokens": _mean(o.get("mean_output_tokens") for o in overall),
        "median_output_tokens": _mean(o.get("median_output_tokens") for o in overall),
        "mean_reasoning_tokens": _mean(o.get("mean_reasoning_tokens") for o in overall),
        "truncation_rate": _mean(o.get("truncation_rate") for o in overall),
        # samples that ran out of max_tokens instead of ending their turn (evaluate's max_tokens_share)
        "max_tokens_share": _mean(o.get("max_tokens_share") for o in overall),
        "train_tokens": _mean(r["train"]["train_tokens"] for r in runs),
        "train_time_s": _mean(r["train"]["train_time_s"] for r in runs),
        "dirs": [r["dir"] for r in runs],
    }


def seed_averaged_items(runs: list[dict]) -> dict[str, list[float]]:
    """Item -> [score, output tokens] averaged over the cell's seeds (items every seed scored)."""
    shared = set.intersection(*(set(r["items"]) for r in runs))
    return {i: [statistics.fmean(r["items"][i][c] for r in runs) for c in (0, 1)] for i in sorted(shared)}


# ----------------------------------------------------------------------------- comparisons


def compressor_of(variant: str, kind: str) -> str | None:
    """The compressor a variant label of `kind` (compressed | truncated) names: "compressed-llama" (the
    experiment's label) or "compressed:llama" (its spec) -> "llama"; None for other variants."""
    for sep in ("-", ":"):
        if variant.startswith(kind + sep):
            return variant[len(kind) + 1 :]
    return None


def compare(a: dict[str, list[float]], b: dict[str, list[float]], n_boot: int, seed: int) -> dict:
    """A minus B on the items both scored (seed_averaged_items of each): difference, paired interval,
    McNemar p where defined, resolved."""
    return uncertainty.paired({i: v[0] for i, v in a.items()}, {i: v[0] for i, v in b.items()}, n_boot=n_boot, seed=seed)


def comparison_rows(items: dict[tuple, dict], summaries: dict[tuple, dict], baseline: str, n_boot: int,
                    seed: int) -> tuple[list[dict], list[dict]]:
    """(each variant vs the baseline, compressed:X vs truncated:X) per teacher/student/method."""
    versus_raw, truncation = [], []
    for key in items:
        row, variant = key[:3], key[3]
        base = row + (baseline,)
        if variant != baseline and base in items:
            versus_raw.append({**dict(zip(ROW, row)), "variant": variant, "against": baseline,
                               **compare(items[key], items[base], n_boot, seed)})
        comp = compressor_of(variant, "compressed")
        trunc = next((k for k in items if k[:3] == row and comp and compressor_of(k[3], "truncated") == comp), None)
        if trunc is not None:
            truncation.append({**dict(zip(ROW, row)), "compressor": comp,
                               "compressed_mean_output_tokens": summaries[key]["mean_output_tokens"],
                               "truncated_mean_output_tokens": summaries[trunc]["mean_output_tokens"],
                               **compare(items[key], items[trunc], n_boot, seed)})
    return versus_raw, truncation


def efficiency_rows(items: dict[tuple, dict], summaries: dict[tuple, dict], baseline: str, n_boot: int,
                    seed: int) -> list[dict]:
    """Training and inference gains against the baseline (definitions in the module docstring)."""
    rows = []
    for key in items:
        base_key = key[:3] + (baseline,)
        if key[3] == baseline or base_key not in items:
            continue
        s, raw = summaries[key], summaries[base_key]
        a, b = items[key], items[base_key]
        retention = uncertainty.paired_statistic(a, b, lambda x, y: x[0] / y[0], n_boot=n_boot, seed=seed)
        efficiency = uncertainty.paired_statistic(a, b, lambda x, y: (x[0] / x[1]) / (y[0] / y[1]), n_boot=n_boot, seed=seed)
        rows.append({
            **dict(zip(KEY, key)),
            "train_speedup": _ratio(raw["train_time_s"], s["train_time_s"]),
            "train_token_ratio": _ratio(s["train_tokens"], raw["train_tokens"]),
            "length_reduction": _ratio(raw["mean_output_tokens"], s["mean_output_tokens"]),
            "retention": retention["value"], "retention_lo": retention["lo"], "retention_hi": retention["hi"],
            "token_efficiency": efficiency["value"], "token_efficiency_lo": efficiency["lo"],
            "token_efficiency_hi": efficiency["hi"],
        })
    return rows


def _ratio(a, b):
    if a is None or b is None or b == 0 or (isinstance(b, float) and math.isnan(b)):
        return None
    return a / b


# ----------------------------------------------------------------------------- equal budget

# (method, variant label kind): what trains at a compressor's per-example budget, in table order
EQUAL_BUDGET = (("raw", None), ("compressed", "compressed"), ("prune_tokens", "prune-tokens"),
                ("prune_steps", "prune-steps"), ("truncated", "truncated"))


def _at_budget(items: dict[tuple, dict], row: tuple, kind: str, comp: str) -> tuple | None:
    """The cell of `row` whose variant of `kind` is at compressor `comp`'s budget (label or spec spelling)."""
    spellings = {kind, kind.replace("-", "_")}
    return next((k for k in items if k[:3] == row and any(compressor_of(k[3], s) == comp for s in spellings)), None)


def equal_budget_rows(items: dict[tuple, dict], summaries: dict[tuple, dict], baseline: str, n_boot: int,
                      seed: int) -> list[dict]:
    """Per teacher/student/method and compressor X: raw, the rewrite (compressed-X), prune-tokens-X,
    prune-steps-X and truncated-X, all but raw trained at X's per-example budget in the student's tokens:
    accuracy with its interval, mean output tokens, train tokens, and the paired difference against raw
    and against the rewrite (interval, McNemar p, resolved)."""
    rows = []
    groups = dict.fromkeys((key[:3], comp) for key in items if (comp := compressor_of(key[3], "compressed")))
    for row, comp in groups:
        base, rewrite = row + (baseline,), _at_budget(items, row, "compressed", comp)
        for method, kind in EQUAL_BUDGET:
            key = base if kind is None else _at_budget(items, row, kind, comp)
            if key not in items:
                continue
            s = summaries[key]
            out = {**dict(zip(ROW, row)), "budget": comp, "method_at_budget": method, "variant": key[3], "n": s["n"],
                   "accuracy": s["accuracy"], "accuracy_lo": s["accuracy_lo"], "accuracy_hi": s["accuracy_hi"],
                   "mean_output_tokens": s["mean_output_tokens"], "train_tokens": s["train_tokens"]}
            for against, ref in (("raw", base), ("compressed", rewrite)):
                if ref in items and ref != key:
                    d = compare(items[key], items[ref], n_boot, seed)
                    out.update({f"vs_{against}_{k}": d.get(k) for k in ("n", "diff", "diff_lo", "diff_hi", "only_a", "only_b", "mcnemar_p")})
                    out[f"vs_{against}_resolved"] = d["resolved"]
            rows.append(out)
    return rows


def _versus(against: str):
    def text(r: dict) -> str:
        if r.get(f"vs_{against}_diff") is None:
            return "-"
        mark = " *" if r[f"vs_{against}_resolved"] else ""
        return _interval(r[f"vs_{against}_diff"], r[f"vs_{against}_diff_lo"], r[f"vs_{against}_diff_hi"]) + \
            f" p={_p(r.get(f'vs_{against}_mcnemar_p'))}{mark}"
    return text


# ----------------------------------------------------------------------------- compression and OOD


def compression_rows(cells: dict[tuple, list[dict]], summaries: dict[tuple, dict], baseline: str) -> list[dict]:
    """Teacher x compressor: the compress stage's counts and mean rho (from the summary.json in the
    compressed runs' data folder) and the training-token ratio against raw over every run using it."""
    stage_summaries, token_ratios = {}, defaultdict(list)
    for key, runs in cells.items():
        comp = compressor_of(key[3], "compressed")
        if comp is None:
            continue
        for r in runs:
            for folder in r["train"].get("data_path") or ():
                path = os.path.join(folder, "summary.json")
                if storage.exists(path):
                    stage_summaries[(key[0], comp)] = json.loads(storage.read_bytes(path))
        raw = summaries.get(key[:3] + (baseline,))
        if raw is not None:
            token_ratios[(key[0], comp)].append(_ratio(summaries[key]["train_tokens"], raw["train_tokens"]))
    rows = []
    for teacher, comp in sorted(set(stage_summaries) | set(token_ratios)):
        s = stage_summaries.get((teacher, comp), {})
        total = s.get("total", {})
        rows.append({
            "kind": "compressor", "teacher": teacher, "compressor": comp, "policy": s.get("policy"),
            **_pooled(s.get("table", [])),
            "train_token_ratio": _mean(token_ratios.get((teacher, comp), [])),
            "fallback_raw": total.get("fallback_raw"), "dropped": total.get("dropped"),
            "errors": sum(total.get("errors", {}).values()) if total else None,
        })
    return rows


def _pooled(table: list[dict]) -> dict:
    """A compress stage's per-dataset table (stats.compression_table) as one row: inputs and examples
    summed, each dataset's mean weighted by what it averages: its successes ("compressed", else
    "examples"), or (the *_all means) all its inputs; None where no dataset has the figure."""
    def weighted(field: str, n: str) -> float | None:
        parts = [(t[field], t.get(n, t["examples"])) for t in table if t.get(field) is not None]
        weight = sum(w for _, w in parts)
        return sum(v * w for v, w in parts) / weight if weight else None

    return {
        "inputs": sum(t.get("inputs", t["examples"]) for t in table) or None,
        "examples": sum(t["examples"] for t in table) or None,
        "mean_rho_chars": weighted("mean_rho_chars", "compressed"),
        "mean_rho_chars_all": weighted("mean_rho_chars_all", "inputs"),
        "mean_rho_tokens": weighted("mean_rho_tokens", "compressed"),
        "mean_rho_tokens_all": weighted("mean_rho_tokens_all", "inputs"),
    }


def effort_rows(efforts: ConfigDict, summaries: dict[tuple, dict], baseline: str) -> list[dict]:
    """A compression-table row per teacher at a lower reasoning effort (config.efforts): rho of its kept
    traces against the same teacher's at the reference effort, paired by question (stats.effort_table:
    the mean over each question's kept samples, over the questions kept at both; *_all: a lost question
    at 1), the questions lost at the effort (dropped: rejected; errors: an engine error among its
    samples), the unpaired ones and those kept only at the effort, and the training-token ratio of its
    baseline runs against the reference teacher's on the same student and method."""
    from jax_distill.traces.stats import effort_table

    rows = []
    for teacher, pair in efforts.items():
        label = f"effort:{pair.effort} ({teacher})"
        (total,) = effort_table(pair.traces, pair.of_traces, label, by_dataset=False) or [{}]
        ratios = [_ratio(s["train_tokens"], summaries[ref]["train_tokens"]) for key, s in summaries.items()
                  if key[0] == teacher and key[3] == baseline and (ref := (pair.of,) + key[1:]) in summaries]
        rows.append({"kind": "teacher_effort", "teacher": pair.of, "compressor": label,
                     "policy": f"teacher effort vs {pair.of_effort}",
                     **{k: v for k, v in total.items() if k not in ("dataset", "compressor")},
                     "train_token_ratio": _mean(ratios), "fallback_raw": None})
    return rows


def dataset_rows(items: dict[tuple, dict], summaries: dict[tuple, dict], n_boot: int, seed: int) -> list[dict]:
    """Per cell: each dataset's accuracy (seed-averaged items) with its interval, then the macro average
    (mean over datasets, bootstrap within them) and the pooled accuracy (every item alike) beside it."""
    rows = []
    for key, cell_items in items.items():
        s, by_dataset = summaries[key], defaultdict(list)
        for item, (score, _) in cell_items.items():
            by_dataset[item.split("/", 1)[0]].append(score)
        for name in sorted(by_dataset):
            acc = uncertainty.mean_interval(by_dataset[name], n_boot=n_boot, seed=seed)
            rows.append({**dict(zip(KEY, key)), "dataset": name, "n": acc["n"], "accuracy": acc["mean"],
                         "accuracy_lo": acc["lo"], "accuracy_hi": acc["hi"]})
        rows.append({**dict(zip(KEY, key)), "dataset": "macro", "n": s["n"], "accuracy": s["macro_accuracy"],
                     "accuracy_lo": s["macro_accuracy_lo"], "accuracy_hi": s["macro_accuracy_hi"]})
        rows.append({**dict(zip(KEY, key)), "dataset": "pooled", "n": s["n"], "accuracy": s["accuracy"],
                     "accuracy_lo": s["accuracy_lo"], "accuracy_hi": s["accuracy_hi"]})
    return rows


def budget_rows(cells: dict[tuple, list[dict]]) -> list[dict]:
    """Per cell: the update budget its runs trained under (train.budget) and what each optimizer step held,
    seed means from train_summary.json; "-" for runs from before the budget was recorded."""
    rows = []
    for key, runs in cells.items():
        summaries = [r["train"] for r in runs]
        budgets = sorted({str(t["budget"]) for t in summaries if t.get("budget")})
        rows.append({**dict(zip(KEY, key)), "budget": ",".join(budgets) or None,
                     **{f: _mean(t.get(f) for t in summaries)
                        for f in ("optimizer_steps", "examples_per_step", "tokens_per_step", "train_tokens")}})
    return rows


def ood_rows(cells: dict[tuple, list[dict]]) -> list[dict]:
    """Per teacher/student/method/task and variant: the metrics the task reports (acc, and acc_norm where
    lm-evaluation-harness defines it: HellaSwag, PIQA, ARC), seed means, with Wilson intervals on the
    task's n pooled over seeds. TruthfulQA mc2's acc is a mean probability mass, not a 0/1 share: Wilson
    on it is conservative (scores in [0, 1] with mean p have variance at most p(1 - p))."""
    rows = []
    for key, runs in cells.items():
        tasks = sorted(set.intersection(*(set(r["eval"].get("multiple_choice") or {}) for r in runs)))
        for task in tasks:
            res = [r["eval"]["multiple_choice"][task] for r in runs]
            n = sum(x["n"] for x in res)
            row = {**dict(zip(KEY, key)), "task": task, "n": n}
            for metric in ("acc", "acc_norm"):
                if any(x.get(metric) is None for x in res):
                    row.update({metric: None, f"{metric}_lo": None, f"{metric}_hi": None})
                    continue
                lo, hi = uncertainty.wilson(sum(round(x[metric] * x["n"]) for x in res), n)
                row.update({metric: _mean(x[metric] for x in res), f"{metric}_lo": lo, f"{metric}_hi": hi})
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- formatting


def _num(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _interval(v, lo, hi, digits=3) -> str:
    return "-" if v is None else f"{_num(v, digits)} [{_num(lo, digits)}, {_num(hi, digits)}]"


def _times(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _p(v) -> str:
    return "-" if v is None else ("<0.001" if v < 0.001 else f"{v:.3f}")


def wide_table(summaries: list[dict], variants: Sequence[str]) -> tuple[list[dict], list[str]]:
    """The main table: a row per teacher/student/method, a column per variant, each cell
    "acc [lo, hi]" (with "±sd (k seeds)" when several seeds were trained), then the share of samples that
    hit max_tokens: an accuracy earned by answers that never ended is not comparable."""
    rows: dict[tuple, dict] = {}
    for s in summaries:
        row = rows.setdefault(tuple(s[k] for k in ROW), dict(zip(ROW, (s[k] for k in ROW))))
        text = _interval(s["accuracy"], s["accuracy_lo"], s["accuracy_hi"])
        if s["seeds"] > 1:
            text += f" ±{s['accuracy_sd']:.3f} ({s['seeds']} seeds)"
        if s.get("max_tokens_share") is not None:
            text += f", max_tokens {s['max_tokens_share']:.3f}"
        row[s["variant"]] = text
    n = {tuple(s[k] for k in ROW): s["n"] for s in summaries}
    for key, row in rows.items():
        row["n"] = n[key]
    return list(rows.values()), list(ROW) + ["n"] + list(variants)


def _text_rows(rows: list[dict], formats: dict[str, Any]) -> list[dict]:
    """Rows with the formatted columns added (markdown only; the CSV keeps the numbers)."""
    return [{**r, **{name: f(r) for name, f in formats.items()}} for r in rows]


TABLES = {
    # name: (markdown columns, markdown formatters)
    "comparisons": (list(ROW) + ["variant", "against", "n", "difference", "mcnemar_p", "resolved"], {
        "difference": lambda r: _interval(r["diff"], r["diff_lo"], r["diff_hi"], 3),
        "mcnemar_p": lambda r: _p(r.get("mcnemar_p")),
        "resolved": lambda r: "yes" if r["resolved"] else "no",
    }),
    "truncation": (list(ROW) + ["compressor", "n", "compressed", "truncated", "difference", "mcnemar_p", "resolved",
                                "tokens"], {
        "compressed": lambda r: _num(r["a"]), "truncated": lambda r: _num(r["b"]),
        "difference": lambda r: _interval(r["diff"], r["diff_lo"], r["diff_hi"]),
        "mcnemar_p": lambda r: _p(r.get("mcnemar_p")),
        "resolved": lambda r: "yes" if r["resolved"] else "no",
        "tokens": lambda r: f"{_num(r['compressed_mean_output_tokens'], 0)} vs {_num(r['truncated_mean_output_tokens'], 0)}",
    }),
    "efficiency": (list(KEY) + ["train_speedup", "train_token_ratio", "length_reduction", "retention", "token_efficiency"], {
        "train_speedup": lambda r: _times(r["train_speedup"]),
        "train_token_ratio": lambda r: _num(r["train_token_ratio"]),
        "length_reduction": lambda r: _times(r["length_reduction"]),
        "retention": lambda r: _interval(r["retention"], r["retention_lo"], r["retention_hi"]),
        "token_efficiency": lambda r: _interval(r["token_efficiency"], r["token_efficiency_lo"], r["token_efficiency_hi"], 2),
    }),
    # rho over successes and over all inputs (a failure at 1, the raw trace), the fallbacks beside them;
    # a teacher effort's row counts questions (effort_rows), the last two columns are its own
    "compression": (["teacher", "compressor", "policy", "inputs", "examples", "mean_rho_chars", "mean_rho_chars_all",
                     "mean_rho_tokens", "mean_rho_tokens_all", "train_token_ratio", "fallback_raw", "dropped", "errors",
                     "unpaired", "kept_only_at_effort"], {
        "mean_rho_chars": lambda r: _num(r["mean_rho_chars"]), "mean_rho_tokens": lambda r: _num(r["mean_rho_tokens"]),
        "mean_rho_chars_all": lambda r: _num(r.get("mean_rho_chars_all")),
        "mean_rho_tokens_all": lambda r: _num(r.get("mean_rho_tokens_all")),
        "train_token_ratio": lambda r: _num(r["train_token_ratio"]),
    }),
    "equal_budget": (list(ROW) + ["budget", "method_at_budget", "variant", "n", "accuracy", "output_tokens",
                                  "vs_raw", "vs_compressed"], {
        "accuracy": lambda r: _interval(r["accuracy"], r["accuracy_lo"], r["accuracy_hi"]),
        "output_tokens": lambda r: _num(r["mean_output_tokens"], 1),
        "vs_raw": _versus("raw"), "vs_compressed": _versus("compressed"),
    }),
    "datasets": (list(KEY) + ["dataset", "n", "accuracy"], {
        "accuracy": lambda r: _interval(r["accuracy"], r["accuracy_lo"], r["accuracy_hi"]),
    }),
    # how many updates each run got (train.budget) and what a step held: steps differ between variants
    # under budget tokens, examples per step under examples
    "budget": (list(KEY) + ["budget", "optimizer_steps", "examples_per_step", "tokens_per_step", "train_tokens"], {
        "optimizer_steps": lambda r: _num(r["optimizer_steps"], 0), "examples_per_step": lambda r: _num(r["examples_per_step"], 1),
        "tokens_per_step": lambda r: _num(r["tokens_per_step"], 0), "train_tokens": lambda r: _num(r["train_tokens"], 0),
    }),
    "ood": (list(KEY) + ["task", "n", "acc", "acc_norm"], {
        "acc": lambda r: _interval(r["acc"], r["acc_lo"], r["acc_hi"]),
        "acc_norm": lambda r: _interval(r["acc_norm"], r["acc_norm_lo"], r["acc_norm_hi"]),
    }),
}


def _csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(c for r in rows for c in r if c != "dirs"))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    return buf.getvalue()


# ----------------------------------------------------------------------------- plot


def plot(summaries: list[dict], path: str) -> str:
    """One panel per student: accuracy (error bars: 95% interval) against mean output tokens, a marker
    per teacher, a colour per method, each point labelled with its variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = sorted({s["student"] for s in summaries})
    fig, axes = plt.subplots(1, len(students), figsize=(6.0 * len(students), 4.4), squeeze=False)
    markers = dict(zip(sorted({s["teacher"] for s in summaries}), "osD^v<>p*h"))
    colors = dict(zip(sorted({s["method"] for s in summaries}), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, student in zip(axes[0], students):
        pts = [s for s in summaries if s["student"] == student and s["accuracy"] is not None and s["mean_output_tokens"]]
        for s in pts:
            err = [[s["accuracy"] - s["accuracy_lo"]], [s["accuracy_hi"] - s["accuracy"]]]
            ax.errorbar(s["mean_output_tokens"], s["accuracy"], yerr=err, fmt=markers[s["teacher"]],
                        color=colors[s["method"]], capsize=3, label=f"{s['teacher']} / {s['method']}")
            ax.annotate(s["variant"], (s["mean_output_tokens"], s["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        handles, labels = ax.get_legend_handles_labels()
        if labels:
            unique = dict(zip(labels, handles))
            ax.legend(unique.values(), unique.keys(), fontsize=8)
        if pts:
            ax.set_xscale("log")
        ax.margins(x=0.12, y=0.08)
        ax.set_xlabel("mean output tokens at inference")
        ax.set_ylabel("accuracy (in-distribution), 95% interval")
        ax.set_title(student)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    storage.write_atomic(str(path), png.getvalue())  # local or gs://
    return str(path)


# ----------------------------------------------------------------------------- the stage


def build(runs: list[dict], baseline: str = "raw", n_boot: int = uncertainty.N_BOOT, seed: int = 0,
          efforts: ConfigDict | None = None) -> dict:
    """Every table's rows (numbers, not text) from collected runs (and the effort pairs' trace folders)."""
    cells = group_cells(runs)
    order = lambda key: (key[:3], key[3] != baseline, key[3])  # noqa: E731  the baseline first in each row
    cells = {key: cells[key] for key in sorted(cells, key=order)}
    items = {key: seed_averaged_items(r) for key, r in cells.items()}
    summaries = {key: cell_summary(key, r, items[key], n_boot, seed) for key, r in cells.items()}
    versus_raw, truncation = comparison_rows(items, summaries, baseline, n_boot, seed)
    return {
        "cells": [summaries[key] for key in cells],
        "variants": list(dict.fromkeys(key[3] for key in sorted(cells, key=lambda k: (k[3] != baseline, k[3])))),
        "comparisons": versus_raw,
        "truncation": truncation,
        "efficiency": efficiency_rows(items, summaries, baseline, n_boot, seed),
        "equal_budget": equal_budget_rows(items, summaries, baseline, n_boot, seed),
        "compression": compression_rows(cells, summaries, baseline) + effort_rows(efforts or {}, summaries, baseline),
        "datasets": dataset_rows(items, summaries, n_boot, seed),
        "budget": budget_rows(cells),
        "ood": ood_rows(cells),
    }


def write_report(tables: dict, out_dir: str | os.PathLike, skipped: Sequence[str] = ()) -> dict:
    """Every table as markdown + CSV, the plot and report.json; returns the written paths."""
    out = str(out_dir)  # local or gs://
    storage.probe(out)
    storage.makedirs(out)
    at = lambda name: os.path.join(out, name)  # noqa: E731
    main_rows, main_cols = wide_table(tables["cells"], tables["variants"])
    markdown = {"main": markdown_table(main_rows, main_cols, lambda _c, v: "-" if v is None else str(v))}
    csv_rows = {"main": tables["cells"]}
    for name, (columns, formats) in TABLES.items():
        markdown[name] = markdown_table(_text_rows(tables[name], formats), columns, lambda _c, v: "-" if v is None else str(v))
        csv_rows[name] = tables[name]
    paths: dict[str, Any] = {}
    for name, text in markdown.items():
        storage.write_atomic(at(f"{name}_table.md"), text)
        storage.write_atomic(at(f"{name}_table.csv"), _csv(csv_rows[name]))
        paths[name] = {"md": at(f"{name}_table.md"), "csv": at(f"{name}_table.csv")}
    paths["plot"] = plot(tables["cells"], at("accuracy_vs_length.png")) if tables["cells"] else None
    storage.write_atomic(at("report.json"), json.dumps({**tables, "skipped": list(skipped), "files": paths}, indent=2))
    paths["json"] = at("report.json")
    paths["markdown"] = markdown
    return paths


def run(config) -> dict:
    """Collect the runs named by config.runs, write the report to config.output_dir, print the main and
    comparison tables; returns the written paths."""
    validate(config)
    runs, skipped = collect_runs(config.runs)
    if not runs:
        raise ValueError(f"report: no complete runs under {config.runs!r}" + (f" ({'; '.join(skipped)})" if skipped else ""))
    tables = build(runs, config.baseline, config.n_boot, config.seed, config.efforts)
    paths = write_report(tables, config.output_dir, skipped)
    for name, title in (("main", "accuracy, 95% intervals"), ("comparisons", f"paired differences against {config.baseline}"),
                        ("truncation", "compressed vs length-matched truncated"),
                        ("equal_budget", "at the compressor's budget: rewrite vs prune vs truncate")):
        if name == "main" or tables[name]:
            print(f"\n## {title}\n\n{paths['markdown'][name]}", file=sys.stdout)
    if any(len(s["accuracy_by_dataset"]) > 1 for s in tables["cells"]):
        title = "accuracy per dataset, the macro average (mean of datasets) and pooled"
        print(f"\n## {title}\n\n{paths['markdown']['datasets']}", file=sys.stdout)
    log.info("report: %d runs (%d skipped) -> %s", len(runs), len(skipped), config.output_dir)
    return {k: v for k, v in paths.items() if k != "markdown"}


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_stage(run, default_config)
