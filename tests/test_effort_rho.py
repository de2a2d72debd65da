"""The `effort` baseline's rho: a gpt-oss teacher at a lower reasoning effort against the same teacher's
kept traces at the reference effort, paired by question, in the report's compression table; the
experiment's effort_of field that names the pair."""

import csv
import json
import statistics

import pytest

from jax_distill import experiment, report
from jax_distill.cli import load_config
from jax_distill.traces import store

from test_report import run_report, write_run


def sample(problem, k, chars, tokens, dataset="arith"):
    """A kept raw record of sample k of `problem` whose trace has `chars` characters."""
    meta = {"stage": "generate", "engine": "vllm", "model": "gpt-oss", "correct": True, "student_tokens": tokens}
    p = {"problem_id": problem, "dataset": dataset, "question": f"question {problem}?", "gold": "7",
         "answer_type": "number"}
    return store.make_record(id=f"{problem}/s{k}", problem=p, answer="The answer is 7.", trace="x" * chars,
                             variant="raw", meta=meta)


def write_raw(folder, records, generated, errors=()):
    """A generate stage folder: one finished chunk over the problems `generated`, its kept records and
    the errors of the samples it lost to the engine."""
    errs = [{"id": f"{p}/s0", "problem_id": p, "stage": "generate", "reason": "engine_error", "detail": ""} for p in errors]
    store.write_chunk(str(folder), "generate-shard000of001", 0, records, errs,
                      {"stage": "generate", "ids": list(generated), "counts": {}})
    return str(folder)


# (problem, dataset) -> kept samples as (chars, student tokens) at each effort
HIGH = {("q1", "arith"): [(100, 20), (60, 12)], ("q2", "arith"): [(50, 10)], ("q3", "arith"): [(40, 8)],
        ("q4", "arith"): [(30, 6)], ("q5", "arith"): [(20, 4)], ("g1", "gpqa"): [(200, 40)],
        ("g2", "gpqa"): [(100, None)]}
LOW = {("q1", "arith"): [(20, 8)], ("q2", "arith"): [(25, 5), (15, 3)], ("q6", "arith"): [(10, 2)],
       ("q7", "arith"): [(10, 2)], ("g1", "gpqa"): [(50, 10)], ("g2", "gpqa"): [(30, 7)]}
HIGH_GENERATED = ("q1", "q2", "q3", "q4", "q5", "q6", "g1", "g2")  # q6 rejected at high; q7 never asked
LOW_GENERATED = ("q1", "q2", "q3", "q4", "q6", "q7", "g1", "g2")  # q5 never asked at low
LOW_ERRORS = ("q4",)  # q4 lost at low to an engine error, q3 by rejection


@pytest.fixture
def effort_pair(tmp_path):
    records = lambda kept: [sample(p, k, c, t, d) for (p, d), s in kept.items() for k, (c, t) in enumerate(s)]  # noqa: E731
    high = write_raw(tmp_path / "high" / "raw", records(HIGH), HIGH_GENERATED)
    low = write_raw(tmp_path / "low" / "raw", records(LOW), LOW_GENERATED, LOW_ERRORS)
    return low, high


def by_hand(datasets=("arith", "gpqa")):
    """rho per question kept at both: mean length of its kept samples at low / the same at high."""
    chars, tokens, lost = [], [], 0
    for (p, d), high in HIGH.items():
        if d not in datasets or p not in LOW_GENERATED:
            continue
        low = LOW.get((p, d))
        if low is None:
            lost += 1
            continue
        chars.append(statistics.fmean(c for c, _ in low) / statistics.fmean(c for c, _ in high))
        if all(t is not None for _, t in high + low):
            tokens.append(statistics.fmean(t for _, t in low) / statistics.fmean(t for _, t in high))
    return chars, tokens, lost


