"""Stage 6: the paper's tables and plot from a grid of runs. `python -m jax_distill.report --config
configs/eval/report.py --config.runs='runs/*' --config.output_dir=report`.

A run is a directory holding `train_summary.json` (written by jax_distill.train: teacher, student, method,
variant, train_tokens, train_time_s) and `eval_results.json` (jax_distill.evaluate), either beside it or
in a subdirectory (e.g. `<run>/eval/`). Runs with a missing or unreadable file are skipped and listed in
the report; two runs with the same (teacher, student, method, variant) are an error naming both.

Main table, one row per teacher x student x method x variant (markdown + CSV):
  accuracy                in-distribution generation accuracy (evaluate: generation.overall.accuracy)
  median_reasoning_tokens think-block tokens at inference; also median / mean output tokens
  train_tokens, train_time_s
  train_speedup           raw train_time_s / this train_time_s
  train_token_ratio       this train_tokens / raw train_tokens
  length_reduction        raw median output tokens / this median output tokens ("x times shorter")
  accuracy_retention      accuracy / raw accuracy
  token_efficiency        (accuracy / mean output tokens) / (raw accuracy / raw mean output tokens)
"raw" is the run of the same teacher, student and method with variant `baseline` (default "raw"); the
relative columns are empty where it is missing. An out-of-distribution table lists each multiple-choice
task's acc (and their mean), and one PNG per student plots accuracy against median output tokens, one
point per teacher/method/variant.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

from ml_collections import ConfigDict

from jax_distill import checks
from jax_distill.records import markdown_table

log = logging.getLogger(__name__)

KEY = ("teacher", "student", "method", "variant")
MAIN_COLUMNS = KEY + (
    "accuracy",
    "median_reasoning_tokens",
    "median_output_tokens",
    "mean_output_tokens",
    "train_tokens",
    "train_time_s",
    "train_speedup",
    "train_token_ratio",
    "length_reduction",
    "accuracy_retention",
    "token_efficiency",
)
HEADERS = {
    "accuracy": "acc",
    "median_reasoning_tokens": "median reasoning tok",
    "median_output_tokens": "median output tok",
    "mean_output_tokens": "mean output tok",
    "train_tokens": "train tokens",
    "train_time_s": "train time (s)",
    "train_speedup": "train speedup",
    "train_token_ratio": "train tokens / raw",
    "length_reduction": "length reduction",
    "accuracy_retention": "acc retention",
    "token_efficiency": "per-token efficiency",
}


# ----------------------------------------------------------------------------- config


def default_config() -> ConfigDict:
    """Every field of the report stage; configs/eval/report.py starts here."""
    c = ConfigDict()
    c.runs = ()  # globs of run directories, or of a grid root to search below (command line: a,b)
    c.output_dir = ""  # main_table.{md,csv}, ood_table.{md,csv}, accuracy_vs_length_<student>.png, report.json
    c.baseline = "raw"  # the variant every relative column compares against
    return c


def validate(config: ConfigDict) -> None:
    """Every field before any work, each failure naming config.<field>."""
    checks.is_type(config, "runs", tuple)
    checks.need(bool(config.runs), "runs", "must name run directory globs")
    checks.need(all(isinstance(p, str) and p for p in config.runs), "runs", f"entries must be globs; got {config.runs!r}")
    checks.is_type(config, "output_dir", str)
    checks.need(bool(config.output_dir), "output_dir", "must be set (the tables and plots are written there)")
    checks.is_type(config, "baseline", str)
    checks.need(bool(config.baseline), "baseline", "must name the variant relative columns compare against")


# ----------------------------------------------------------------------------- reading runs


def _find(run_dir: Path, name: str) -> Path | None:
    direct = run_dir / name
    if direct.exists():
        return direct
    found = sorted(run_dir.glob(f"*/{name}")) or sorted(run_dir.glob(f"**/{name}"))
    return found[0] if found else None


def run_dirs(patterns: Sequence[str]) -> list[Path]:
    """Directories named by globs; a directory without train_summary.json is searched below for run
    directories (so the grid's root works too)."""
    out: list[Path] = []
    for pattern in patterns:
        for d in sorted(glob.glob(pattern)) or []:
            d = Path(d)
            if not d.is_dir():
                continue
            if (d / "train_summary.json").exists():
                out.append(d)
            else:
                out.extend(sorted(p.parent for p in d.glob("**/train_summary.json")))
    return sorted(set(out))


def collect_runs(patterns: Sequence[str]) -> tuple[list[dict], list[str]]:
    """(runs, problems): each run is {dir, train: summary dict, eval: results dict}; problems lists the
    skipped directories with the reason."""
    runs, problems = [], []
    for d in run_dirs(patterns):
        train_path, eval_path = d / "train_summary.json", _find(d, "eval_results.json")
        if eval_path is None:
            problems.append(f"{d}: no eval_results.json")
            continue
        try:
            train = json.loads(train_path.read_text())
            results = json.loads(eval_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            problems.append(f"{d}: unreadable ({e})")
            continue
        missing = [k for k in KEY + ("train_tokens", "train_time_s") if train.get(k) is None]
        if missing:
            problems.append(f"{train_path}: missing field(s) {', '.join(missing)}")
            continue
        if "generation" not in results or "overall" not in results["generation"]:
            problems.append(f"{eval_path}: no generation results")
            continue
        runs.append({"dir": str(d), "train": train, "eval": results})
    if problems:
        log.warning("report: skipped %d run(s): %s", len(problems), "; ".join(problems))
    return runs, problems


# ----------------------------------------------------------------------------- the tables


def _ratio(a, b):
    if a is None or b is None or b == 0 or (isinstance(b, float) and math.isnan(b)):
        return None
    return a / b


def build_rows(runs: list[dict], baseline: str = "raw") -> list[dict]:
    """One row per run with absolute and raw-relative measures, sorted by teacher, student, method,
    then variant (the baseline first)."""
    rows, seen = [], {}
    for r in runs:
        t, g = r["train"], r["eval"]["generation"]["overall"]
        key = tuple(str(t[k]) for k in KEY)
        if key in seen:
            raise ValueError(f"two runs for {dict(zip(KEY, key))}: {seen[key]} and {r['dir']}")
        seen[key] = r["dir"]
        rows.append(
            {
                **dict(zip(KEY, key)),
                "accuracy": g.get("accuracy"),
                "median_reasoning_tokens": g.get("median_reasoning_tokens"),
                "median_output_tokens": g.get("median_output_tokens"),
                "mean_output_tokens": g.get("mean_output_tokens"),
                "train_tokens": t["train_tokens"],
                "train_time_s": t["train_time_s"],
                "multiple_choice": {k: v.get("acc") for k, v in (r["eval"].get("multiple_choice") or {}).items()},
                "dir": r["dir"],
            }
        )
    base = {tuple(row[k] for k in KEY[:3]): row for row in rows if row["variant"] == baseline}
    for row in rows:
        raw = base.get(tuple(row[k] for k in KEY[:3]))
        if raw is None:
            row.update(
                train_speedup=None,
                train_token_ratio=None,
                length_reduction=None,
                accuracy_retention=None,
                token_efficiency=None,
            )
            continue
        row["train_speedup"] = _ratio(raw["train_time_s"], row["train_time_s"])
        row["train_token_ratio"] = _ratio(row["train_tokens"], raw["train_tokens"])
        row["length_reduction"] = _ratio(raw["median_output_tokens"], row["median_output_tokens"])
        row["accuracy_retention"] = _ratio(row["accuracy"], raw["accuracy"])
        row["token_efficiency"] = _ratio(
            _ratio(row["accuracy"], row["mean_output_tokens"]), _ratio(raw["accuracy"], raw["mean_output_tokens"])
        )
    rows.sort(key=lambda r: (r["teacher"], r["student"], r["method"], r["variant"] != baseline, r["variant"]))
    return rows


def _fmt(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if col in KEY:
        return str(v)
    if col in ("accuracy", "accuracy_retention") or col.startswith("ood:"):
        return f"{v:.3f}"
    if col in ("train_speedup", "length_reduction", "token_efficiency"):
        return f"{v:.2f}x"
    if col == "train_token_ratio":
        return f"{v:.3f}"
    if col == "train_time_s":
        return f"{v:.1f}"
    return f"{v:.0f}" if float(v) == int(v) or col.endswith("tokens") else f"{v:.1f}"


def markdown(rows: list[dict], columns: Sequence[str]) -> str:
    return markdown_table(rows, columns, _fmt, [HEADERS.get(c, c.removeprefix("ood:")) for c in columns])


def _csv(rows: list[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    return buf.getvalue()


def ood_rows(rows: list[dict]) -> tuple[list[dict], list[str]]:
    tasks = sorted({t for r in rows for t in r["multiple_choice"]})
    out = []
    for r in rows:
        mc = r["multiple_choice"]
        vals = [mc[t] for t in tasks if mc.get(t) is not None]
        out.append(
            {
                **{k: r[k] for k in KEY},
                **{f"ood:{t}": mc.get(t) for t in tasks},
                "ood:mean": sum(vals) / len(vals) if vals else None,
            }
        )
    return out, list(KEY) + [f"ood:{t}" for t in tasks] + ["ood:mean"]


def plot_student(rows: list[dict], student: str, path: Path) -> Path:
    """Accuracy vs median output tokens for one student: one point per teacher/method/variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["student"] == student and r["accuracy"] is not None and r["median_output_tokens"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    markers = {t: m for t, m in zip(sorted({r["teacher"] for r in pts}), "osD^v<>p*h")}
    for method, color in zip(sorted({r["method"] for r in pts}), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for r in (r for r in pts if r["method"] == method):
            ax.scatter(
                r["median_output_tokens"],
                r["accuracy"],
                marker=markers[r["teacher"]],
                color=color,
                label=f"{r['teacher']} / {method}",
            )
            ax.annotate(
                r["variant"],
                (r["median_output_tokens"], r["accuracy"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=8)
    if pts and min(r["median_output_tokens"] for r in pts) > 0:
        ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)  # room for the variant labels
    ax.set_xlabel("median output tokens at inference")
    ax.set_ylabel("accuracy (in-distribution)")
    ax.set_title(f"{student}: accuracy vs output length")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_report(rows: list[dict], out_dir: str | os.PathLike, problems: Sequence[str] = ()) -> dict:
    """Tables (markdown + CSV) and plots; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    ood, ood_cols = ood_rows(rows)
    for name, table, cols in (("main", rows, MAIN_COLUMNS), ("ood", ood, ood_cols)):
        (out / f"{name}_table.md").write_text(markdown(table, cols))
        (out / f"{name}_table.csv").write_text(_csv(table, cols))
        paths[name] = {"md": str(out / f"{name}_table.md"), "csv": str(out / f"{name}_table.csv")}
    paths["plots"] = {
        s: str(plot_student(rows, s, out / f"accuracy_vs_length_{_safe(s)}.png"))
        for s in sorted({r["student"] for r in rows})
    }
    (out / "report.json").write_text(json.dumps({"rows": rows, "skipped": list(problems), "files": paths}, indent=2))
    paths["json"] = str(out / "report.json")
    return paths


def print_main_table(rows: list[dict], file=None) -> str:
    """Print (and return) the main table of build_rows' rows in markdown."""
    import sys

    text = markdown(rows, MAIN_COLUMNS)
    print(text, file=file or sys.stdout)
    return text


def run(config) -> dict:
    """Collect the runs named by config.runs, write the report to config.output_dir; returns paths."""
    validate(config)
    runs, problems = collect_runs(config.runs)
    if not runs:
        raise ValueError(
            f"report: no complete runs under {config.runs!r}" + (f" ({'; '.join(problems)})" if problems else "")
        )
    rows = build_rows(runs, config.baseline)
    paths = write_report(rows, config.output_dir, problems)
    print_main_table(rows)
    log.info("report: %d runs (%d skipped) -> %s", len(runs), len(problems), config.output_dir)
    return paths


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_stage(run, default_config)
