"""Stage 1: a teacher answers every question K times; verified-correct traces are kept.

`python -m jax_distill.traces.generate --config configs/traces/generate.py [--config.shard=i/4]`
or `run(config)` in process (returns the summary dict). Config fields: `default_config()` below.
`--config.dispatch.kind=ray` processes the chunks on a pool of Ray actors, one engine each (dispatch.py).

Work is split into chunks of `chunk_size` problems by the store's resumable loop (store.run_chunks), so a
killed run loses at most the chunk in flight and a rerun skips every finished problem id. Every sample
ends in exactly one bucket, so generated = kept + rejected + errors:
  kept      correct (keep=all_correct), the first correct (first_correct), or any with an answer (all)
  rejected  wrong_answer, unverified (check timed out), no_final_answer, truncated (hit max_tokens
            without an answer), not_first (a further correct sample under first_correct)
  errors    empty_completion, engine_error (the engine raised, or refused the request, e.g.
            finish_reason "error:prompt_too_long"; the message is in the errors file)
Randomness is per request (seed derived from the base seed and the prompt hash), so a sample does
not depend on the chunking, the shard split or whether the run was resumed.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

from ml_collections import ConfigDict

from jax_distill import checks, engines, storage
from jax_distill.engines.base import Completion, SamplingParams, prompt_hash, request_seed
from jax_distill.problems import check_answers, extract_answer, load_problems_with_report
from jax_distill.problems import sources as problem_sources
from jax_distill.problems.problem import Problem
from jax_distill.sampling_params import sampling_config, validate_sampling
from jax_distill.traces import dispatch, store
from jax_distill.traces.stats import StudentTokens

KEEP = ("all_correct", "first_correct", "all")
SPLITS = ("train", "eval", "all")


def default_config() -> ConfigDict:
    """Every field of the generate stage, each commented once; configs/traces/generate.py starts here.
    Sub-configs are documented where they are declared: problems -> problems/sources.py, engine ->
    engines/__init__.py, sampling -> sampling_params.py."""
    c = ConfigDict()
    c.out_dir = "runs/traces/raw"  # stage output directory (chunks, errors, summary.json)
    c.split = "train"  # which problems get traces: train | eval | all
    c.problems = problem_sources.default_config()
    c.engine = engines.default_config()
    c.sampling = sampling_config(n=4, temperature=0.6, top_p=0.95, max_tokens=4096)  # n = K samples per question
    c.prompt = ConfigDict(dict(
        system="",  # optional system turn
        template="{question}\n\nPlease reason step by step, and put your final answer within \\boxed{}.",
    ))
    c.keep = "all_correct"  # all_correct | first_correct | all (unverified: keep any answer)
    c.verify_timeout_s = 5.0  # per answer check (math-verify); timeouts count as unverified
    c.chunk_size = 64  # problems per atomically written chunk (unit of resume)
    c.shard = "0/1"  # "i/n": this host's share of the problems (by id hash)
    c.student_tokenizer = ""  # HF tokenizer folder: count trace tokens as the student sees them
    c.dispatch = dispatch.default_config()  # where chunks run: here, or Ray actors each holding one engine
    return c


def validate(config: ConfigDict) -> None:
    """Every field before any work (checks.ConfigError naming config.<field>)."""
    from jax_distill.cli import check_declared

    check_declared(config, default_config(), "generate config")
    store.validate_chunking(config)
    checks.one_of(config, "split", SPLITS)
    problem_sources.validate(config, "problems")
    engines.validate(config, "engine")
    validate_sampling(config, "sampling")
    checks.is_type(config, "prompt.system", str)
    checks.is_type(config, "prompt.template", str)
    checks.need("{question}" in config.prompt.template, "prompt.template", "must contain {question}")
    checks.one_of(config, "keep", KEEP)
    checks.positive(config, "verify_timeout_s")
    dispatch.validate(config, "dispatch")


def messages_for(problem: Problem, prompt_cfg) -> list[dict]:
    user = prompt_cfg.template.replace("{question}", problem.question)
    messages = [{"role": "system", "content": prompt_cfg.system}] if prompt_cfg.system else []
    return messages + [{"role": "user", "content": user}]


def classify(completion: Completion, problem: Problem) -> tuple[str, str, str | None]:
    """(bucket, reason, extracted answer) before verification; bucket 'candidate' needs a check."""
    if completion.finish_reason.startswith("error"):
        return "errors", "engine_error", None
    if not completion.text.strip():
        return "errors", "empty_completion", None
    if not completion.answer_text.strip():
        return "rejected", "truncated" if completion.finish_reason == "length" else "no_final_answer", None
    return "candidate", "", extract_answer(completion.answer_text, problem.answer_type)


def process_chunk(problems: list[Problem], engine, params: SamplingParams, config, student: StudentTokens):
    """Generate, verify and select for a list of problems -> (records, errors, counts)."""
    requests = [messages_for(p, config.prompt) for p in problems]
    hashes = [prompt_hash(m) for m in requests]
    counts = Counter(generated=len(problems) * params.n)
    rejected, errored = Counter(), Counter()
    records, errors = [], []
    try:
        outputs = engine.generate(requests, params)
        if len(outputs) != len(problems) or any(len(o) != params.n for o in outputs):
            raise RuntimeError(f"engine returned {[len(o) for o in outputs]} completions for "
                               f"{len(problems)} requests x n={params.n}")
    except Exception as e:  # noqa: BLE001  (recorded per sample, the run goes on)
        detail = f"{type(e).__name__}: {e}"[:2000]
        for p in problems:
            for k in range(params.n):
                errors.append({"id": f"{p.id}/s{k}", "problem_id": p.id, "stage": "generate",
                               "reason": "engine_error", "detail": detail})
        errored["engine_error"] += len(problems) * params.n
        return records, errors, {**counts, "kept": 0, "rejected": {}, "errors": dict(errored)}

    pending = []  # (problem index, sample index, completion, extracted)
    for i, (p, samples) in enumerate(zip(problems, outputs)):
        for k, c in enumerate(samples):
            bucket, reason, extracted = classify(c, p)
            if bucket == "errors":
                errored[reason] += 1
                errors.append({"id": f"{p.id}/s{k}", "problem_id": p.id, "stage": "generate", "reason": reason,
                               "detail": f"finish_reason={c.finish_reason} text={c.text[:200]!r}"})
            elif bucket == "rejected":
                rejected[reason] += 1
            else:
                pending.append((i, k, c, extracted))
    verdicts = check_answers([(x, problems[i].gold, problems[i].answer_type) for i, _, _, x in pending],
                             timeout_s=config.verify_timeout_s)
    kept_first = set()
    now = time.time()
    for (i, k, c, extracted), ok in zip(pending, verdicts):
        p = problems[i]
        if config.keep != "all":
            if ok is None:
                rejected["unverified"] += 1
                continue
            if not ok:
                rejected["wrong_answer"] += 1
                continue
            if config.keep == "first_correct" and i in kept_first:
                rejected["not_first"] += 1
                continue
        kept_first.add(i)
        meta = {
            "stage": "generate", "time": now, "engine": engine.name, "model": engine.model,
            "sampling": params.to_dict(), "seed": request_seed(params.seed, hashes[i]), "prompt_hash": hashes[i],
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "finish_reason": c.finish_reason, "extracted": extracted, "correct": ok,
            "student_tokens": student.count(c.reasoning.strip()),
        }
        records.append(store.make_record(id=f"{p.id}/s{k}", problem=p, answer=c.answer_text.strip(),
                                         trace=c.reasoning.strip(), variant="raw", meta=meta))
    records.sort(key=lambda r: r["id"])
    counts["kept"] = len(records)
    return records, errors, {**counts, "rejected": dict(rejected), "errors": dict(errored)}


def run(config: ConfigDict, engine=None) -> dict:
    """Generate traces for the configured split; resumable. `engine` overrides config.engine (tests,
    or several stages sharing one loaded model); otherwise it is built when the first chunk needs it."""
    validate(config)
    train, evals, report = load_problems_with_report(config.problems)
    problems = {"train": train, "eval": evals, "all": train + evals}[config.split]
    storage.probe(config.out_dir)
    storage.makedirs(config.out_dir)
    store.atomic_write(os.path.join(config.out_dir, "problems_report.json"), json.dumps(report, indent=1))
    # built where chunks are processed (here, or in each Ray actor), on the first chunk
    teacher = dispatch.Lazy(lambda: engine if engine is not None else engines.make_engine(config.engine))
    params = SamplingParams.from_config(config.sampling)
    student = StudentTokens(config.student_tokenizer)
    problems_report = {k: v for k, v in report.items() if k != "decontamination"} | {
        "decontaminated": report["decontamination"].get("removed", 0)}
    summary = store.run_chunks(
        "generate", config.out_dir, config.shard, config.chunk_size, {p.id: p for p in problems},
        lambda chunk: process_chunk(chunk, teacher(), params, config, student),
        unit="problems", balance=("generated", ("kept", "rejected", "errors")),
        provenance=lambda: {"engine": teacher().name, "model": teacher().model},
        summarize=lambda total: {"problems": len(problems), "problems_report": problems_report},
        dispatch=dispatch.make(config.dispatch, config.engine),
    )
    print(f"generate: {json.dumps(summary['total'])}", flush=True)
    return summary


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    run_stage(run, default_config)