def test_effort_rho_pairs_questions_by_id_and_counts_the_lost(effort_pair):
    from jax_distill.traces.stats import effort_table

    low, high = effort_pair
    rows = {r["dataset"]: r for r in effort_table(low, high, "effort:low")}
    arith = rows["arith"]
    # q1: 20 / mean(100, 60); q2: mean(25, 15) / 50; in tokens 8 / 16 and 4 / 10
    assert by_hand(("arith",))[:2] == ([0.25, 0.4], [0.5, 0.4])
    assert arith["mean_rho_chars"] == pytest.approx(0.325) and arith["mean_rho_tokens"] == pytest.approx(0.45)
    # over every question kept at high and asked at low: q3 and q4, lost at low, at 1
    assert arith["mean_rho_chars_all"] == pytest.approx((0.25 + 0.4 + 2) / 4)
    assert arith["mean_rho_tokens_all"] == pytest.approx((0.5 + 0.4 + 2) / 4)
    assert (arith["inputs"], arith["examples"], arith["dropped"], arith["errors"]) == (4, 2, 1, 1)
    # q5 (never asked at low), q7 (never asked at high): unpaired; q6: rejected at high, kept at low
    assert (arith["unpaired"], arith["kept_only_at_effort"]) == (2, 1)
    assert (arith["reference_samples"], arith["effort_samples"]) == (3, 3)
    gpqa = rows["gpqa"]  # g2 has no student-token count at high: in rho in chars only
    assert gpqa["mean_rho_chars"] == pytest.approx((0.25 + 0.3) / 2) and gpqa["mean_rho_tokens"] == pytest.approx(0.25)
    (total,) = effort_table(low, high, "effort:low", by_dataset=False)
    chars, tokens, lost = by_hand()
    assert total["mean_rho_chars"] == pytest.approx(statistics.fmean(chars), abs=1e-4)
    assert total["mean_rho_tokens"] == pytest.approx(statistics.fmean(tokens), abs=1e-4)
    assert total["mean_rho_chars_all"] == pytest.approx(statistics.fmean(chars + [1.0] * lost), abs=1e-4)
    assert total["mean_rho_tokens_all"] == pytest.approx(statistics.fmean(tokens + [1.0] * lost), abs=1e-4)
    assert (total["inputs"], total["examples"], total["dropped"], total["errors"], total["unpaired"]) == (6, 4, 1, 1, 2)


def test_compression_table_shows_the_effort_row(effort_pair, tmp_path):
    low, high = effort_pair
    root = tmp_path / "runs"
    # the low-effort teacher's raw runs train on 300 tokens, the reference teacher's on 1000 and 500
    for teacher, method, tokens in (("gptoss", "lora", 1000), ("gptoss-low", "lora", 300), ("gptoss", "full", 500),
                                    ("gptoss-low", "full", 200)):
        write_run(root, f"{teacher}-{method}", variant="raw", teacher=teacher, method=method, correct=[1] * 20,
                  tokens=50, train_tokens=tokens)
    # beside a compressor whose stage counted no student tokens
    comp_dir = tmp_path / "compressed-llama"
    comp_dir.mkdir()
    (comp_dir / "summary.json").write_text(json.dumps({"policy": "retry", "total": {"dropped": 1, "errors": {}}, "table": [
        {"dataset": "arith", "compressor": "llama", "inputs": 10, "examples": 9, "compressed": 9, "mean_rho_chars": 0.3,
         "mean_rho_chars_all": 0.37, "mean_rho_tokens": None, "mean_rho_tokens_all": None}]}))
    write_run(root, "compressed", variant="compressed-llama", teacher="gptoss", correct=[1] * 20, tokens=20,
              train_tokens=400, data_path=[str(comp_dir)])
    efforts = {"gptoss-low": dict(of="gptoss", effort="low", of_effort="high", traces=low, of_traces=high)}
    paths = run_report(root, tmp_path / "out", efforts=efforts)
    compressor, row = list(csv.DictReader(open(paths["compression"]["csv"])))
    assert (compressor["kind"], compressor["mean_rho_chars"], compressor["mean_rho_tokens"]) == ("compressor", "0.3", "")
    chars, tokens, lost = by_hand()
    assert (row["kind"], row["teacher"], row["compressor"]) == ("teacher_effort", "gptoss", "effort:low (gptoss-low)")
    assert float(row["mean_rho_chars"]) == pytest.approx(statistics.fmean(chars), abs=1e-4)
    assert float(row["mean_rho_tokens_all"]) == pytest.approx(statistics.fmean(tokens + [1.0] * lost), abs=1e-4)
    assert float(row["train_token_ratio"]) == pytest.approx((300 / 1000 + 200 / 500) / 2)
    assert (row["inputs"], row["examples"], row["dropped"], row["errors"]) == ("6", "4", "1", "1")
    assert (row["unpaired"], row["kept_only_at_effort"]) == ("2", "1")
    md = open(paths["compression"]["md"]).read()
    assert md.splitlines()[0].endswith("| dropped | errors | unpaired | kept_only_at_effort |")
    assert (f"| gptoss | effort:low (gptoss-low) | teacher effort vs high | 6 | 4 | {statistics.fmean(chars):.3f} |"
            in md)
    assert "| gptoss | llama | retry | 10 | 9 | 0.300 | 0.370 | - | - | 0.400 | - | 1 | 0 | - | - |" in md
    assert json.loads(open(paths["json"]).read())["compression"][1]["effort_samples"] == 5


