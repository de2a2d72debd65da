"""Report: tables, intervals and paired comparisons from synthetic runs whose truth is known."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from jax_distill import report

N = 200  # evaluation problems per run


def wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def write_run(root, name, *, variant, correct, tokens, seed=0, teacher="qwen", student="tiny-a", method="lora",
              train_tokens=1000, train_time_s=100.0, data_path=(), mc=None, datasets=None):
    """A run directory as train + evaluate write it; correct[i] says whether problem i was answered."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "train_summary.json").write_text(json.dumps({
        "teacher": teacher, "student": student, "method": method, "variant": variant, "seed": seed,
        "train_tokens": train_tokens, "train_time_s": train_time_s, "data_path": list(data_path), "status": "complete"}))
    datasets = datasets or ["arith"] * len(correct)
    samples = [{"id": f"p{i:03d}", "dataset": d, "sample": 0, "correct": bool(c), "output_tokens": tokens}
               for i, (c, d) in enumerate(zip(correct, datasets))]
    (run / "eval" / "eval_samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    overall = {"n": len(correct), "accuracy": float(np.mean(correct)), "mean_output_tokens": float(tokens),
               "median_output_tokens": float(tokens), "mean_reasoning_tokens": float(tokens - 5), "truncation_rate": 0.0}
    (run / "eval" / "eval_results.json").write_text(json.dumps(
        {"generation": {"overall": overall, "by_dataset": {}}, "multiple_choice": mc or {}}))
    return run


def first(k, n=N):
    return [1] * k + [0] * (n - k)


@pytest.fixture
def grid(tmp_path):
    root = tmp_path / "runs"
    comp_dir = tmp_path / "traces" / "compressed-llama"
    comp_dir.mkdir(parents=True)
    (comp_dir / "summary.json").write_text(json.dumps({
        "stage": "compress", "total": {"inputs": 100, "compressed": 90, "fallback_raw": 8, "dropped": 2, "errors": {}},
        "table": [{"dataset": "arith", "compressor": "llama", "examples": 98, "compressed": 90, "fallback_raw": 8,
                   "mean_rho_chars": 0.25, "mean_rho_tokens": 0.3}]}))
    mc = {"hellaswag": {"n": 100, "acc": 0.31, "acc_norm": 0.35}}
    write_run(root, "raw", variant="raw", correct=first(160), tokens=400, train_tokens=10_000, train_time_s=400.0, mc=mc)
    # wide margin below raw: resolved
    write_run(root, "answer_only", variant="answer-only", correct=first(40), tokens=10, train_tokens=1_000,
              train_time_s=50.0)
    # the same accuracy as raw on other items: not resolved (McNemar on 40 vs 40 discordant pairs)
    write_run(root, "compressed", variant="compressed-llama", correct=[1] * 120 + [0] * 40 + [1] * 40, tokens=100,
              train_tokens=2_500, train_time_s=100.0, data_path=[str(comp_dir)])
    write_run(root, "truncated", variant="truncated-llama", correct=first(100), tokens=100, train_tokens=2_500,
              train_time_s=100.0)
    # one cell trained with three seeds
    for s, k in enumerate((150, 160, 170)):
        write_run(root, f"full-raw-s{s}", variant="raw", method="full", seed=s, correct=first(k), tokens=380)
    (root / "broken").mkdir()
    (root / "broken" / "train_summary.json").write_text(json.dumps({"teacher": "qwen"}))  # no eval, no fields
    return root


def run_report(root, out, **fields):
    from jax_distill.cli import load_config

    cfg = load_config("configs/eval/report.py", {"runs": str(root), "output_dir": str(out), "n_boot": 2000, **fields})
    return report.run(cfg)


def rows_of(paths, name):
    return list(csv.DictReader(open(paths[name]["csv"])))


