"""Ablation inputs: length-matched truncation and answer-only, in the same record format.

`python -m jax_distill.traces.truncate --config configs/traces/truncate.py` or `run(config)`.
  truncated    per compressed record: its raw twin's trace cut to the compressed trace's length in
               STUDENT tokens (cut at a token boundary, backing off while a re-tokenized prefix would
               exceed the budget), answer kept. The think block is closed by the chat format
               (store.py: "<think>" trace "</think>" answer), so a cut trace never leaves it open.
  answer_only  per raw record: empty trace, same answer (the empty-think-block run).
One compressor per compressed directory (record ids are "{raw id}/truncated"). Counts: every
compressed input ends as truncated, within_budget (raw already no longer than the budget; kept whole,
still written) or errors (missing_raw: no raw twin, e.g. raw directory of another run).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter

from jax_distill.traces import store
from jax_distill.traces.stats import Progress, StudentTokens, describe, format_table, merge_counts

VARIANTS = ("truncated", "answer_only")


def truncate_one(raw: dict, comp: dict, student: StudentTokens) -> tuple[dict, str]:
    budget = comp["meta"].get("student_tokens")
    if budget is None:
        budget = student.count(comp["trace"])
    raw_tokens = student.count(raw["trace"])
    text, n = student.cut(raw["trace"], budget)
    bucket = "within_budget" if raw_tokens <= budget else "truncated"
    meta = {"stage": "truncate", "time": time.time(), "source_id": raw["id"], "compressed_id": comp["id"],
            "compressor": comp["meta"].get("compressor"), "budget_tokens": budget, "student_tokens": n,
            "raw_student_tokens": raw_tokens}
    return store.make_record(id=f"{raw['id']}/truncated", problem=raw, answer=raw["answer"], trace=text,
                             variant="truncated", meta=meta), bucket


def answer_only(raw: dict, student: StudentTokens) -> dict:
    meta = {"stage": "truncate", "time": time.time(), "source_id": raw["id"], "student_tokens": 0 if student else None}
    return store.make_record(id=f"{raw['id']}/answer_only", problem=raw, answer=raw["answer"], trace="",
                             variant="answer_only", meta=meta)


def run(config) -> dict:
    variants = [v.strip() for v in config.variants.split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        raise ValueError(f"truncate.variants must be a comma list of {VARIANTS}, got {config.variants!r}")
    student = StudentTokens(config.student_tokenizer)
    if "truncated" in variants and not student:
        raise ValueError("truncate: variant 'truncated' needs student_tokenizer (budgets are in student tokens)")
    shard = store.parse_shard(config.shard)
    os.makedirs(config.out_dir, exist_ok=True)
    prefix = store.shard_prefix("truncate", shard)
    store.clean_partial(config.out_dir, prefix)
    done_ids, _ = store.finished(config.out_dir)
    # plan on ids and file offsets only; each record is read when its chunk is processed
    raws = {i: loc for i, loc in store.index_records(config.raw_dir, variant="raw").items() if store.in_shard(i, shard)}
    items: list[tuple[str, str, str, tuple[str, int]]] = []  # (output id, variant, raw id, source location)
    if "truncated" in variants:
        suffix = "/compressed"  # compressed ids are "{raw id}/compressed" (store.py)
        for cid, loc in store.index_records(config.compressed_dir, variant="compressed").items():
            src = cid[: -len(suffix)] if cid.endswith(suffix) else cid
            if store.in_shard(src, shard):
                items.append((f"{src}/truncated", "truncated", src, loc))
    if "answer_only" in variants:
        items += [(f"{rid}/answer_only", "answer_only", rid, loc) for rid, loc in raws.items()]
    todo = [it for it in items if it[0] not in done_ids]
    part = store.next_part(config.out_dir, prefix)
    progress = Progress("truncate", len(todo), "records")
    run_infos = []
    for start in range(0, len(todo), config.chunk_size):
        chunk = todo[start : start + config.chunk_size]
        records, errors, buckets = [], [], Counter()
        for out_id, variant, raw_id, loc in chunk:
            if variant == "answer_only":
                records.append(answer_only(store.read_at(*loc), student))
                buckets["answer_only"] += 1
                continue
            if raw_id not in raws:
                buckets["missing_raw"] += 1
                errors.append({"id": out_id, "stage": "truncate", "reason": "missing_raw",
                               "detail": f"no raw record {raw_id!r} in {config.raw_dir}"})
                continue
            rec, bucket = truncate_one(store.read_at(*raws[raw_id]), store.read_at(*loc), student)
            records.append(rec)
            buckets[bucket] += 1
        counts = {"inputs": len(chunk), "truncated": buckets["truncated"], "within_budget": buckets["within_budget"],
                  "answer_only": buckets["answer_only"],
                  "errors": {"missing_raw": buckets["missing_raw"]} if buckets["missing_raw"] else {}}
        info = {"stage": "truncate", "ids": [it[0] for it in chunk], "counts": counts, "time": time.time()}
        store.write_chunk(config.out_dir, prefix, part, records, errors, info)
        part += 1
        run_infos.append(info)
        progress.update(len(chunk))
    _, infos = store.finished(config.out_dir)
    total = merge_counts(infos)
    out = [{"dataset": r["dataset"], "variant": r["variant"], "meta": r["meta"]}  # no texts kept
           for r in store.read_records(config.out_dir)]
    gaps = [r["meta"]["budget_tokens"] - r["meta"]["student_tokens"] for r in out if r["variant"] == "truncated"]
    summary = {"stage": "truncate", "out_dir": config.out_dir, "variants": variants, "this_run": merge_counts(run_infos),
               "total": total, "describe": describe(out),
               "mean_tokens_under_budget": round(statistics.fmean(gaps), 3) if gaps else None}
    if total:
        summary["balanced"] = total["inputs"] == (total["truncated"] + total["within_budget"] + total["answer_only"]
                                                  + sum(total.get("errors", {}).values()))
    store.write_summary(config.out_dir, summary)
    print("truncate: " + json.dumps(total) + "\n" + format_table(summary["describe"]), flush=True)
    return summary


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    run_stage(run)