def test_report_refuses_an_effort_pair_in_the_wrong_order(effort_pair, tmp_path):
    low, high = effort_pair
    write_run(tmp_path / "runs", "raw", variant="raw", correct=[1] * 20, tokens=50)
    efforts = {"gptoss-low": dict(of="gptoss", effort="high", of_effort="low", traces=low, of_traces=high)}
    with pytest.raises(ValueError, match=r"config\.efforts\.gptoss-low\.effort: 'high' must be a lower"):
        run_report(tmp_path / "runs", tmp_path / "out", efforts=efforts)


def paper(tmp_path, preset=":effort", **fields):
    return load_config(f"configs/experiment/paper.py{preset}", {"workdir": str(tmp_path), "plan_only": True, **fields})


def test_paper_effort_preset_plans_the_pair_into_the_report(tmp_path):
    from ml_collections import ConfigDict

    cfg = paper(tmp_path)
    cells = [str(c) for c in experiment.cells(cfg)]
    assert len(cells) == 60 and [c for c in cells if c.startswith("gptoss-120b-low/")] == [
        f"gptoss-120b-low/{s}/lora/raw" for s in ("qwen35-0p8b", "qwen35-9b", "llama31-8b", "gptoss-20b")]
    cfg.unlock()
    cfg.grids, cfg.cells = ConfigDict(), ("gptoss-120b-low/qwen35-0p8b/lora/raw",)
    result = experiment.run(cfg)
    assert [r["cell"] for r in result["costs"]] == list(cfg.cells)
    generated = {t: json.loads((tmp_path / "traces" / t / "raw" / "generate_config.json").read_text())
                 for t in ("gptoss-120b-low", "gptoss-120b")}  # the reference generates with no cell of its own
    assert [g["engine"]["chat_template_kwargs"] for g in generated.values()] == [
        '{"reasoning_effort": "low"}', '{"reasoning_effort": "high"}']
    cfg = json.loads((tmp_path / "report" / "report_config.json").read_text())
    assert cfg["efforts"] == {"gptoss-120b-low": {
        "of": "gptoss-120b", "effort": "low", "of_effort": "high",
        "traces": str(tmp_path / "traces" / "gptoss-120b-low" / "raw"),
        "of_traces": str(tmp_path / "traces" / "gptoss-120b" / "raw")}}


@pytest.mark.parametrize("change, message", [
    ({"effort_of": {"gptoss-120b": "gptoss-120b-low"}}, "must be a lower reasoning effort"),
    ({"effort_of": {"gptoss-120b-low": "qwen35-397b"}}, "harmony"),
    ({"effort_of": {"gptoss-120b-low": "gpt-5"}}, "names no teacher"),
    ({"teachers.gptoss-120b-low.sampling.temperature": 0.6}, r"differ beyond the reasoning effort in \['sampling.temperature'\]"),
    ({"teachers.gptoss-120b-low.engine.model": "/other/gpt-oss-20b"}, r"\['engine.model'\]"),
])
def test_effort_of_names_one_teacher_at_two_efforts(tmp_path, change, message):
    from ml_collections import ConfigDict

    cfg = paper(tmp_path)
    cfg.unlock()
    for field, value in change.items():
        if field == "effort_of":
            cfg.effort_of = ConfigDict(value)
        else:
            node, leaf = cfg, field.split(".")
            for part in leaf[:-1]:
                node = node[part]
            node[leaf[-1]] = value
    with pytest.raises(ValueError, match=message):
        experiment.validate(cfg)
    # placement (where and how fast it runs) may differ: the traces do not depend on it
    ok = paper(tmp_path, **{"teachers.gptoss-120b-low.engine.vllm.tensor_parallel_size": 8,
                            "teachers.gptoss-120b-low.chunk_size": 16})
    experiment.validate(ok)
