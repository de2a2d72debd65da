"""The whole study as one command: `python -m jax_distill.experiment --config configs/experiment/demo.py`.

An experiment config names teachers (generate-stage configs), compressors (compress-stage configs),
students (HF folders, or tiny ones built from the traces' own text), methods and trace variants. The
runner wires the stages in their one-way order and gives every stage its own directory under `workdir`:

  traces/<teacher>/raw                       generate
  traces/<teacher>/compressed-<compressor>   compress
  traces/<teacher>/<student>/truncated-<compressor>, .../answer-only     truncate (student tokens)
  students/<student>                         tiny students built here (when no path is given)
  runs/<teacher>/<student>/<method>/<variant>/  train (+ eval/ inside)
  report/                                    the paper's tables and plots

Every stage resumes, so rerunning the same command continues where a killed run stopped. Each stage's
full config is written beside its output (`*_config.json`); `configs/from_json.py:<file>` reruns that one
stage alone, e.g. on another host. `plan_only=True` prints those commands instead of running them (for
dispatching the grid over TPU slices and GPU hosts with launch/).

Variants: raw | compressed:<compressor> | truncated:<compressor> | answer_only.
Training uses `train_recipes.<student>.<method>` where given (the paper's per-student recipes), else the
shared `train` template; `method_overrides.<method>` then applies to either.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Callable

from ml_collections import ConfigDict

from jax_distill import checks
from jax_distill.cli import set_fields

log = logging.getLogger("jax_distill.experiment")

STAGES = ("generate", "compress", "truncate", "train", "evaluate", "report")
VARIANT_KINDS = ("raw", "compressed", "truncated", "answer_only")


def default_config() -> ConfigDict:
    """The experiment's own fields; configs/experiment/*.py fill in the stage templates."""
    from jax_distill.problems.sources import default_config as problems_config

    c = ConfigDict()
    c.workdir = "runs/experiment"  # every stage's output lives under it (see the module docstring)
    c.stages = STAGES  # stages to run; the others are only planned (their configs are still written)
    c.plan_only = False  # print one command per stage instead of running them
    c.problems = problems_config()  # shared by generate and evaluate: same sources, split and seed
    c.teachers = ConfigDict()  # name -> generate-stage config
    c.compressors = ConfigDict()  # name -> compress-stage config
    c.truncate = ConfigDict()  # truncate-stage template (inputs and outputs are set per cell)
    c.students = ConfigDict()  # name -> {path: HF folder or "" to build a tiny one, tiny: build_student kwargs}
    c.methods = ("lora", "full")  # lora | full
    c.variants = ("raw",)  # raw | compressed:<compressor> | truncated:<compressor> | answer_only
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
    checks.need(len(c.students) > 0, "students", "must name at least one student")
    checks.is_type(c, "variants", (tuple, list))
    checks.need(bool(c.variants), "variants", "must name at least one variant")
    for v in c.variants:
        kind, _, comp = v.partition(":")
        ok = kind in VARIANT_KINDS and bool(comp) == (kind in ("compressed", "truncated"))
        checks.need(ok, "variants", f"unknown variant {v!r} (raw, compressed:X, truncated:X, answer_only)")
        checks.need(not comp or comp in c.compressors, "variants",
                    f"{v!r} names no compressor in config.compressors {sorted(c.compressors)}")


def variant_label(variant: str) -> str:
    """Table label of a variant spec: compressed:llama -> compressed-llama."""
    kind, _, comp = variant.partition(":")
    return kind.replace("_", "-") + (f"-{comp}" if comp else "")


def _derive(template: ConfigDict, **fields: Any) -> ConfigDict:
    """A copy of a stage config with dotted fields set (the template stays untouched)."""
    cfg = copy.deepcopy(template)
    cfg.unlock()
    set_fields(cfg, fields, "experiment: stage config")
    cfg.lock()
    return cfg


def _merge(cfg: ConfigDict, overrides: ConfigDict) -> ConfigDict:
    """Nested overrides (method-specific hyperparameters) onto a stage config, fields must exist."""
    flat = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, (ConfigDict, dict)):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(overrides, "")
    return _derive(cfg, **flat)


