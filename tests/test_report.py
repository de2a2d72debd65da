"""Report: tables and plots from a fixture grid of runs, every number recomputed here."""

import csv
import json
import subprocess
import sys

import pytest

from jax_distill import report

# (teacher, student, method, variant) -> (train_tokens, train_time_s, accuracy, median_reasoning, median_out, mean_out)
GRID = {
    ("qwen", "tiny-a", "lora", "raw"): (1_000_000, 400.0, 0.80, 900, 1000, 1100.0),
    ("qwen", "tiny-a", "lora", "llama"): (200_000, 100.0, 0.72, 90, 150, 160.0),
    ("qwen", "tiny-a", "lora", "answer_only"): (50_000, 25.0, 0.30, 0, 12, 14.0),
    ("qwen", "tiny-a", "full", "raw"): (1_000_000, 800.0, 0.85, 950, 1040, 1200.0),
    ("qwen", "tiny-a", "full", "ministral"): (120_000, 160.0, 0.70, 60, 100, 110.0),
    ("gptoss", "tiny-b", "lora", "llama"): (300_000, 90.0, 0.50, 70, 80, 85.0),  # no raw: relative columns empty
}


def make_grid(root):
    for i, (key, (tokens, secs, acc, med_r, med_o, mean_o)) in enumerate(GRID.items()):
        run = root / f"run{i}"
        (run / "eval").mkdir(parents=True)
        (run / "train_summary.json").write_text(
            json.dumps(
                {**dict(zip(report.KEY, key)), "train_tokens": tokens, "train_time_s": secs, "status": "complete"}
            )
        )
        overall = {
            "n": 50,
            "accuracy": acc,
            "median_reasoning_tokens": med_r,
            "median_output_tokens": med_o,
            "mean_output_tokens": mean_o,
            "truncation_rate": 0.0,
        }
        (run / "eval" / "eval_results.json").write_text(
            json.dumps(
                {
                    "checkpoint": str(run / "export"),
                    "generation": {"overall": overall, "by_dataset": {}},
                    "multiple_choice": {"hellaswag": {"acc": 0.25 + i / 100, "acc_norm": 0.3}, "boolq": {"acc": 0.6}},
                }
            )
        )
    (root / "broken").mkdir()
    (root / "broken" / "train_summary.json").write_text(json.dumps({"teacher": "qwen"}))  # no eval, no fields


def test_report_tables_and_plots(tmp_path, capsys):
    make_grid(tmp_path / "runs")
    from jax_distill.cli import load_config

    cfg = load_config("configs/eval/report.py", {"runs": str(tmp_path / "runs"), "output_dir": str(tmp_path / "out")})
    paths = report.run(cfg)
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(paths["main"]["csv"])))
    assert len(rows) == len(GRID)
    num = lambda v: None if v == "" else float(v)  # noqa: E731
    for r in rows:
        key = tuple(r[k] for k in report.KEY)
        tokens, secs, acc, med_r, med_o, mean_o = GRID[key]
        assert num(r["accuracy"]) == acc and num(r["median_reasoning_tokens"]) == med_r
        assert num(r["train_tokens"]) == tokens and num(r["train_time_s"]) == secs
        raw = GRID.get(key[:3] + ("raw",))
        if raw is None:
            assert all(
                r[c] == "" for c in ("train_speedup", "length_reduction", "accuracy_retention", "token_efficiency")
            )
            continue
        assert num(r["train_speedup"]) == pytest.approx(raw[1] / secs)
        assert num(r["train_token_ratio"]) == pytest.approx(tokens / raw[0])
        assert num(r["length_reduction"]) == pytest.approx(raw[4] / med_o)
        assert num(r["accuracy_retention"]) == pytest.approx(acc / raw[2])
        assert num(r["token_efficiency"]) == pytest.approx((acc / mean_o) / (raw[2] / raw[5]))
    # raw first within its cell, then the other variants
    assert [r["variant"] for r in rows if r["method"] == "lora" and r["student"] == "tiny-a"] == [
        "raw",
        "answer_only",
        "llama",
    ]
    md = open(paths["main"]["md"]).read()
    assert md.strip() in printed  # the main table also goes to stdout
    assert "| qwen | tiny-a | lora | llama | 0.720 | 90 |" in md and "| 4.00x |" in md  # 400 s / 100 s
    ood = list(csv.DictReader(open(paths["ood"]["csv"])))
    assert float(ood[0]["ood:mean"]) == pytest.approx((float(ood[0]["ood:hellaswag"]) + 0.6) / 2)
    assert set(paths["plots"]) == {"tiny-a", "tiny-b"}
    for png in paths["plots"].values():
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    skipped = json.loads(open(paths["json"]).read())["skipped"]
    assert len(skipped) == 1 and "broken" in skipped[0] and "no eval_results.json" in skipped[0]


def test_duplicate_runs_are_named(tmp_path):
    make_grid(tmp_path / "a")
    make_grid(tmp_path / "b")
    runs, _ = report.collect_runs(f"{tmp_path}/a,{tmp_path}/b")
    with pytest.raises(ValueError, match=r"two runs for .*run0 and .*run0"):
        report.build_rows(runs)


def test_cli_writes_tables(tmp_path):
    make_grid(tmp_path / "runs")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "jax_distill.report",
            "--config",
            "configs/eval/report.py",
            f"--config.runs={tmp_path}/runs/run*",
            f"--config.output_dir={tmp_path}/out",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "| teacher | student | method | variant | acc |" in res.stdout
    assert (tmp_path / "out" / "accuracy_vs_length_tiny-a.png").exists()
