"""The whole study as one command: `python -m jax_distill.experiment --config configs/experiment/demo.py`.

An experiment config names teachers (generate-stage configs), compressors (compress-stage configs),
students (HF folders, or tiny ones built from the traces' own text), methods and trace variants. The
runner wires the stages in their one-way order and gives every stage its own directory under `workdir`:

  traces/<teacher>/raw                       generate
  traces/<teacher>/compressed-<compressor>   compress
  traces/<teacher>/<student>/truncated-<compressor>, .../answer-only     truncate (student tokens)
  matched/<teacher>/<student>/<method>/      match: the ids every variant of that row trains on
                                             (ids/<variant>.txt, matched.json); matched/summary.md
  students/<student>                         tiny students built here (when no path is given)
  pretrain/<student>/{traces,run}            a tiny student's pretraining corpus and run (students.<s>.pretrain)
  runs/<teacher>/<student>/<method>/<variant>/seed<k>/  train (+ eval/ inside), one per training seed
  report/                                    the paper's tables and plots

Every stage resumes, so rerunning the same command continues where a killed run stopped. Each stage's
full config is written beside its output (`*_config.json`); `configs/from_json.py:<file>` reruns that one
stage alone, e.g. on another host. `plan_only=True` prints those commands instead of running them (for
dispatching the grid over TPU slices and GPU hosts with launch/).

Variants: raw | compressed:<compressor> | truncated:<compressor> | answer_only | prune_tokens:<compressor> |
prune_steps:<compressor> (traces/prune.py: the cell's student prunes the raw traces to the length of their
<compressor> twins in its own tokens, under traces/<teacher>/<student>/prune-{tokens,steps}-<compressor>).
The `effort` baseline is a teacher, not a variant kind: `effort_of.<t> = <reference>` names a gpt-oss
teacher at a lower reasoning effort; its cells train on its own raw traces, and the report's compression
table shows its rho against the reference teacher's traces, paired by question (report.effort_rows).
Matched sets (`matched`, on by default): the variants of one teacher/student/method row train on the
same raw traces, or none of them: after generation, compression, truncation and the length filter (in
the student's tokens and the row's seq_len), jax_distill/data/matched.py keeps the ids usable in every
variant, counts what each rule removed, and each run trains with data.ids_file set to its variant's list.
Training uses `train_recipes.<student>.<method>` where given (the paper's per-student recipes), else the
shared `train` template; `method_overrides.<method>` then applies to either.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import time
from pathlib import Path
from typing import Any, Callable

from ml_collections import ConfigDict

from jax_distill import checks
from jax_distill.cli import set_fields
from jax_distill.cost import CHIPS

log = logging.getLogger("jax_distill.experiment")

STAGES = ("generate", "pretrain", "compress", "truncate", "prune", "match", "train", "evaluate", "report")
VARIANT_KINDS = ("raw", "compressed", "truncated", "answer_only", "prune_tokens", "prune_steps")
AT_BUDGET = ("compressed", "truncated", "prune_tokens", "prune_steps")  # kinds that name a compressor


def default_config() -> ConfigDict:
    """The experiment's own fields; configs/experiment/*.py fill in the stage templates."""
    from jax_distill.problems.sources import default_config as problems_config

    c = ConfigDict()
    c.workdir = "runs/experiment"  # every stage's output lives under it (see the module docstring)
    c.stages = STAGES  # stages to run; the others are only planned (their configs are still written)
    c.plan_only = False  # print one command per stage instead of running them
    c.problems = problems_config()  # shared by generate and evaluate: same sources, split and seed
    c.teachers = ConfigDict()  # name -> generate-stage config
    # teacher -> the teacher it is at a lower reasoning effort (gpt-oss, harmony's reasoning_effort: the
    # `effort` baseline; the two configs may differ in nothing else that shapes the traces); both generate,
    # and the report's compression table pairs their kept traces by question (report.effort_rows)
    c.effort_of = ConfigDict()
    c.compressors = ConfigDict()  # name -> compress-stage config
    c.truncate = ConfigDict()  # truncate-stage template (inputs and outputs are set per cell)
    c.prune = ConfigDict()  # prune-stage template for prune_* variants (inputs, scorer and budget set per cell)
    # name -> {path: HF folder, or "" to build a tiny one with tiny: build_student kwargs and optionally
    # pretrain: {problems: a problems config (its own questions, none of the evaluation's), teacher: a
    # teachers name ("" = the first), train: fields set on the train template}: the tiny base is then
    # pretrained (full, on that teacher's traces of those problems) before any cell trains from it}
    c.students = ConfigDict()
    c.methods = ("lora", "full")  # lora | full
    c.variants = ("raw",)  # raw | compressed:<compressor> | truncated:<compressor> | answer_only
    # Which training runs (cells: teacher x student x method x variant). Empty grids and cells: the full
    # product of teachers, students, methods and variants. Otherwise the union, in order, of each grid's
    # product (grids.<name> = {teachers, students, methods, variants}; "*" = all of that axis) and of the
    # explicit cells ("teacher/student/method/variant").
    c.grids = ConfigDict()
    c.cells = ()
    c.seeds = (0,)  # training seeds: every cell is trained once per seed; the report aggregates them
    # every variant of a teacher/student/method row trains on the same questions (data/matched.py); False:
    # each variant trains on whatever its own filters leave (a confounded comparison: say why in the paper)
    c.matched = True
    c.cost = ConfigDict(dict(
        chip="h100",  # the cost plan's accelerator: h100 | h200 | v5e | v5p | v6e (peak table: cost.py)
        mfu=0.4,  # model FLOPs utilisation the plan assumes
        train_examples=0,  # kept traces per teacher, for estimates before traces exist
                           # (0 = synthetic problems x (1 - eval_fraction) x samples per question)
        chars_per_token=4.0,  # converts characters to tokens where a record has no student token count
    ))
    c.train = ConfigDict()  # train-stage template for students without a recipe
    c.train_recipes = ConfigDict()  # student -> method -> train-stage config (the paper's per-student recipes)
    c.method_overrides = ConfigDict()  # method -> nested fields applied on top of the recipe or template
    c.eval = ConfigDict()  # evaluate-stage template
    c.report = ConfigDict()  # report-stage template
    return c


