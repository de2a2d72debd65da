"""The study's controls on what each variant trains on: matched id sets across variants (compression
failures and over-long raw traces remove a question from every variant, counted by rule), the declared
compression-failure policy with rho over all inputs and over successes, and data.ids_file in training."""

import json
import statistics
from pathlib import Path

import pytest
from hf_tiny import load_tokenizer, tokenizer_dir
from ml_collections import ConfigDict
from test_traces import CompressorEngine

from jax_distill.cli import load_config
from jax_distill.data import ChatFormat, data_config, example_dataset
from jax_distill.data import matched
from jax_distill.traces import compress, generate, store, truncate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """Raw traces (verbose, so some are long), their compressions under the default policy, answer-only."""
    tmp = tmp_path_factory.mktemp("matched")
    raw, comp, ans = tmp / "raw", tmp / "comp", tmp / "answer-only"
    generate.run(load_config(str(ROOT / "configs/traces/generate.py"), {
        "out_dir": str(raw), "problems.synthetic.num": 40, "sampling.n": 1, "engine.procedural.wrong_rate": 0.0,
        "engine.procedural.detour_rate": 0.5}))
    summary = compress.run(load_config(str(ROOT / "configs/traces/compress.py"), {
        "in_dir": str(raw), "out_dir": str(comp), "compressor.kind": "engine", "student_tokenizer": str(tokenizer_dir())}),
        engine=CompressorEngine("every_third"))  # a third fail however often retried
    truncate.run(load_config(str(ROOT / "configs/traces/truncate.py"), {
        "raw_dir": str(raw), "compressed_dir": "", "out_dir": str(ans), "variants": "answer_only",
        "student_tokenizer": str(tokenizer_dir())}))
    return tmp, raw, comp, ans, summary


def test_failed_compressions_are_retried_then_dropped_and_rho_counts_them(traces):
    _, raw, comp, _, summary = traces
    total = summary["total"]
    assert summary["policy"] == "retry" and summary["balanced"]  # the declared default: retry, then drop
    n_raw = len(list(store.read_records(str(raw))))
    assert total["inputs"] == n_raw and total["dropped"] > 0 and total["fallback_raw"] == 0
    assert total["failed_attempts"]["answer_missing"] == 3 * total["dropped"]  # 1 + retries=2 attempts each
    recs = list(store.read_records(str(comp)))
    assert len(recs) == total["compressed"] == n_raw - total["dropped"]
    row = summary["table"][0]
    rhos = [r["meta"]["rho_chars"] for r in recs]
    assert row["inputs"] == n_raw and row["failed"] == total["dropped"]
    assert row["mean_rho_chars"] == pytest.approx(statistics.fmean(rhos), abs=1e-4)  # over successes
    # over all inputs: each failure counts as the raw trace kept whole (rho 1)
    assert row["mean_rho_chars_all"] == pytest.approx((sum(rhos) + total["dropped"]) / n_raw, abs=1e-4)
    assert row["mean_rho_chars_all"] > row["mean_rho_chars"]


def lengths(directory: Path) -> dict[str, int]:
    """Source id -> training example length (tokens) of each record, as training formats it."""
    chat = ChatFormat(load_tokenizer(), data_config())
    return {matched.source_id(r["id"], r["variant"]): len(chat.encode(r["question"], r["trace"], r["answer"])[0]) - 1
            for r in store.read_records(str(directory))}


def match_config(tmp, raw, comp, ans, seq_len):
    cfg = matched.default_config()
    cfg.variants = ConfigDict({"raw": str(raw), "compressed-x": str(comp), "answer-only": str(ans)})
    cfg.raw_dir, cfg.tokenizer, cfg.seq_len, cfg.out_dir = str(raw), str(tokenizer_dir()), seq_len, str(tmp / "m")
    return cfg


def test_matched_set_drops_a_question_from_every_variant_and_counts_each_rule(traces, capsys):
    tmp, raw, comp, ans, _ = traces
    raw_len, comp_len = lengths(raw), lengths(comp)
    seq_len = int(statistics.median(raw_len.values()))  # about half the raw traces are too long
    assert max(comp_len.values()) <= seq_len  # every compressed twin fits: only raw loses them today
    summary = matched.run(match_config(tmp, raw, comp, ans, seq_len))
    failed = set(raw_len) - set(comp_len)
    overlong = {i for i, n in raw_len.items() if n > seq_len}
    assert failed and overlong - failed
    assert summary["universe"] == len(raw_len)
    assert summary["removed"] == {"missing:compressed-x": len(failed), "overlong_dropped:raw": len(overlong - failed)}
    assert summary["kept"] == len(raw_len) - len(failed | overlong)
    assert summary["generation"] == json.loads((raw / "summary.json").read_text())["total"]["generated"] - len(raw_len)
    ids = {v: Path(f).read_text().split() for v, f in summary["ids_files"].items()}
    sources = {v: sorted(matched.source_id(i, {"raw": "raw", "compressed-x": "compressed"}.get(v, "answer_only"))
                         for i in rows) for v, rows in ids.items()}
    assert sources["raw"] == sources["compressed-x"] == sources["answer-only"] and len(sources["raw"]) == summary["kept"]
    assert f"{summary['kept']} of {summary['universe']} traces in every variant" in capsys.readouterr().out
    # training reads only the listed ids: every variant trains on the same questions, the rest counted
    for variant, directory in (("compressed-x", comp), ("raw", raw)):
        cfg = data_config()
        cfg.path, cfg.ids_file, cfg.shuffle = (str(directory),), summary["ids_files"][variant], False
        ds, stats = example_dataset(cfg, load_tokenizer(), seq_len=seq_len, seed=0)
        assert len(list(ds)) == summary["kept"] == stats.used
        assert stats.skipped["not_in_ids"] == stats.read - summary["kept"] > 0
        assert stats.skipped["overlong_dropped"] == 0  # the matched set left no over-long record to drop
    # unchanged inputs: the saved result, nothing recomputed
    again = matched.run(match_config(tmp, raw, comp, ans, seq_len))
    assert again == json.loads((tmp / "m" / "matched.json").read_text()) and capsys.readouterr().out == ""


def test_ids_file_must_exist(tmp_path):
    from jax_distill.data import validate

    cfg = data_config()
    cfg.path, cfg.ids_file = (str(tmp_path),), str(tmp_path / "missing.txt")
    (tmp_path / "a.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"config\.data\.ids_file: no such file"):
        validate(cfg)
