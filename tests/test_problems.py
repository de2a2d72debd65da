"""Problems: answer extraction/checking, the synthetic generator, local sources with bad rows, splits,
decontamination."""

import json

import pytest

from jax_distill.problems import check_answers, extract_answer, load_problems, load_problems_with_report, synthetic
from jax_distill.problems.problem import Problem
from jax_distill.problems.sources import default_config
from jax_distill.records import BadRecord


@pytest.mark.parametrize("text,answer_type,want", [
    ("so the total is \\boxed{\\frac{1}{2}} indeed", "latex", "\\frac{1}{2}"),
    ("nested \\boxed{\\sqrt{\\frac{a}{b}}}.", "latex", "\\sqrt{\\frac{a}{b}}"),
    ("I think 12 then 13.\nThe answer is 1,234.", "number", "1234"),
    ("Final answer: -3.5", "number", "-3.5"),
    ("we get 7 and then 9\nSo she has 42 apples now.", "number", "42"),
    ("<think>The answer is 3.</think>The answer is \\boxed{4}.", "number", "4"),
    ("<think>maybe 5, so the answer is 5</think>I am done.", "number", "5"),
    ("Comparing options, the answer is (C) green.", "choice", "C"),
    ("Answer: B", "choice", "B"),
    ("reasoning...\n\\boxed{D}", "choice", "D"),
    ("x = \\frac{3}{4}", "latex", "\\frac{3}{4}"),
    ("no digits at all here", "number", None),
    ("", "number", None),
])
def test_extract_answer(text, answer_type, want):
    assert extract_answer(text, answer_type) == want


def test_extract_answer_rejects_unknown_type():
    with pytest.raises(ValueError, match="answer_type"):
        extract_answer("42", "integer")


def test_check_answers_exact_letters_and_math_verify():
    got = check_answers([
        ("42", "42", "number"),
        ("42.0", "42", "number"),
        ("43", "42", "number"),
        (None, "42", "number"),
        ("B", "B", "choice"),
        ("(b)", "B", "choice"),
        ("C", "B", "choice"),
        ("\\frac{1}{2}", "0.5", "latex"),     # through math-verify in the pool
        ("(x+1)^2", "x^2+2x+1", "latex"),
        ("\\frac{1}{3}", "0.5", "latex"),
    ], timeout_s=30)
    assert got == [True, True, False, False, True, True, False, True, True, False]


def test_check_answers_times_out_pathological_item_and_recovers():
    # A power tower sympy tries to evaluate: the item is unverified (None), the pool is replaced and
    # the next items are still checked.
    got = check_answers([("9^{9^{9^{9^{9}}}}", "3", "latex"), ("\\frac{2}{4}", "\\frac{1}{2}", "latex")], timeout_s=2)
    assert got == [None, True]


def test_synthetic_deterministic_unique_and_solvable():
    a = synthetic.generate(60, seed=3, steps=3, max_value=15)
    b = synthetic.generate(60, seed=3, steps=3, max_value=15)
    assert a == b
    assert len({p.question for p in a}) == 60 and len({p.id for p in a}) == 60
    for p in a:
        steps = synthetic.solve(p.question)
        assert steps is not None and len(steps) - 1 <= 3 and str(steps[-1].after) == p.gold
        assert int(p.gold) >= 0
    assert synthetic.generate(5, seed=4) != synthetic.generate(5, seed=3)


def test_synthetic_easiest_setting_is_small():
    easy = synthetic.generate(50, seed=0, steps=1, max_value=9, ops=("add", "sub"))
    for p in easy:
        steps = synthetic.solve(p.question)
        assert len(steps) == 2 and steps[1].op in ("add", "sub")
        assert all(int(t) <= 18 for t in p.question.split() if t.isdigit())
    with pytest.raises(ValueError, match="ops"):
        synthetic.generate(3, ops=("add", "pow"))


def test_split_is_deterministic_and_stable_when_problems_are_added():
    cfg = default_config()
    cfg.synthetic.num = 200
    train, evals = load_problems(cfg)
    assert len(train) + len(evals) == 200 and 5 <= len(evals) <= 40
    assert {p.id for p in train}.isdisjoint(p.id for p in evals)
    cfg.synthetic.num = 300
    train2, evals2 = load_problems(cfg)
    assert {p.id for p in evals} <= {p.id for p in evals2}  # no id changes side
    assert {p.id for p in train} <= {p.id for p in train2}
    cfg.split_seed = 1
    assert {p.id for p in load_problems(cfg)[1]} != {p.id for p in evals2}


