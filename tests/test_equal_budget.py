"""The report's equal-budget table (report.equal_budget_rows): raw, the rewrite, prune_tokens, prune_steps
and truncated at one compressor's budget, from synthetic eval files, against a hand computation."""

from test_report import wilson_by_hand, write_run

from jax_distill import report

# ten evaluation items; which ones each variant answered
CORRECT = {
    "raw": [1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
    "compressed-ext": [1, 1, 1, 1, 1, 1, 0, 0, 1, 0],
    "prune-tokens-ext": [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    "prune-steps-ext": [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
    "truncated-ext": [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    "answer-only": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
}
TOKENS = {"raw": 400, "compressed-ext": 100, "prune-tokens-ext": 90, "prune-steps-ext": 95, "truncated-ext": 100,
          "answer-only": 8}
# by hand: (difference, runs only this variant got right, runs only the other got right, exact McNemar p)
# p for b + c discordant pairs = min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c)))
VS_RAW = {"compressed-ext": (-0.1, 1, 2, 1.0), "prune-tokens-ext": (-0.3, 0, 3, 0.25),
          "prune-steps-ext": (-0.2, 0, 2, 0.5), "truncated-ext": (-0.5, 0, 5, 0.0625)}
VS_REWRITE = {"raw": (0.1, 2, 1, 1.0), "prune-tokens-ext": (-0.2, 0, 2, 0.5), "prune-steps-ext": (-0.1, 0, 1, 1.0),
              "truncated-ext": (-0.4, 0, 4, 0.125)}


def test_equal_budget_table_matches_a_hand_computation(tmp_path):
    root = tmp_path / "runs"
    for variant, correct in CORRECT.items():
        write_run(root, variant, variant=variant, correct=correct, tokens=TOKENS[variant], train_tokens=100)
    runs, skipped = report.collect_runs([str(root)])
    assert not skipped
    rows = report.build(runs, n_boot=2000)["equal_budget"]
    assert [r["method_at_budget"] for r in rows] == ["raw", "compressed", "prune_tokens", "prune_steps", "truncated"]
    assert all(r["budget"] == "ext" and (r["teacher"], r["student"], r["method"]) == ("qwen", "tiny-a", "lora") for r in rows)
    for r in rows:
        k = sum(CORRECT[r["variant"]])
        lo, hi = wilson_by_hand(k, 10)
        assert r["n"] == 10 and r["accuracy"] == k / 10
        assert abs(r["accuracy_lo"] - lo) < 1e-9 and abs(r["accuracy_hi"] - hi) < 1e-9
        assert r["mean_output_tokens"] == TOKENS[r["variant"]]
        for against, expected in (("raw", VS_RAW), ("compressed", VS_REWRITE)):
            if r["variant"] not in expected:
                assert f"vs_{against}_diff" not in r  # itself
                continue
            diff, only_a, only_b, p = expected[r["variant"]]
            assert abs(r[f"vs_{against}_diff"] - diff) < 1e-12 and r[f"vs_{against}_n"] == 10
            assert abs(r[f"vs_{against}_mcnemar_p"] - p) < 1e-12
            assert (r[f"vs_{against}_only_a"], r[f"vs_{against}_only_b"]) == (only_a, only_b)
            assert r[f"vs_{against}_diff_lo"] <= diff <= r[f"vs_{against}_diff_hi"]
            assert r[f"vs_{against}_resolved"] == (r[f"vs_{against}_diff_hi"] < 0 or r[f"vs_{against}_diff_lo"] > 0)
    truncated = rows[-1]
    assert truncated["vs_raw_resolved"] and truncated["vs_raw_diff_hi"] < 0  # five discordant pairs, all one way

    from jax_distill.cli import load_config

    out = tmp_path / "report"
    report.run(load_config("configs/eval/report.py", {"runs": str(root), "output_dir": str(out), "n_boot": 2000}))
    table = (out / "equal_budget_table.md").read_text()
    assert "| prune_steps | prune-steps-ext | 10 | 0.600 [" in table and "p=0.500" in table
    assert (out / "equal_budget_table.csv").read_text().count("\n") == 6  # header + five methods
