"""Problem sources and the train/eval split.

Sources (config `sources`, comma-separated, combined in that order):
  synthetic  the built-in arithmetic word problems (problems/synthetic.py), the default
  local      JSONL or Parquet files with a field mapping (id, question, gold, choices, split, answer type)
  hf         Hugging Face `datasets` loaders (multiarith, gsm8k, math500, gpqa_diamond, arc_challenge);
             only when a hub is reachable, never in tests; `datasets` is an optional dependency.
Split: a row's own split field ("train" / "test" | "eval" | "validation") when the source has one, else
a stable hash of (split_seed, id) against `eval_fraction`, so a problem never changes side when others
are added. Training questions are then n-gram decontaminated against all evaluation questions.
Bad rows (invalid UTF-8 or JSON, missing question/answer, wrong types, duplicate ids) are skipped and
counted by reason in the report, with file:line examples, or raise naming the file/line/field when
`on_bad_row="error"`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import Counter
from typing import Any, Iterator

log = logging.getLogger(__name__)

EVAL_SPLITS = ("test", "eval", "validation", "dev")


class BadRow(ValueError):
    def __init__(self, reason: str, where: str, detail: str = ""):
        super().__init__(f"{where}: {reason}{': ' + detail if detail else ''}")
        self.reason, self.where = reason, where


def is_eval(problem_id: str, eval_fraction: float, split_seed: int) -> bool:
    h = hashlib.sha256(f"{split_seed}:{problem_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < eval_fraction


# ----------------------------------------------------------------------------- local files


def _rows_jsonl(path: str) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, BadRow("invalid_utf8", where, str(e))
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                yield where, BadRow("invalid_json", where, str(e))


def _rows_parquet(path: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path}:row{i}", row


def _get(row: dict, field: str):
    """Dotted field access ("choices.text") into nested dicts."""
    node = row
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def row_to_problem(row: Any, where: str, cfg, dataset: str, index: int):
    """One mapped row -> (Problem, split or None); raises BadRow with the reason."""
    from jax_distill.problems import ANSWER_TYPES, Problem

    if not isinstance(row, dict):
        raise BadRow("wrong_type:row", where, f"expected an object, got {type(row).__name__}")
    question = _get(row, cfg.question_field)
    if question is None or (isinstance(question, str) and not question.strip()):
        raise BadRow("missing_question", where, f"field {cfg.question_field!r}")
    if not isinstance(question, str):
        raise BadRow("wrong_type:question", where, f"field {cfg.question_field!r} is {type(question).__name__}")
    gold = _get(row, cfg.gold_field)
    if gold is None or (isinstance(gold, str) and not gold.strip()):
        raise BadRow("missing_answer", where, f"field {cfg.gold_field!r}")
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise BadRow("wrong_type:answer", where, f"field {cfg.gold_field!r} is {type(gold).__name__}")
    answer_type = (_get(row, cfg.answer_type_field) if cfg.answer_type_field else None) or cfg.answer_type
    if answer_type not in ANSWER_TYPES:
        raise BadRow("wrong_type:answer_type", where, f"{answer_type!r} not in {ANSWER_TYPES}")
    choices = _get(row, cfg.choices_field) if cfg.choices_field else None
    if choices is None:
        choices = ()
    elif not isinstance(choices, (list, tuple)) or not all(isinstance(c, str) for c in choices):
        raise BadRow("wrong_type:choices", where, f"field {cfg.choices_field!r} must be a list of strings")
    pid = _get(row, cfg.id_field) if cfg.id_field else None
    if pid is None:
        pid = f"{dataset}-{index:06d}"
    elif isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise BadRow("wrong_type:id", where, f"field {cfg.id_field!r} is {type(pid).__name__}")
    split = _get(row, cfg.split_field) if cfg.split_field else None
    if split is not None and not isinstance(split, str):
        raise BadRow("wrong_type:split", where, f"field {cfg.split_field!r} is {type(split).__name__}")
    if isinstance(gold, float) and gold.is_integer():
        gold = int(gold)
    gold = str(gold).strip()
    if answer_type == "choice":
        gold = gold.strip("() ").upper()
        if len(gold) != 1 or not gold.isalpha():
            raise BadRow("wrong_type:answer", where, f"choice answer must be a letter, got {gold!r}")
    if choices and not _lists_choices(question, choices):
        question = question.rstrip() + "\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    problem = Problem(str(pid), dataset, question.strip(), gold, answer_type, tuple(choices))
    return problem, split


def _lists_choices(question: str, choices) -> bool:
    return all(c in question for c in choices) and "(A)" in question


def _local_paths(paths: str) -> list[str]:
    out = []
    for p in (s.strip() for s in paths.split(",")):
        if p:
            out.append(p)
    return out


def load_local(cfg, counters: Counter, examples: list, on_bad_row: str):
    """Rows of every file in cfg.paths -> [(Problem, split)]."""
    out = []
    for path in _local_paths(cfg.paths):
        fmt = cfg.format if cfg.format != "auto" else ("parquet" if path.endswith(".parquet") else "jsonl")
        if fmt not in ("jsonl", "parquet"):
            raise ValueError(f"problems.local.format must be auto|jsonl|parquet, got {fmt!r}")
        dataset = cfg.dataset or os.path.splitext(os.path.basename(path))[0]
        rows = _rows_jsonl(path) if fmt == "jsonl" else _rows_parquet(path)
        for index, (where, row) in enumerate(rows):
            counters["rows"] += 1
            try:
                if isinstance(row, BadRow):
                    raise row
                out.append(row_to_problem(row, where, cfg, dataset, index))
            except BadRow as e:
                if on_bad_row == "error":
                    raise
                counters[e.reason] += 1
                if len(examples) < 50:
                    examples.append(str(e))
    return out


# ----------------------------------------------------------------------------- Hugging Face datasets


def _letters(n: int) -> list[str]:
    return [chr(65 + i) for i in range(n)]


def load_hf(name: str, cache_dir: str | None = None, seed: int = 0):
    """One named benchmark from the hub -> [(Problem, split)]. Needs `datasets` and a reachable hub."""
    from jax_distill.problems import Problem

    try:
        import datasets
    except ImportError as e:
        raise RuntimeError(f"problems.hf: source {name!r} needs the `datasets` package (pip install datasets)") from e

    def load(*args, **kw):
        try:
            return datasets.load_dataset(*args, cache_dir=cache_dir or None, **kw)
        except Exception as e:  # noqa: BLE001  (offline machines: say which dataset and why)
            raise RuntimeError(f"problems.hf: cannot load {name!r} ({args[0]}): {e}. Is the hub reachable?") from e

    out = []
    if name == "gsm8k":
        for split in ("train", "test"):
            for i, r in enumerate(load("openai/gsm8k", "main", split=split)):
                gold = r["answer"].split("####")[-1].strip().replace(",", "")
                out.append((Problem(f"gsm8k-{split}-{i:05d}", "gsm8k", r["question"], gold, "number"), split))
    elif name == "multiarith":
        for split in ("train", "test"):
            for i, r in enumerate(load("ChilleD/MultiArith", split=split)):
                gold = str(r["final_ans"]).strip()
                out.append((Problem(f"multiarith-{split}-{i:04d}", "multiarith", r["question"].strip(), gold, "number"), split))
    elif name == "math500":
        for i, r in enumerate(load("HuggingFaceH4/MATH-500", split="test")):
            out.append((Problem(f"math500-{r.get('unique_id', i)}", "math500", r["problem"], r["answer"], "latex"), "test"))
    elif name == "gpqa_diamond":
        for i, r in enumerate(load("Idavidrein/gpqa", "gpqa_diamond", split="train")):
            options = [r["Correct Answer"], r["Incorrect Answer 1"], r["Incorrect Answer 2"], r["Incorrect Answer 3"]]
            order = list(range(4))
            random.Random(f"gpqa:{seed}:{i}").shuffle(order)  # deterministic letter for the correct option
            choices = [options[j].strip() for j in order]
            gold = _letters(4)[order.index(0)]
            q = r["Question"].strip() + "\n" + "\n".join(f"({L}) {c}" for L, c in zip(_letters(4), choices))
            out.append((Problem(f"gpqa_diamond-{i:03d}", "gpqa_diamond", q, gold, "choice", tuple(choices)), "test"))
    elif name == "arc_challenge":
        for split in ("train", "validation", "test"):
            for r in load("allenai/ai2_arc", "ARC-Challenge", split=split):
                labels, texts = r["choices"]["label"], r["choices"]["text"]
                key = r["answerKey"]
                if key.isdigit():  # a few rows use 1-4: map to letters
                    labels, key = _letters(len(labels)), _letters(len(labels))[labels.index(key)]
                q = r["question"].strip() + "\n" + "\n".join(f"({L}) {t}" for L, t in zip(_letters(len(texts)), texts))
                gold = _letters(len(texts))[labels.index(key)]
                out.append((Problem(f"arc_challenge-{r['id']}", "arc_challenge", q, gold, "choice", tuple(texts)), split))
    else:
        raise ValueError(f"problems.hf: unknown dataset {name!r} (known: multiarith, gsm8k, math500, gpqa_diamond, arc_challenge)")
    return out


# ----------------------------------------------------------------------------- all together


def load_problems_with_report(config):
    """(train, eval, report). `config` is the `problems` sub-config or a stage config holding one."""
    from jax_distill.problems import synthetic
    from jax_distill.problems.decontam import decontaminate

    cfg = config.problems if "problems" in config else config
    if cfg.on_bad_row not in ("skip", "error"):
        raise ValueError(f"problems.on_bad_row must be skip|error, got {cfg.on_bad_row!r}")
    rows: list[tuple[Any, str | None]] = []
    report: dict[str, Any] = {"sources": {}}
    for source in [s.strip() for s in cfg.sources.split(",") if s.strip()]:
        counters, examples = Counter(), []
        if source == "synthetic":
            s = cfg.synthetic
            got = [(p, None) for p in synthetic.generate(s.num, s.seed, s.steps, s.max_value, s.ops, s.dataset)]
            counters["rows"] = len(got)
        elif source == "local":
            got = load_local(cfg.local, counters, examples, cfg.on_bad_row)
        elif source == "hf":
            got = [x for name in cfg.hf.names.split(",") if name.strip()
                   for x in load_hf(name.strip(), cfg.hf.cache_dir, cfg.split_seed)]
            counters["rows"] = len(got)
        else:
            raise ValueError(f"problems.sources: unknown source {source!r} (synthetic, local, hf)")
        bad = {k: v for k, v in counters.items() if k != "rows"}
        report["sources"][source] = {"rows": counters["rows"], "loaded": len(got), "bad_rows": bad,
                                     "bad_examples": examples}
        if bad:
            log.warning("problems: %s skipped %d bad rows %s (e.g. %s)", source, sum(bad.values()), bad, examples[:3])
        rows.extend(got)

    seen: dict[str, int] = {}
    train, evals, duplicates = [], [], []
    for problem, split in rows:
        if problem.id in seen:
            duplicates.append(problem.id)
            if cfg.on_bad_row == "error":
                raise BadRow("duplicate_id", f"problem {problem.id!r}")
            continue
        seen[problem.id] = 1
        if split is not None:
            to_eval = split.lower() in EVAL_SPLITS
        else:
            to_eval = is_eval(problem.id, cfg.eval_fraction, cfg.split_seed)
        (evals if to_eval else train).append(problem)
    report["duplicate_ids"] = {"count": len(duplicates), "examples": duplicates[:20]}
    exact_only = frozenset() if cfg.decontam_synthetic else frozenset({cfg.synthetic.dataset})
    train, report["decontamination"] = decontaminate(train, evals, cfg.decontam_ngram, exact_only)
    train.sort(key=lambda p: p.id)
    evals.sort(key=lambda p: p.id)
    if cfg.limit > 0:
        train = train[: cfg.limit]
    if cfg.eval_limit > 0:
        evals = evals[: cfg.eval_limit]
    report["split"] = {"train": len(train), "eval": len(evals)}
    return train, evals, report


def load_problems(config):
    """(train, eval) lists of Problem, sorted by id; see load_problems_with_report for the report."""
    train, evals, _ = load_problems_with_report(config)
    return train, evals


def default_config():
    """The `problems` sub-config with every field documented (stage configs embed it)."""
    from ml_collections import ConfigDict

    return ConfigDict(dict(
        sources="synthetic",      # comma-separated: synthetic, local, hf
        eval_fraction=0.1,        # share of ids (by stable hash) held out when a row has no split field
        split_seed=0,             # changes which ids land in eval
        limit=0,                  # keep the first N training problems by id (0 = all)
        eval_limit=0,             # same for eval
        on_bad_row="skip",        # skip (count + report) | error (raise naming file:line and field)
        decontam_ngram=8,         # word n-gram size for train-vs-eval decontamination; 0 disables
        decontam_synthetic=False, # n-grams for synthetic problems too (their templates overlap by design;
                                  # when False only exact duplicates of eval questions are removed)
        synthetic=dict(
            num=200,              # problems to draw (before the split)
            seed=0,
            steps=2,              # operations per problem (difficulty)
            max_value=20,         # operand range (difficulty)
            ops="add,sub,mul,div,boxes",  # allowed operations; "add,sub" + steps=1 + max_value=9 = easiest
            dataset="arith",
        ),
        local=dict(
            paths="",             # comma-separated .jsonl / .parquet files
            format="auto",        # auto (by extension) | jsonl | parquet
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
            names="",             # comma-separated: multiarith, gsm8k, math500, gpqa_diamond, arc_challenge
            cache_dir="",
        ),
    ))