def _local_cfg(path, **fields):
    cfg = default_config()
    cfg.sources = ("local",)
    cfg.local.paths = (str(path),)
    for k, v in fields.items():
        setattr(cfg.local, k, v)
    return cfg


def test_local_jsonl_field_mapping_and_bad_rows_counted(tmp_path):
    path = tmp_path / "mine.jsonl"
    good = [{"uid": f"q{i}", "problem": f"What is {i} + {i}?", "solution": i * 2, "part": "train"} for i in range(6)]
    good.append({"uid": "t0", "problem": "What is 10 + 1?", "solution": "11", "part": "test"})
    lines = [json.dumps(r).encode() for r in good]
    lines += [
        json.dumps({"uid": "bad1", "problem": "What is 1 + 1?"}).encode(),                      # missing answer
        json.dumps({"uid": "bad2", "problem": ["not", "text"], "solution": "3"}).encode(),       # wrong type
        json.dumps({"uid": "bad3", "problem": "What is 2 + 2?", "solution": {"v": 4}}).encode(),  # wrong type
        b'{"uid": "bad4", "problem": "caf\xe9 \xff", "solution": "1"}',                         # invalid UTF-8
        b'{"uid": "bad5", "problem": ',                                                          # invalid JSON
        json.dumps({"uid": "q0", "problem": "What is 9 + 9?", "solution": "18"}).encode(),      # duplicate id
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    cfg = _local_cfg(path, id_field="uid", question_field="problem", gold_field="solution", split_field="part")
    train, evals, report = load_problems_with_report(cfg)
    assert [p.id for p in evals] == ["t0"]
    assert sorted(p.id for p in train) == [f"q{i}" for i in range(6)]
    assert train[3] == Problem("q3", "mine", "What is 3 + 3?", "6", "number")
    src = report["sources"]["local"]
    assert src["rows"] == 13 and src["loaded"] == 8
    assert src["bad_rows"] == {"missing_answer": 1, "wrong_type:question": 1, "wrong_type:answer": 1,
                               "invalid_utf8": 1, "invalid_json": 1}
    assert any(f"{path}:8" in e and "missing_answer" in e for e in src["bad_examples"])
    assert report["duplicate_ids"]["count"] == 1

    cfg.on_bad_row = "error"
    with pytest.raises(BadRecord, match=r"mine.jsonl:8: missing_answer: field 'solution'"):
        load_problems(cfg)


def test_local_parquet_choices(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"id": ["c1", "c2"], "question": ["Sky colour?", "Grass colour?"], "answer": ["b", "(C)"],
            "options": [["red", "blue", "green"], ["red", "blue", "green"]], "split": ["test", "train"]}
    path = tmp_path / "mc.parquet"
    pq.write_table(pa.table(rows), path)
    cfg = _local_cfg(path, answer_type="choice", choices_field="options", split_field="split", dataset="mc")
    train, evals = load_problems(cfg)
    assert evals[0].gold == "B" and evals[0].choices == ("red", "blue", "green")
    assert "(B) blue" in evals[0].question and train[0].gold == "C"
    assert check_answers([(extract_answer("The answer is (C).", "choice"), train[0].gold, "choice")]) == [True]


def test_decontamination_removes_near_duplicates_and_reports(tmp_path):
    path = tmp_path / "d.jsonl"
    eval_q = "A train leaves the station at noon travelling at sixty miles per hour towards the city"
    rows = [
        {"id": "e1", "question": eval_q, "answer": "1", "split": "test"},
        {"id": "t1", "question": "Yesterday a train leaves the station at noon travelling at sixty miles per hour", "answer": "2", "split": "train"},
        {"id": "t2", "question": "A bus leaves the depot at dawn going slowly to the village", "answer": "3", "split": "train"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = _local_cfg(path, split_field="split")
    train, evals, report = load_problems_with_report(cfg)
    assert [p.id for p in train] == ["t2"]
    d = report["decontamination"]
    assert d["removed"] == 1 and d["examples"][0]["train_id"] == "t1" and d["examples"][0]["eval_id"] == "e1"
    cfg.decontam_ngram = 0
    assert len(load_problems(cfg)[0]) == 2


def test_hf_loaders_map_fields(monkeypatch):
    """The hub loaders' field mapping, on in-memory rows shaped like the hub datasets (no network)."""
    import sys
    import types

    from jax_distill.problems.sources import load_hf

    rows = {
        ("openai/gsm8k", "main", "train"): [{"question": "Q1?", "answer": "work <<2*3=6>>\n#### 1,206"}],
        ("openai/gsm8k", "main", "test"): [{"question": "Q2?", "answer": "#### 7"}],
        ("allenai/ai2_arc", "ARC-Challenge", "train"): [
            {"id": "a1", "question": "Pick?", "choices": {"label": ["1", "2", "3"], "text": ["x", "y", "z"]}, "answerKey": "2"}],
        ("allenai/ai2_arc", "ARC-Challenge", "validation"): [],
        ("allenai/ai2_arc", "ARC-Challenge", "test"): [
            {"id": "a2", "question": "Which?", "choices": {"label": ["A", "B"], "text": ["p", "q"]}, "answerKey": "B"}],
        ("Idavidrein/gpqa", "gpqa_diamond", "train"): [
            {"Question": "Hard?", "Correct Answer": "right", "Incorrect Answer 1": "w1", "Incorrect Answer 2": "w2",
             "Incorrect Answer 3": "w3"}],
    }

    def load_dataset(name, config=None, split=None, cache_dir=None):
        return rows[(name, config, split)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    gsm = load_hf("gsm8k")
    assert [(p.id, p.gold, s) for p, s in gsm] == [("gsm8k-train-00000", "1206", "train"), ("gsm8k-test-00000", "7", "test")]
    arc = load_hf("arc_challenge")
    assert [(p.gold, p.choices, s) for p, s in arc] == [("B", ("x", "y", "z"), "train"), ("B", ("p", "q"), "test")]
    assert "(B) y" in arc[0][0].question
    (gpqa, split), = load_hf("gpqa_diamond", seed=0)
    assert split == "test" and gpqa.choices[ord(gpqa.gold) - 65] == "right" and load_hf("gpqa_diamond", seed=0)[0][0] == gpqa
    with pytest.raises(ValueError, match="unknown dataset"):
        load_hf("hellaswag")


def _hub_stub(monkeypatch, sizes):
    """A stub `datasets` serving the paper's three hub datasets in their layouts: MultiArith (train/test),
    GPQA Diamond (only a "train" split on the hub, all of it the test set), ARC-Challenge (train/validation/test)."""
    import sys
    import types

    def rows(name, config, split):
        n = sizes.get((name, split), 0)
        first = {"train": 0, "validation": 500}.get(split, 1000)  # no 8-gram shared between the sides
        if name == "ChilleD/MultiArith":
            return [{"question": f"Tom has {i} marbles and buys {i + 3} more; how many now?", "final_ans": str(2 * i + 3)}
                    for i in range(first, first + n)]
        if name == "Idavidrein/gpqa":
            return [{"Question": f"Which graduate physics quantity number {i} is conserved here?", "Correct Answer": f"{i} a",
                     "Incorrect Answer 1": f"{i} b", "Incorrect Answer 2": f"{i} c", "Incorrect Answer 3": f"{i} d"}
                    for i in range(n)]
        return [{"id": f"{split}-{i}", "question": f"Which science fact number {i} holds on Earth?",
                 "choices": {"label": ["A", "B"], "text": ["yes", "no"]}, "answerKey": "A"} for i in range(first, first + n)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        load_dataset=lambda name, config=None, split=None, cache_dir=None: rows(name, config, split)))


def _paper_cfg(**fields):
    cfg = default_config()
    cfg.sources = ("hf",)
    cfg.hf.names = ("multiarith", "gpqa_diamond", "arc_challenge")
    for k, v in fields.items():
        setattr(cfg, k, v)
    return cfg


PAPER_SIZES = {("ChilleD/MultiArith", "train"): 60, ("ChilleD/MultiArith", "test"): 20,
               ("Idavidrein/gpqa", "train"): 80,
               ("allenai/ai2_arc", "train"): 50, ("allenai/ai2_arc", "validation"): 10, ("allenai/ai2_arc", "test"): 100}


def test_every_dataset_gets_a_held_out_split_by_its_rule(monkeypatch):
    """GPQA Diamond (test only) used to be all evaluation (never trained on) and ARC-Challenge's 110
    validation + test questions outnumbered the rest; each dataset now has both sides, by its own rule."""
    _hub_stub(monkeypatch, PAPER_SIZES)
    train, evals, report = load_problems_with_report(_paper_cfg())
    sides = {name: (sum(p.dataset == name for p in train), sum(p.dataset == name for p in evals))
             for name in ("multiarith", "gpqa_diamond", "arc_challenge")}
    assert sides["multiarith"] == (60, 20) and sides["arc_challenge"] == (50, 110)  # the hub's own splits
    assert 0 < sides["gpqa_diamond"][1] < 25 and sum(sides["gpqa_diamond"]) == 80  # a test-only dataset split by id
    datasets = report["split"]["datasets"]
    assert datasets["gpqa_diamond"]["rule"] == "fraction 0.1 (eval_fraction)"
    assert datasets["arc_challenge"]["rule"] == "source (train and eval splits in the rows)"
    assert {n: (d["train"], d["eval"]) for n, d in datasets.items()} == sides

    cfg = _paper_cfg(held_out=("gpqa_diamond=0.5", "arc_challenge=30", "multiarith=source"))
    train, evals, report = load_problems_with_report(cfg)
    datasets = report["split"]["datasets"]
    assert (datasets["arc_challenge"]["train"], datasets["arc_challenge"]["eval"]) == (130, 30)  # a count, by id
    assert datasets["arc_challenge"]["rule"] == "count 30 (held_out)"
    assert 25 < datasets["gpqa_diamond"]["eval"] < 55 and datasets["gpqa_diamond"]["rule"] == "fraction 0.5 (held_out)"
    assert (datasets["multiarith"]["train"], datasets["multiarith"]["eval"]) == (60, 20)
    again = load_problems(cfg)  # deterministic by id
    assert [p.id for p in again[1]] == [p.id for p in evals] and [p.id for p in again[0]] == [p.id for p in train]
    assert {p.id for p in train}.isdisjoint(p.id for p in evals)
    cfg.split_seed = 1
    assert {p.id for p in load_problems(cfg)[1]} != {p.id for p in evals}

    cfg = _paper_cfg(held_out=("gpqa_diamond=1.0", "arc_challenge=0.0"), eval_limit=5)
    train, evals, report = load_problems_with_report(cfg)
    assert not any(p.dataset == "gpqa_diamond" for p in train) and not any(p.dataset == "arc_challenge" for p in evals)
    # eval_limit is per dataset: the first datasets by name no longer crowd out the others
    assert {n: d["eval"] for n, d in report["split"]["datasets"].items()} == {
        "arc_challenge": 0, "gpqa_diamond": 5, "multiarith": 5}


@pytest.mark.parametrize("held_out, message", [
    (("gpqa_diamond=half",), r"'gpqa_diamond=half': the rule is a share in \[0, 1\]"),
    (("gpqa_diamond=1.5",), r"'gpqa_diamond=1.5': the rule is a share"),
    (("gpqa_diamond",), r"'gpqa_diamond': write name=rule"),
    (("gpqa_diamond=0.5", "gpqa_diamond=3"), r"dataset 'gpqa_diamond' has two rules"),
    (("gpqa=0.5",), r"no dataset \['gpqa'\] among the loaded ones \(arc_challenge, gpqa_diamond, multiarith\)"),
    (("gpqa_diamond=81",), r"gpqa_diamond=81 but gpqa_diamond has 80 problems"),
])
def test_held_out_rules_are_checked(monkeypatch, held_out, message):
    from jax_distill.checks import ConfigError

    _hub_stub(monkeypatch, PAPER_SIZES)
    with pytest.raises(ConfigError, match=r"config\.problems\.held_out: " + message):
        load_problems(_paper_cfg(held_out=held_out))


def test_a_split_test_only_dataset_is_decontaminated_between_its_sides(tmp_path):
    """Two near-identical questions of one test-only file: one held out, the other removed from training."""
    path = tmp_path / "only_test.jsonl"
    rows = [{"id": "a", "question": "A train leaves the station at noon travelling at sixty miles per hour", "answer": "1"},
            {"id": "b", "question": "A train leaves the station at noon travelling at sixty miles per hour today", "answer": "1"},
            {"id": "c", "question": "A bus leaves the depot at dawn going slowly to the village", "answer": "3"}]
    path.write_text("\n".join(json.dumps(dict(r, split="test")) for r in rows))
    cfg = _local_cfg(path, split_field="split")
    cfg.held_out = ("only_test=1",)
    train, evals, report = load_problems_with_report(cfg)
    d = report["split"]["datasets"]["only_test"]
    assert len(evals) == 1 and d["eval"] == 1 and d["rule"] == "count 1 (held_out)"
    if evals[0].id in ("a", "b"):  # its twin shares an 8-gram: not trained on
        assert [p.id for p in train] == ["c"] and d["decontaminated"] == 1
    else:
        assert len(train) == 2 and d["decontaminated"] == 0
    cfg.held_out = ("only_test=source",)
    assert load_problems(cfg)[0] == []  # the rows' own split: all test
    (tmp_path / "plain.jsonl").write_text(json.dumps(rows[0]))
    cfg = _local_cfg(tmp_path / "plain.jsonl")
    cfg.held_out = ("plain=source",)
    from jax_distill.checks import ConfigError
    with pytest.raises(ConfigError, match=r"plain=source but its rows carry no split field"):
        load_problems(cfg)
