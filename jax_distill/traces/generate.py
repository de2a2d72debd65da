"""Stage 1: a teacher answers every question K times; verified-correct traces are kept.

`python -m jax_distill.traces.generate --config configs/traces/generate.py [--config.shard=i/4]`
or `run(config)` in process (returns the summary dict). Config fields: configs/traces/generate.py.

Work is split into chunks of `chunk_size` problems; each finished chunk is written atomically
(store.py), so a killed run loses at most the chunks in flight and a rerun skips every finished problem
id. Every sample ends in exactly one bucket, so generated = kept + rejected + errors:
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

from jax_distill.engines.base import Completion, SamplingParams, prompt_hash, request_seed
from jax_distill.problems import Problem, check_answers, extract_answer, load_problems_with_report
from jax_distill.traces import store
from jax_distill.traces.stats import Progress, StudentTokens, merge_counts

KEEP = ("all_correct", "first_correct", "all")


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


def _total(bucket) -> int:
    return sum(bucket.values()) if isinstance(bucket, dict) else bucket


def run(config, engine=None) -> dict:
    """Generate traces for the configured split; resumable. `engine` overrides config.engine (tests,
    or several stages sharing one loaded model)."""
    if config.keep not in KEEP:
        raise ValueError(f"generate.keep must be one of {KEEP}, got {config.keep!r}")
    if config.chunk_size < 1:
        raise ValueError(f"generate.chunk_size must be >= 1, got {config.chunk_size}")
    shard = store.parse_shard(config.shard)
    os.makedirs(config.out_dir, exist_ok=True)
    prefix = store.shard_prefix("generate", shard)
    store.clean_partial(config.out_dir, prefix)
    train, evals, report = load_problems_with_report(config)
    problems = {"train": train, "eval": evals, "all": train + evals}[config.split]
    store.atomic_write(os.path.join(config.out_dir, "problems_report.json"), json.dumps(report, indent=1))
    done_ids, _ = store.finished(config.out_dir)
    todo = [p for p in problems if store.in_shard(p.id, shard) and p.id not in done_ids]
    params = SamplingParams.from_config(config.sampling)
    student = StudentTokens(config.student_tokenizer)
    if engine is None and todo:
        from jax_distill.engines import make_engine

        engine = make_engine(config.engine)
    part = store.next_part(config.out_dir, prefix)
    progress = Progress("generate", len(todo), "problems")
    started = time.time()
    run_counts = []
    for start in range(0, len(todo), config.chunk_size):
        chunk = todo[start : start + config.chunk_size]
        records, errors, counts = process_chunk(chunk, engine, params, config, student)
        info = {"stage": "generate", "ids": [p.id for p in chunk], "counts": counts, "time": time.time(),
                "engine": getattr(engine, "name", "?"), "model": getattr(engine, "model", "?")}
        store.write_chunk(config.out_dir, prefix, part, records, errors, info)
        part += 1
        run_counts.append(info)
        progress.update(len(chunk))
    _, infos = store.finished(config.out_dir)
    total = merge_counts(infos)
    summary = {
        "stage": "generate",
        "out_dir": config.out_dir,
        "shard": config.shard,
        "problems": len(problems),
        "problems_in_shard": sum(store.in_shard(p.id, shard) for p in problems),
        "skipped_finished": sum(1 for p in problems if store.in_shard(p.id, shard) and p.id in done_ids),
        "this_run": merge_counts(run_counts),
        "total": total,
        "seconds": round(time.time() - started, 2),
        "problems_report": {k: v for k, v in report.items() if k != "decontamination"}
        | {"decontaminated": report["decontamination"].get("removed", 0)},
    }
    if total:
        balance = total.get("kept", 0) + _total(total.get("rejected", {})) + _total(total.get("errors", {}))
        summary["balanced"] = balance == total.get("generated", 0)
    store.write_summary(config.out_dir, summary)
    print(f"generate: {json.dumps(summary['total'])}", flush=True)
    return summary


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    run_stage(run)