def test_every_accuracy_has_its_interval(grid, tmp_path, capsys):
    paths = run_report(grid, tmp_path / "out")
    cells = {(r["method"], r["variant"]): r for r in rows_of(paths, "main")}
    raw = cells[("lora", "raw")]
    lo, hi = wilson_by_hand(160, N)
    assert float(raw["accuracy"]) == 0.8 and int(raw["n"]) == N and int(raw["seeds"]) == 1
    assert float(raw["accuracy_lo"]) == pytest.approx(lo, abs=1e-9) and float(raw["accuracy_hi"]) == pytest.approx(hi, abs=1e-9)
    md = open(paths["main"]["md"]).read()
    assert f"| qwen | tiny-a | lora | {N} | 0.800 [{lo:.3f}, {hi:.3f}] |" in md  # variants are columns, raw first
    assert md.splitlines()[0].startswith("| teacher | student | method | n | raw |")
    printed = capsys.readouterr().out
    assert md.strip() in printed
    skipped = json.loads(open(paths["json"]).read())["skipped"]
    assert len(skipped) == 1 and "broken" in skipped[0] and "no eval_results.json" in skipped[0]


def test_seeds_are_aggregated_with_their_variation(grid, tmp_path):
    paths = run_report(grid, tmp_path / "out")
    full = next(r for r in rows_of(paths, "main") if r["method"] == "full")
    accs = [150 / N, 160 / N, 170 / N]
    assert int(full["seeds"]) == 3 and float(full["accuracy"]) == pytest.approx(np.mean(accs))
    assert float(full["accuracy_sd"]) == pytest.approx(np.std(accs, ddof=1))
    one_seed = wilson_by_hand(160, N)
    # seed variation widens the interval beyond one seed's Wilson interval
    assert float(full["accuracy_hi"]) - float(full["accuracy_lo"]) > one_seed[1] - one_seed[0]
    assert "(3 seeds)" in open(paths["main"]["md"]).read()


def test_paired_comparisons_resolve_only_real_differences(grid, tmp_path):
    paths = run_report(grid, tmp_path / "out")
    comp = {r["variant"]: r for r in rows_of(paths, "comparisons")}
    answer_only, compressed = comp["answer-only"], comp["compressed-llama"]
    assert float(answer_only["diff"]) == pytest.approx(-0.6) and answer_only["resolved"] == "True"
    assert float(answer_only["diff_hi"]) < 0 and float(answer_only["mcnemar_p"]) < 1e-30
    assert float(compressed["diff"]) == 0.0 and compressed["resolved"] == "False"
    assert float(compressed["diff_lo"]) < 0 < float(compressed["diff_hi"])
    assert int(compressed["only_a"]) == 40 and int(compressed["only_b"]) == 40 and float(compressed["mcnemar_p"]) == 1.0
    trunc = rows_of(paths, "truncation")
    assert len(trunc) == 1 and float(trunc[0]["diff"]) == pytest.approx(0.3) and trunc[0]["resolved"] == "True"
    # the discordant pairs: compressed alone right on 60 items (100-119 and 160-199), truncated alone on none
    assert int(trunc[0]["only_a"]) == 60 and int(trunc[0]["only_b"]) == 0
    assert "| qwen | tiny-a | lora | answer-only | raw | 200 | -0.600 [" in open(paths["comparisons"]["md"]).read()