class Runner:
    """Runs (or plans) the stages of one experiment config in order."""

    def __init__(self, config: ConfigDict):
        self.config = config
        self.work = Path(config.workdir)
        validate(config)
        self.stages = set(config.stages)
        self.plan: list[str] = []
        self.variants = tuple(config.variants)

    def stage(self, name: str, cfg: ConfigDict, out: Path, fn: Callable[[ConfigDict], Any]) -> Any:
        """Record the stage's config beside its output, then run it (or only plan it)."""
        out.mkdir(parents=True, exist_ok=True)
        cfg_file = out / f"{name}_config.json"
        cfg_file.write_text(cfg.to_json_best_effort(indent=2))
        module = name if name in ("train", "evaluate", "report") else f"traces.{name}"
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
        """Raw traces per teacher."""
        from jax_distill.traces import generate

        raw_dirs = {}
        for teacher, template in self.config.teachers.items():
            raw = self.work / "traces" / teacher / "raw"
            cfg = _derive(template, out_dir=str(raw), problems=copy.deepcopy(self.config.problems))
            self.stage("generate", cfg, raw, generate.run)
            raw_dirs[teacher] = raw
        return raw_dirs

    def students(self, raw_dirs: dict[str, Path]) -> dict[str, Path]:
        """Student folders; tiny ones are built from the questions and raw traces (tokenizer + random init)."""
        from jax_distill.models.tiny import build_student
        from jax_distill.traces.store import read_records

        out = {}
        for name, spec in self.config.students.items():
            if spec.path:
                out[name] = spec.path
                continue
            folder = self.work / "students" / name
            out[name] = folder
            if (folder / "config.json").exists() or self.config.plan_only:
                continue
            texts = [t for d in raw_dirs.values() for r in read_records(str(d)) for t in (r["question"], r["trace"], r["answer"])]
            if not texts:
                raise RuntimeError(f"students.{name}: no traces to train its tokenizer on (run generate first)")
            log.info("== building tiny student %s from %d texts", name, len(texts))
            build_student(folder, texts, **spec.tiny.to_dict())
        return out

    def compress(self, raw_dirs: dict[str, Path], students: dict[str, Path]) -> dict[str, dict[str, Path]]:
        """Per teacher: raw dir and one dir per compressor (rho in the first student's tokens)."""
        from jax_distill.traces import compress

        first_student = str(next(iter(students.values()))) if students else ""
        dirs: dict[str, dict[str, Path]] = {}
        for teacher, raw in raw_dirs.items():
            dirs[teacher] = {"raw": raw}
            for comp_name, template in self.config.compressors.items():
                out = self.work / "traces" / teacher / f"compressed-{comp_name}"
                cfg = _derive(template, in_dir=str(raw), out_dir=str(out),
                              student_tokenizer=template.student_tokenizer or first_student,
                              **{"compressor.name": template.compressor.name or comp_name})
                self.stage("compress", cfg, out, compress.run)
                dirs[teacher][comp_name] = out
        return dirs

    def ablations(self, trace_dirs, students) -> dict[tuple[str, str, str], Path]:
        """Truncated (per compressor) and answer-only records, in each student's tokens."""
        from jax_distill.traces import truncate

        variants = self.variants
        wanted = {v.partition(":")[2] for v in variants if v.startswith("truncated:")}
        out = {}
        for teacher, dirs in trace_dirs.items():
            for student, folder in students.items():
                base = self.work / "traces" / teacher / student
                for comp in sorted(wanted):
                    d = base / f"truncated-{comp}"
                    cfg = _derive(self.config.truncate, raw_dir=str(dirs["raw"]), compressed_dir=str(dirs[comp]),
                                  out_dir=str(d), variants="truncated", student_tokenizer=str(folder))
                    self.stage("truncate", cfg, d, truncate.run)
                    out[(teacher, student, f"truncated:{comp}")] = d
                if "answer_only" in variants:
                    d = base / "answer-only"
                    cfg = _derive(self.config.truncate, raw_dir=str(dirs["raw"]), compressed_dir="",
                                  out_dir=str(d), variants="answer_only", student_tokenizer=str(folder))
                    self.stage("truncate", cfg, d, truncate.run)
                    out[(teacher, student, "answer_only")] = d
        return out

    # ------------------------------------------------------------------------- grid

    @staticmethod
    def data_dir(variant: str, teacher: str, student: str, trace_dirs, ablation_dirs) -> Path:
        kind, _, comp = variant.partition(":")
        if kind == "raw":
            return trace_dirs[teacher]["raw"]
        if kind == "compressed":
            return trace_dirs[teacher][comp]
        return ablation_dirs[(teacher, student, variant)]

    def grid(self, trace_dirs, students, ablation_dirs) -> list[Path]:
        from jax_distill import evaluate, train

        methods = tuple(self.config.methods)
        variants = self.variants
        run_dirs = []
        for teacher in self.config.teachers.keys():
            for student, folder in students.items():
                for method in methods:
                    for variant in variants:
                        label = variant_label(variant)
                        run_dir = self.work / "runs" / teacher / student / method / label
                        run_dirs.append(run_dir)
                        data = self.data_dir(variant, teacher, student, trace_dirs, ablation_dirs)
                        recipe = self.config.train_recipes.get(student, {}).get(method)
                        cfg = _derive(
                            recipe if recipe is not None else self.config.train,
                            **{"model.path": str(folder), "method": method, "train.run_dir": str(run_dir),
                               "data.path": str(data), "meta.teacher": teacher, "meta.student": student,
                               "meta.variant": label, "meta.name": f"{teacher}/{student}/{method}/{label}"},
                        )
                        if method in self.config.method_overrides:
                            cfg = _merge(cfg, self.config.method_overrides[method])
                        if not (run_dir / "train_summary.json").exists():  # written only when training ended
                            self.stage("train", cfg, run_dir, train.run)
                        else:
                            self.plan.append(f"# {run_dir}: trained")
                        eval_dir = run_dir / "eval"
                        ev = _derive(self.config.eval, checkpoint=str(run_dir / "export" / "hf"),
                                     output_dir=str(eval_dir), problems=copy.deepcopy(self.config.problems))
                        if not (eval_dir / "eval_results.json").exists():
                            self.stage("evaluate", ev, eval_dir, evaluate.run)
        return run_dirs

    def report(self, run_dirs: list[Path]) -> dict | None:
        """The paper's tables (printed) and plots under workdir/report."""
        from jax_distill import report

        out = self.work / "report"
        cfg = _derive(self.config.report, runs=",".join(str(d) for d in run_dirs), output_dir=str(out))
        return self.stage("report", cfg, out, report.run)


def run(config: ConfigDict) -> dict:
    """Run (or plan) the experiment; returns the run directories, the report paths and the plan."""
    runner = Runner(config)
    raw_dirs = runner.generate()
    students = runner.students(raw_dirs)
    trace_dirs = runner.compress(raw_dirs, students)
    ablation_dirs = runner.ablations(trace_dirs, students)
    run_dirs = runner.grid(trace_dirs, students, ablation_dirs)
    report = runner.report(run_dirs)
    if config.plan_only:
        print("\n".join(runner.plan))
    return {"runs": [str(d) for d in run_dirs], "report": report, "plan": runner.plan}


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run_stage(run)