def validate(c: ConfigDict) -> None:
    """The experiment's own fields (each stage validates its derived config when it runs)."""
    checks.need(bool(c.workdir), "workdir", "must be set")
    checks.is_type(c, "stages", (tuple, list))
    unknown = sorted(set(c.stages) - set(STAGES))
    checks.need(not unknown, "stages", f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    checks.is_type(c, "methods", (tuple, list))
    checks.need(bool(c.methods), "methods", "must name at least one of lora, full")
    bad = sorted(set(c.methods) - {"lora", "full"})
    checks.need(not bad, "methods", f"unknown methods {bad}; choose from lora, full")
    checks.need(len(c.teachers) > 0, "teachers", "must name at least one generate-stage config")
    for low, high in c.effort_of.items():
        _check_effort_pair(c, low, high)
    checks.need(len(c.students) > 0, "students", "must name at least one student")
    checks.is_type(c, "variants", (tuple, list))
    checks.need(bool(c.variants), "variants", "must name at least one variant")
    for v in c.variants:
        _check_variant(c, "variants", v)
    checks.is_type(c, "cells", (tuple, list))
    for name, grid in c.grids.items():
        for axis in ("teachers", "students", "methods", "variants"):
            checks.need(axis in grid, f"grids.{name}", f"must name {axis} (a tuple; '*' = all)")
    named = cells(c)  # every grid entry and cell names something the config declares
    checks.need(len(c.prune) > 0 or not any(cell.variant.startswith("prune_") for cell in named), "prune",
                "must hold a prune-stage config (configs/traces/prune.py) for prune_tokens/prune_steps variants")
    for name, spec in c.students.items():
        pretrain = spec.get("pretrain")
        if pretrain:
            checks.need(not spec.path, f"students.{name}.pretrain", "only a tiny student (path \"\") is pretrained here")
            checks.need(not pretrain.teacher or pretrain.teacher in c.teachers, f"students.{name}.pretrain.teacher",
                        f"{pretrain.teacher!r} names no teacher in config.teachers {sorted(c.teachers)}")
    checks.is_type(c, "seeds", (tuple, list))
    checks.need(bool(c.seeds) and all(isinstance(s, int) and not isinstance(s, bool) for s in c.seeds), "seeds",
                f"must be a non-empty tuple of integers; got {c.seeds!r}")
    checks.need(len(set(c.seeds)) == len(c.seeds), "seeds", f"repeats a seed: {c.seeds!r}")
    checks.is_type(c, "matched", bool)
    checks.one_of(c, "cost.chip", tuple(CHIPS))
    checks.in_range(c, "cost.mfu", 0.0, 1.0, closed=True)
    checks.positive(c, "cost.mfu")
    checks.at_least(c, "cost.train_examples", 0)
    checks.positive(c, "cost.chars_per_token")


# teacher fields that place or pace generation without changing a trace: free to differ in an effort pair
PLACEMENT = ("out_dir", "shard", "chunk_size", "dispatch", "problems", "engine.batch_size", "engine.openai",
             "engine.vllm.tensor_parallel_size", "engine.vllm.gpu_memory_utilization", "engine.vllm.enforce_eager",
             "engine.jax.mesh")


def reasoning_effort(c: ConfigDict, teacher: str) -> str:
    """A harmony teacher's reasoning_effort (engine.chat_template_kwargs); ConfigError otherwise."""
    from jax_distill.report import EFFORTS

    engine, field = c.teachers[teacher].engine, f"teachers.{teacher}.engine"
    checks.need(engine.reasoning == "harmony", f"{field}.reasoning", "an effort pair is of gpt-oss teachers "
                f"(reasoning harmony, reasoning_effort in chat_template_kwargs); got {engine.reasoning!r}")
    effort = checks.json_object(engine.chat_template_kwargs, f"{field}.chat_template_kwargs").get("reasoning_effort")
    checks.need(effort in EFFORTS, f"{field}.chat_template_kwargs", f"must set reasoning_effort to one of {EFFORTS}; "
                f"got {engine.chat_template_kwargs!r}")
    return effort


def _check_effort_pair(c: ConfigDict, low: str, high: str) -> None:
    from jax_distill.report import EFFORTS

    field = f"effort_of.{low}"
    for name in (low, high):
        checks.need(name in c.teachers, field, f"{name!r} names no teacher in config.teachers {sorted(c.teachers)}")
    checks.need(high not in c.effort_of, field, f"{high!r} is itself at a lower effort of {c.effort_of.get(high)!r}: "
                "name the reference teacher")
    efforts = reasoning_effort(c, low), reasoning_effort(c, high)
    checks.need(EFFORTS.index(efforts[0]) < EFFORTS.index(efforts[1]), field,
                f"{low!r} (reasoning_effort {efforts[0]}) must be a lower reasoning effort than {high!r} ({efforts[1]})")
    fields = [_flatten(c.teachers[t]) for t in (low, high)]
    for flat, t in zip(fields, (low, high)):
        kwargs = checks.json_object(flat["engine.chat_template_kwargs"], f"teachers.{t}.engine.chat_template_kwargs")
        flat["engine.chat_template_kwargs"] = {k: v for k, v in kwargs.items() if k != "reasoning_effort"}
    shaping = lambda k: not any(k == p or k.startswith(p + ".") for p in PLACEMENT)  # noqa: E731
    differ = sorted(k for k in set(fields[0]) | set(fields[1]) if shaping(k) and fields[0].get(k) != fields[1].get(k))
    checks.need(not differ, field, f"{low!r} and {high!r} differ beyond the reasoning effort in {differ}: their rho "
                "and accuracies would then measure those fields too")


def _check_variant(c: ConfigDict, field: str, v: str) -> None:
    kind, _, comp = v.partition(":")
    ok = kind in VARIANT_KINDS and bool(comp) == (kind in AT_BUDGET)
    checks.need(ok, field, f"unknown variant {v!r} (raw, compressed:X, truncated:X, answer_only, prune_tokens:X, "
                "prune_steps:X)")
    checks.need(not comp or comp in c.compressors, field,
                f"{v!r} names no compressor in config.compressors {sorted(c.compressors)}")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    teacher: str
    student: str
    method: str
    variant: str  # raw | compressed:<c> | truncated:<c> | answer_only

    def __str__(self) -> str:
        return f"{self.teacher}/{self.student}/{self.method}/{self.variant}"


def cells(c: ConfigDict) -> list[Cell]:
    """The training runs an experiment config names (see the `grids` and `cells` fields), in order,
    without repeats; raises naming the field when an entry names an unknown teacher, student, method
    or variant."""
    axes = {"teachers": tuple(c.teachers), "students": tuple(c.students), "methods": ("lora", "full")}
    grids = {name: g for name, g in c.grids.items()}
    if not grids and not c.cells:
        grids = {"": ConfigDict(dict(teachers=("*",), students=("*",), methods=tuple(c.methods),
                                     variants=tuple(c.variants)))}
    out: dict[Cell, None] = {}
    for name, grid in grids.items():
        field = f"grids.{name}" if name else "variants"
        chosen = {}
        for axis in ("teachers", "students", "methods"):
            values = tuple(grid[axis])
            chosen[axis] = axes[axis] if values == ("*",) else values
            unknown = [v for v in chosen[axis] if v not in axes[axis]]
            checks.need(not unknown, f"{field}.{axis}" if name else axis, f"unknown {axis} {unknown}; known: {axes[axis]}")
        for v in grid.variants:
            _check_variant(c, f"{field}.variants" if name else "variants", v)
        for t, s, m, v in itertools.product(chosen["teachers"], chosen["students"], chosen["methods"], grid.variants):
            out[Cell(t, s, m, v)] = None
    for spec in c.cells:
        parts = spec.split("/")
        checks.need(len(parts) == 4, "cells", f"{spec!r} must be teacher/student/method/variant")
        t, s, m, v = parts
        for axis, value in zip(("teachers", "students", "methods"), (t, s, m)):
            checks.need(value in axes[axis], "cells", f"{spec!r}: unknown {axis[:-1]} {value!r}; known: {axes[axis]}")
        _check_variant(c, "cells", v)
        out[Cell(t, s, m, v)] = None
    return list(out)


def variant_label(variant: str) -> str:
    """Table label of a variant spec: compressed:llama -> compressed-llama."""
    kind, _, comp = variant.partition(":")
    return kind.replace("_", "-") + (f"-{comp}" if comp else "")


def _chat_of(data: ConfigDict) -> dict[str, Any]:
    """The chat fields of a student's training data config, as dotted fields of a stage that asks it
    questions (evaluate, prune): rendered and stopped in the format it was trained on."""
    from jax_distill.engines.jax_engine import CHAT_FIELDS

    return {f"chat.{k}": data[k] for k in CHAT_FIELDS}


def _derive(template: ConfigDict, **fields: Any) -> ConfigDict:
    """A copy of a stage config with dotted fields set (the template stays untouched)."""
    cfg = copy.deepcopy(template)
    cfg.unlock()
    set_fields(cfg, fields, "experiment: stage config")
    cfg.lock()
    return cfg


def _flatten(node, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b.c": leaf value}."""
    flat = {}
    for k, v in node.items():
        if isinstance(v, (ConfigDict, dict)):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _merge(cfg: ConfigDict, overrides: ConfigDict) -> ConfigDict:
    """Nested overrides (method-specific hyperparameters) onto a stage config, fields must exist."""
    return _derive(cfg, **_flatten(overrides))


class Runner:
    """Runs (or plans) the stages of one experiment config in order, for the cells it names."""

    def __init__(self, config: ConfigDict):
        validate(config)
        self.config = config
        self.work = Path(config.workdir)
        self.stages = set(config.stages)
        self.cells = cells(config)
        self.plan: list[str] = []
        self.costs: list[dict] = []

    def stage(self, name: str, cfg: ConfigDict, out: Path, fn: Callable[[ConfigDict], Any]) -> Any:
        """Record the stage's config beside its output, then run it (or only plan it)."""
        out.mkdir(parents=True, exist_ok=True)
        cfg_file = out / f"{name}_config.json"
        cfg_file.write_text(cfg.to_json_best_effort(indent=2))
        module = {"pretrain": "train", "match": "data.matched"}.get(
            name, name if name in ("train", "evaluate", "report") else f"traces.{name}")
        self.plan.append(f"python -m jax_distill.{module} --config configs/from_json.py:{cfg_file}")
        if self.config.plan_only or name not in self.stages:
            return None
        log.info("== %s -> %s", name, out)
        start = time.time()
        result = fn(cfg)
        log.info("== %s done in %.1fs", name, time.time() - start)
        return result

    # ------------------------------------------------------------------------- traces

    def generate(self) -> dict[str, Path]:
        """Raw traces per teacher that some cell trains on."""
        from jax_distill.traces import generate

        raw_dirs = {}
        pairs = [t for pair in self.config.effort_of.items() for t in pair]  # generated for their rho, cells or not
        for teacher in dict.fromkeys([cell.teacher for cell in self.cells] + pairs):
            raw = self.work / "traces" / teacher / "raw"
            cfg = _derive(self.config.teachers[teacher], out_dir=str(raw), problems=copy.deepcopy(self.config.problems))
            self.stage("generate", cfg, raw, generate.run)
            raw_dirs[teacher] = raw
        return raw_dirs

    def students(self, raw_dirs: dict[str, Path]) -> dict[str, Path]:
        """Student folders. A tiny student (no path) is built here: a BPE tokenizer trained on the traces'
        text and a random init; with `pretrain`, that base is then pretrained as its own stage and the
        grid starts from the pretrained export."""
        from jax_distill.models.tiny import build_student
        from jax_distill.traces.store import read_records

        out = {}
        for name in dict.fromkeys(cell.student for cell in self.cells):
            spec = self.config.students[name]
            if spec.path:
                out[name] = spec.path
                continue
            pretrain = spec.get("pretrain")
            text_dirs = list(raw_dirs.values()) + ([self.pretrain_traces(name, pretrain)] if pretrain else [])
            folder = self.work / "students" / name
            out[name] = folder
            if not (folder / "config.json").exists() and not self.config.plan_only:
                texts = [t for d in text_dirs for r in read_records(str(d)) for t in (r["question"], r["trace"], r["answer"])]
                if not texts:
                    raise RuntimeError(f"students.{name}: no traces to train its tokenizer on (run generate first)")
                log.info("== building tiny student %s from %d texts", name, len(texts))
                build_student(folder, texts, **spec.tiny.to_dict())
            if pretrain:
                out[name] = self.pretrain(name, folder, pretrain, text_dirs[-1])
        return out

    def pretrain_traces(self, student: str, pretrain: ConfigDict) -> Path:
        """The pretraining corpus: the pretraining teacher's verified traces of the pretraining problems."""
        from jax_distill.traces import generate

        out = self.work / "pretrain" / student / "traces"
        teacher = self.config.teachers[pretrain.teacher or next(iter(self.config.teachers))]
        cfg = _derive(teacher, out_dir=str(out), split="all", problems=copy.deepcopy(pretrain.problems))
        self.stage("generate", cfg, out, generate.run)
        return out

    def pretrain(self, student: str, base: Path, pretrain: ConfigDict, traces: Path) -> Path:
        """Full training of the random base on the pretraining corpus (the train template with
        pretrain.train on top); the export is the student every cell starts from."""
        from jax_distill import train

        run_dir = self.work / "pretrain" / student / "run"
        cfg = _derive(self.config.train, **{
            "model.path": str(base), "method": "full", "train.run_dir": str(run_dir), "data.path": (str(traces),),
            "export.hf": True, "meta.student": student, "meta.variant": "pretrain", "meta.name": f"pretrain/{student}"})
        cfg = _merge(cfg, pretrain.train)
        if not (run_dir / "train_summary.json").exists():
            self.stage("pretrain", cfg, run_dir, train.run)
        return run_dir / "export" / "hf"

    def compress(self, raw_dirs: dict[str, Path], students: dict[str, Path]) -> dict[str, dict[str, Path]]:
        """Per teacher: raw dir and one dir per compressor that a cell uses (compressed or truncated)."""
        from jax_distill.traces import compress

        first_student = str(next(iter(students.values()))) if students else ""
        dirs: dict[str, dict[str, Path]] = {teacher: {"raw": raw} for teacher, raw in raw_dirs.items()}
        used = dict.fromkeys((cell.teacher, cell.variant.partition(":")[2]) for cell in self.cells if ":" in cell.variant)
        for teacher, comp_name in used:
            template = self.config.compressors[comp_name]
            out = self.work / "traces" / teacher / f"compressed-{comp_name}"
            cfg = _derive(template, in_dir=str(raw_dirs[teacher]), out_dir=str(out),
                          student_tokenizer=template.student_tokenizer or first_student,
                          **{"compressor.name": template.compressor.name or comp_name})
            self.stage("compress", cfg, out, compress.run)
            dirs[teacher][comp_name] = out
        return dirs

    def ablations(self, trace_dirs, students) -> dict[tuple[str, str, str], Path]:
        """Truncated (per compressor) and answer-only records a cell trains on, in its student's tokens."""
        from jax_distill.traces import truncate

        out, budgets = {}, []
        wanted = dict.fromkeys((c.teacher, c.student, c.variant) for c in self.cells
                               if c.variant == "answer_only" or c.variant.startswith("truncated:"))
        for teacher, student, variant in wanted:
            raw = str(trace_dirs[teacher]["raw"])
            base = self.work / "traces" / teacher / student
            if variant == "answer_only":
                d, fields = base / "answer-only", dict(compressed_dir="", variants="answer_only")
            else:
                comp = variant.partition(":")[2]
                d, fields = base / f"truncated-{comp}", dict(compressed_dir=str(trace_dirs[teacher][comp]), variants="truncated")
            # budget and cut in this student's own tokenizer (the compress stage counted in one tokenizer only)
            cfg = _derive(self.config.truncate, raw_dir=raw, out_dir=str(d), student_tokenizer=str(students[student]), **fields)
            summary = self.stage("truncate", cfg, d, truncate.run)
            if summary and variant != "answer_only":
                budgets.append({"teacher": teacher, "student": student, "variant": variant,
                                "truncated": summary["total"].get("truncated", 0),
                                "within_budget": summary["total"].get("within_budget", 0),
                                "mean_budget_tokens": summary["mean_budget_tokens"],
                                "mean_truncated_tokens": summary["mean_truncated_tokens"]})
            out[(teacher, student, variant)] = d
        if budgets:
            from jax_distill.records import markdown_table

            print("length-matched truncation, per student (mean budget vs mean truncated length, its own tokens)\n"
                  + markdown_table(budgets, list(budgets[0])), flush=True)
        return out

    def prunes(self, trace_dirs, students) -> dict[tuple[str, str, str], Path]:
        """prune_tokens:X / prune_steps:X records a cell trains on: its student scores the raw traces with
        its own forward pass, in its training chat format, and prunes each to its X twin's length in its
        own tokens."""
        from jax_distill.traces import prune

        out = {}
        for cell in {(c.teacher, c.student, c.variant): c for c in self.cells if c.variant.startswith("prune_")}.values():
            kind, _, comp = cell.variant.partition(":")
            d = self.work / "traces" / cell.teacher / cell.student / variant_label(cell.variant)
            data = self.train_config(cell, self.config.seeds[0], students[cell.student], d, d).data
            chat = _chat_of(data)
            cfg = _derive(self.config.prune, raw_dir=str(trace_dirs[cell.teacher]["raw"]), out_dir=str(d),
                          match_dir=str(trace_dirs[cell.teacher][comp]), mode=kind.removeprefix("prune_"),
                          budget=f"match:{comp}", student_tokenizer=str(students[cell.student]),
                          **{"scorer.model": str(students[cell.student])}, **chat)
            self.stage("prune", cfg, d, prune.run)
            out[(cell.teacher, cell.student, cell.variant)] = d
        return out

    # ------------------------------------------------------------------------- grid

    @staticmethod
    def data_dir(cell: Cell, trace_dirs, ablation_dirs) -> Path:
        kind, _, comp = cell.variant.partition(":")
        if kind == "raw":
            return trace_dirs[cell.teacher]["raw"]
        if kind == "compressed":
            return trace_dirs[cell.teacher][comp]
        return ablation_dirs[(cell.teacher, cell.student, cell.variant)]

    def train_config(self, cell: Cell, seed: int, folder: Path, run_dir: Path, data: Path) -> ConfigDict:
        label = variant_label(cell.variant)
        recipe = self.config.train_recipes.get(cell.student, {}).get(cell.method)
        cfg = _derive(
            recipe if recipe is not None else self.config.train,
            **{"model.path": str(folder), "method": cell.method, "train.run_dir": str(run_dir), "train.seed": seed,
               "data.path": (str(data),), "meta.teacher": cell.teacher, "meta.student": cell.student,
               "meta.variant": label, "meta.name": f"{cell.teacher}/{cell.student}/{cell.method}/{label}/seed{seed}"},
        )
        if cell.method in self.config.method_overrides:
            cfg = _merge(cfg, self.config.method_overrides[cell.method])
        return cfg

    def matched_sets(self, trace_dirs, students, ablation_dirs) -> dict[tuple[str, str, str], dict[str, Path]]:
        """Per teacher/student/method row: variant label -> the ids file its runs train on (data/matched.py);
        {} with matched=False. Counts per row in matched/<row>/matched.json, all rows in matched/summary.md."""
        from jax_distill.data import matched
        from jax_distill.records import markdown_table
        from jax_distill.training.student import tokenizer_path

        if not self.config.matched:
            return {}
        rows: dict[tuple[str, str, str], list[Cell]] = {}
        for cell in self.cells:
            rows.setdefault((cell.teacher, cell.student, cell.method), []).append(cell)
        out, table = {}, []
        for (teacher, student, method), row in rows.items():
            d = self.work / "matched" / teacher / student / method
            variants = {variant_label(c.variant): str(self.data_dir(c, trace_dirs, ablation_dirs)) for c in row}
            train_cfg = self.train_config(row[0], self.config.seeds[0], students[student], d, Path(variants[variant_label(row[0].variant)]))
            cfg = matched.default_config()
            cfg.variants, cfg.raw_dir, cfg.out_dir = ConfigDict(variants), str(trace_dirs[teacher]["raw"]), str(d)
            cfg.seq_len, cfg.data = train_cfg.train.seq_len, copy.deepcopy(train_cfg.data)
            cfg.tokenizer = train_cfg.train.tokenizer or str(train_cfg.model.path)
            if not self.config.plan_only and "match" in self.stages:
                cfg.tokenizer = tokenizer_path(str(train_cfg.model.path), train_cfg.train.tokenizer)
            cfg.lock()
            summary = self.stage("match", cfg, d, matched.run)
            out[(teacher, student, method)] = {label: d / "ids" / f"{label}.txt" for label in variants}
            if summary:
                print(matched.describe(summary, f"{teacher}/{student}/{method}"), flush=True)
                table.append({"row": f"{teacher}/{student}/{method}", "universe": summary["universe"],
                              "kept": summary["kept"], "generation_rejected": summary["generation"],
                              **{f"removed {rule}": n for rule, n in summary["removed"].items()}})
        if table:
            columns = list(dict.fromkeys(k for r in table for k in r))
            (self.work / "matched" / "summary.md").write_text(
                "Matched training sets: traces in every variant of a row, and what each rule removed "
                "(jax_distill/data/matched.py)\n\n" + markdown_table(table, columns) + "\n")
        return out

    def grid(self, trace_dirs, students, ablation_dirs, ids_files=None) -> list[Path]:
        from jax_distill import evaluate, train

        run_dirs = []
        for cell, seed in itertools.product(self.cells, self.config.seeds):
            run_dir = self.work / "runs" / cell.teacher / cell.student / cell.method / variant_label(cell.variant) / f"seed{seed}"
            run_dirs.append(run_dir)
            data = self.data_dir(cell, trace_dirs, ablation_dirs)
            cfg = self.train_config(cell, seed, students[cell.student], run_dir, data)
            ids = (ids_files or {}).get((cell.teacher, cell.student, cell.method), {}).get(variant_label(cell.variant))
            if ids is not None:
                cfg = _derive(cfg, **{"data.ids_file": str(ids)})
            if self.config.plan_only:
                self.costs.append(self.cost(cell, seed, cfg, data))
            if not (run_dir / "train_summary.json").exists():  # written only when training ended
                self.stage("train", cfg, run_dir, train.run)
            else:
                self.plan.append(f"# {run_dir}: trained")
            eval_dir = run_dir / "eval"
            ev = _derive(self.config.eval, checkpoint=str(run_dir / "export" / "hf"),
                         output_dir=str(eval_dir), problems=copy.deepcopy(self.config.problems),
                         **_chat_of(cfg.data))  # asked and stopped in the chat format the student learned
            if not (eval_dir / "eval_results.json").exists():
                self.stage("evaluate", ev, eval_dir, evaluate.run)
        return run_dirs

    def report(self, run_dirs: list[Path]) -> dict | None:
        """The paper's tables (printed) and plots under workdir/report."""
        from jax_distill import report

        out = self.work / "report"
        raw = lambda teacher: str(self.work / "traces" / teacher / "raw")  # noqa: E731  (as generate writes it)
        efforts = {low: dict(of=high, effort=reasoning_effort(self.config, low), of_effort=reasoning_effort(self.config, high),
                             traces=raw(low), of_traces=raw(high)) for low, high in self.config.effort_of.items()}
        cfg = _derive(self.config.report, runs=tuple(str(d) for d in run_dirs), output_dir=str(out),
                      **({"efforts": ConfigDict(efforts)} if efforts else {}))
        return self.stage("report", cfg, out, report.run)

    # ------------------------------------------------------------------------- cost plan

    def cost(self, cell: Cell, seed: int, train_cfg: ConfigDict, data: Path) -> dict:
        """Tokens, FLOPs and chip-hours of one run (see jax_distill/cost.py for the model)."""
        from jax_distill import cost

        tokens, source = self.train_tokens(cell, train_cfg, data)
        spec = self.config.students[cell.student]
        if not spec.path and not (Path(train_cfg.model.path) / "config.json").exists():  # tiny, not built yet
            from jax_distill.models.tiny import student_config

            shape = {k: v for k, v in spec.tiny.items() if k != "seed"}
            size = cost.size_of(shape.get("family", "qwen3"), student_config(**shape), "tiny config")
        else:
            size = cost.model_size(train_cfg.model.path)
        row = cost.run_cost(size, cell.method, tokens, train_cfg.train.seq_len, self.config.cost.chip, self.config.cost.mfu)
        return {"cell": str(cell), "seed": seed, "tokens_from": source, **row}

    def train_tokens(self, cell: Cell, train_cfg: ConfigDict, data: Path) -> tuple[float, str]:
        """Tokens the run trains on: fixed steps x batch x seq_len; else the finished trace records
        (their student token counts, characters / chars_per_token where a count is missing) times the
        epochs; else an estimate from the teacher and problems configs (stated in its label)."""
        from jax_distill.traces.store import read_records

        t, cpt = train_cfg.train, self.config.cost.chars_per_token
        if t.steps > 0:
            return float(t.steps * t.batch_size * t.seq_len), "train.steps"
        epochs = max(train_cfg.data.num_epochs, 1)
        if data.is_dir() and any(data.glob("*.done.json")):
            total = 0.0
            for r in read_records(str(data)):
                # a count in another tokenizer (e.g. compress counts in the first student's) is no count here
                same = r["meta"].get("student_tokenizer") in (None, str(train_cfg.model.path))
                trace = r["meta"].get("student_tokens") if same else None
                total += (trace if trace is not None else len(r["trace"]) / cpt) + (len(r["question"]) + len(r["answer"])) / cpt
            return total * epochs, "traces"
        teacher = self.config.teachers[cell.teacher]
        examples = self.config.cost.train_examples
        if not examples:
            checks.need("synthetic" in tuple(checks.as_list(self.config.problems.sources)), "cost.train_examples",
                        "must be set for a cost estimate before traces exist (kept traces per teacher)")
            p = self.config.problems
            examples = round(p.synthetic.num * (1 - p.eval_fraction)) * teacher.sampling.n
        # before any trace exists: half the teacher's completion budget per kept sample, the paper's mean
        # compression ratio (0.15) for compressed and truncated traces, 150 tokens of question and answer
        trace = teacher.sampling.max_tokens / 2 * {"raw": 1.0, "answer_only": 0.0}.get(cell.variant.partition(":")[0], 0.15)
        return float(examples * (trace + 150) * epochs), "estimate"

    def cost_table(self) -> str:
        from jax_distill import records

        chip, mfu = self.config.cost.chip, self.config.cost.mfu
        rows = [dict(r) for r in self.costs]
        rows.append({"cell": f"total ({len(rows)} runs)", "seed": None, "tokens_from": "",
                     **{k: sum(r[k] for r in self.costs) for k in ("tokens", "flops", "chip_hours")}})
        fmt = lambda col, v: "" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
        head = f"cost plan: {chip} at {mfu:.0%} MFU (FLOPs: 6N/token full, 4N LoRA, + attention; jax_distill/cost.py)\n"
        return head + records.markdown_table(rows, ["cell", "seed", "tokens", "tokens_from", "flops", "chip_hours"], fmt)


def run(config: ConfigDict) -> dict:
    """Run (or plan) the experiment; returns the run directories, the report paths, the plan and costs."""
    runner = Runner(config)
    raw_dirs = runner.generate()
    students = runner.students(raw_dirs)
    trace_dirs = runner.compress(raw_dirs, students)
    ablation_dirs = {**runner.ablations(trace_dirs, students), **runner.prunes(trace_dirs, students)}
    ids_files = runner.matched_sets(trace_dirs, students, ablation_dirs)
    run_dirs = runner.grid(trace_dirs, students, ablation_dirs, ids_files)
    report = runner.report(run_dirs)
    if config.plan_only:
        print("\n".join(runner.plan))
        print(runner.cost_table())
    return {"runs": [str(d) for d in run_dirs], "report": report, "plan": runner.plan, "costs": runner.costs}


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run_stage(run, default_config)