def test_efficiency_and_compression_tables(grid, tmp_path):
    paths = run_report(grid, tmp_path / "out")
    eff = {r["variant"]: r for r in rows_of(paths, "efficiency") if r["method"] == "lora"}
    c = eff["compressed-llama"]
    assert float(c["train_speedup"]) == pytest.approx(4.0) and float(c["train_token_ratio"]) == pytest.approx(0.25)
    assert float(c["length_reduction"]) == pytest.approx(4.0) and float(c["retention"]) == pytest.approx(1.0)
    assert float(c["token_efficiency"]) == pytest.approx(4.0)  # same accuracy in a quarter of the tokens
    assert float(c["retention_lo"]) < 1.0 < float(c["retention_hi"])
    assert float(eff["answer-only"]["retention"]) == pytest.approx(0.25) and float(eff["answer-only"]["retention_hi"]) < 1
    (comp,) = rows_of(paths, "compression")
    assert (comp["teacher"], comp["compressor"], comp["examples"]) == ("qwen", "llama", "98")
    assert float(comp["mean_rho_chars"]) == 0.25 and float(comp["train_token_ratio"]) == 0.25
    assert (comp["fallback_raw"], comp["dropped"]) == ("8", "2")
    (ood,) = rows_of(paths, "ood")
    lo, hi = wilson_by_hand(31, 100)
    assert ood["task"] == "hellaswag" and float(ood["acc_lo"]) == pytest.approx(lo) and float(ood["acc_hi"]) == pytest.approx(hi)
    assert open(paths["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_macro_average_over_datasets(tmp_path):
    """150 easy items (all right) and 50 hard ones (none right): pooled 0.75, macro 0.5."""
    write_run(tmp_path / "runs", "raw", variant="raw", correct=[1] * 150 + [0] * 50, tokens=10,
              datasets=["easy"] * 150 + ["hard"] * 50)
    (row,) = rows_of(run_report(tmp_path / "runs", tmp_path / "out"), "main")
    assert float(row["accuracy"]) == 0.75 and float(row["macro_accuracy"]) == 0.5
    assert float(row["macro_accuracy_lo"]) <= 0.5 <= float(row["macro_accuracy_hi"])


def test_datasets_table_and_harness_metrics_per_task(tmp_path, capsys):
    """Each dataset's accuracy with its interval, the macro and the pooled rows; the OOD table shows
    acc_norm only for the tasks that report it (not TruthfulQA mc2)."""
    mc = {"hellaswag": {"n": 100, "acc": 0.31, "acc_norm": 0.35}, "truthfulqa_mc2": {"n": 50, "acc": 0.42}}
    write_run(tmp_path / "runs", "raw", variant="raw", correct=[1] * 140 + [0] * 10 + [0] * 50, tokens=10,
              datasets=["easy"] * 150 + ["hard"] * 50, mc=mc)
    paths = run_report(tmp_path / "runs", tmp_path / "out")
    rows = {r["dataset"]: r for r in rows_of(paths, "datasets")}
    assert list(rows) == ["easy", "hard", "macro", "pooled"]
    lo, hi = wilson_by_hand(140, 150)
    assert (rows["easy"]["n"], float(rows["easy"]["accuracy"])) == ("150", pytest.approx(140 / 150))
    assert float(rows["easy"]["accuracy_lo"]) == pytest.approx(lo) and float(rows["easy"]["accuracy_hi"]) == pytest.approx(hi)
    assert float(rows["hard"]["accuracy"]) == 0.0
    assert float(rows["macro"]["accuracy"]) == pytest.approx(140 / 300) and float(rows["pooled"]["accuracy"]) == 0.7
    assert "accuracy per dataset" in capsys.readouterr().out
    ood = {r["task"]: r for r in rows_of(paths, "ood")}
    assert ood["truthfulqa_mc2"]["acc_norm"] == "" and ood["truthfulqa_mc2"]["acc_norm_lo"] == ""
    assert float(ood["truthfulqa_mc2"]["acc"]) == 0.42 and float(ood["hellaswag"]["acc_norm"]) == 0.35
    assert "| truthfulqa_mc2 | 50 | 0.420 [" in paths_markdown(paths, "ood") and "| - |" in paths_markdown(paths, "ood")


def paths_markdown(paths, name):
    return open(paths[name]["md"]).read()


def test_a_repeated_seed_is_named(grid, tmp_path):
    write_run(tmp_path / "more", "raw-again", variant="raw", correct=first(10), tokens=400)
    runs, _ = report.collect_runs([str(grid), str(tmp_path / "more")])
    with pytest.raises(ValueError, match=r"two runs for .* seed 0: .*raw-again and .*runs/raw"):
        report.build(runs, n_boot=200)


def test_cli_writes_tables(grid, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "jax_distill.report", "--config", "configs/eval/report.py",
         f"--config.runs={grid}/raw,{grid}/compressed", f"--config.output_dir={tmp_path}/out", "--config.n_boot=500"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "| teacher | student | method | n | raw | compressed-llama |" in res.stdout
    assert "paired differences against raw" in res.stdout
    assert (tmp_path / "out" / "accuracy_vs_length.png").exists()
