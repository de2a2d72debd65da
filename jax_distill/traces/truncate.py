"""Ablation inputs: length-matched truncation and answer-only, in the same record format.

`python -m jax_distill.traces.truncate --config configs/traces/truncate.py` or `run(config)`.
  truncated    per compressed record: its raw twin's trace cut to the compressed trace's length in
               THIS STUDENT's tokens (`student_tokenizer`; the budget is always recounted here, never
               taken from the compress stage's `student_tokens`, which another student's tokenizer may
               have counted), cut at a token boundary, backing off while a re-tokenized prefix would
               exceed the budget, answer kept. The think block is closed by the chat format
               (store.py: "<think>" trace "</think>" answer), so a cut trace never leaves it open.
  answer_only  per raw record: empty trace, same answer (the empty-think-block run).
One compressor per compressed directory (record ids are "{raw id}/truncated"). Counts: every
compressed input ends as truncated, within_budget (raw already no longer than the budget; kept whole,
still written) or errors (missing_raw: no raw twin, e.g. raw directory of another run). A bad input
row of either directory (a line that does not parse, a missing or mistyped field) is counted once under
skipped by reason, with its file:line (field) in the errors file and the summary; `strict` raises instead.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter

from ml_collections import ConfigDict

from jax_distill import checks
from jax_distill.traces import store
from jax_distill.traces.stats import StudentTokens, describe, format_table

VARIANTS = ("truncated", "answer_only")


def default_config() -> ConfigDict:
    """Every field of the truncate stage, each commented once; configs/traces/truncate.py starts here."""
    c = ConfigDict()
    c.raw_dir = "runs/traces/raw"  # generate stage output
    c.compressed_dir = "runs/traces/compressed-extractive"  # compress stage output (one compressor; "" when
    # only answer_only is written)
    c.out_dir = "runs/traces/truncated-extractive"
    c.variants = VARIANTS  # which ablation records to write: truncated, answer_only
    c.student_tokenizer = ""  # HF tokenizer folder (required for truncated: budgets are in student tokens)
    c.chunk_size = 256  # records per atomically written chunk
    c.shard = "0/1"  # "i/n": this host's share (by raw record id)
    c.strict = False  # a bad input row raises (naming file:line and field) instead of a counted skip
    return c


def validate(config: ConfigDict) -> None:
    """Every field before any work (checks.ConfigError naming config.<field>)."""
    from jax_distill.cli import check_declared

    check_declared(config, default_config(), "truncate config")
    checks.exists(config, "raw_dir", what="raw trace directory")
    store.validate_chunking(config)
    checks.is_type(config, "variants", (tuple, list))
    checks.is_type(config, "strict", bool)
    unknown = [v for v in config.variants if v not in VARIANTS]
    checks.need(bool(config.variants) and not unknown, "variants",
                f"must name some of {', '.join(VARIANTS)}; got {tuple(config.variants)!r}")
    if "truncated" in config.variants:
        checks.exists(config, "compressed_dir", what="compressed trace directory")
        checks.need(bool(config.student_tokenizer), "student_tokenizer",
                    "must name the student's tokenizer for variant truncated (budgets are in student tokens)")


def budget_tokens(compressed: dict, student: StudentTokens) -> int:
    """The length-matched budget of one example for one student: its compressed twin's trace in that
    student's own tokens. Budget and cut must use the same tokenizer (the student being trained), so any
    ablation matched to a compressed record (truncation here, other baselines alike) counts it here."""
    return student.count(compressed["trace"])


def truncate_one(raw: dict, comp: dict, student: StudentTokens) -> tuple[dict, str]:
    budget = budget_tokens(comp, student)
    raw_tokens = student.count(raw["trace"])
    text, n = student.cut(raw["trace"], budget)
    bucket = "within_budget" if raw_tokens <= budget else "truncated"
    meta = {"stage": "truncate", "time": time.time(), "source_id": raw["id"], "compressed_id": comp["id"],
            "compressor": comp["meta"].get("compressor"), "budget_tokens": budget, "student_tokens": n,
            "raw_student_tokens": raw_tokens, "student_tokenizer": student.path}
    return store.make_record(id=f"{raw['id']}/truncated", problem=raw, answer=raw["answer"], trace=text,
                             variant="truncated", meta=meta), bucket


def answer_only(raw: dict, student: StudentTokens) -> dict:
    meta = {"stage": "truncate", "time": time.time(), "source_id": raw["id"], "student_tokens": 0 if student else None}
    return store.make_record(id=f"{raw['id']}/answer_only", problem=raw, answer=raw["answer"], trace="",
                             variant="answer_only", meta=meta)


def process_chunk(items: list[tuple[str, tuple, tuple | None]], student: StudentTokens, raw_dir: str):
    """[(variant, source location, raw twin's location or None)] -> (records, errors, counts)."""
    records, errors, buckets = [], [], Counter()
    for variant, loc, raw_loc in items:
        source = store.read_at(*loc)
        if variant == "answer_only":
            records.append(answer_only(source, student))
            buckets["answer_only"] += 1
        elif raw_loc is None:
            raw_id = source["meta"]["source_id"]
            buckets["missing_raw"] += 1
            errors.append({"id": f"{raw_id}/truncated", "stage": "truncate", "reason": "missing_raw",
                           "detail": f"no raw record {raw_id!r} in {raw_dir}"})
        else:
            rec, bucket = truncate_one(store.read_at(*raw_loc), source, student)
            records.append(rec)
            buckets[bucket] += 1
    counts = {"inputs": len(items), "truncated": buckets["truncated"], "within_budget": buckets["within_budget"],
              "answer_only": buckets["answer_only"],
              "errors": {"missing_raw": buckets["missing_raw"]} if buckets["missing_raw"] else {}}
    return records, errors, counts


def describe_output(out_dir: str, variants, student: StudentTokens) -> dict:
    """The stage's own summary fields: records and token counts per dataset and variant, and the mean
    budget against the mean truncated length, both in this student's tokens."""
    out = [{"dataset": r["dataset"], "variant": r["variant"], "meta": r["meta"]}  # no texts kept
           for r in store.read_records(out_dir)]
    cut = [r["meta"] for r in out if r["variant"] == "truncated"]
    mean = lambda key: round(statistics.fmean(m[key] for m in cut), 3) if cut else None  # noqa: E731
    return {"variants": list(variants), "describe": describe(out), "student_tokenizer": student.path,
            "mean_budget_tokens": mean("budget_tokens"), "mean_truncated_tokens": mean("student_tokens"),
            "mean_tokens_under_budget": round(statistics.fmean(m["budget_tokens"] - m["student_tokens"] for m in cut), 3)
            if cut else None}


def run(config: ConfigDict) -> dict:
    """Write this shard's truncated and answer-only records; resumable."""
    validate(config)
    student = StudentTokens(config.student_tokenizer)
    # plan on ids and file offsets only; each record is read when its chunk is processed
    bad = []
    skip = None if config.strict else bad.append
    raws = store.index_records(config.raw_dir, variant="raw", skip=skip)
    items = {}  # output id -> (variant, source location, raw twin's location); ids are "{raw id}/{variant}"
    if "truncated" in config.variants:
        suffix = "/compressed"  # compressed ids are "{raw id}/compressed" (store.py)
        for cid, loc in store.index_records(config.compressed_dir, variant="compressed", skip=skip).items():
            raw_id = cid.removesuffix(suffix)
            items[f"{raw_id}/truncated"] = ("truncated", loc, raws.get(raw_id))
    if "answer_only" in config.variants:
        items.update({f"{rid}/answer_only": ("answer_only", loc, None) for rid, loc in raws.items()})
    items.update(store.skipped_items(bad))  # counted once, never processed
    summary = store.run_chunks(
        "truncate", config.out_dir, config.shard, config.chunk_size, items,
        lambda chunk: process_chunk(chunk, student, config.raw_dir),
        unit="records", balance=("inputs", ("truncated", "within_budget", "answer_only", "errors")),
        shard_key=lambda out_id: out_id.rsplit("/", 1)[0],  # by raw id, as the other stages (a bad row: its own id)
        summarize=lambda total: describe_output(config.out_dir, config.variants, student),
    )
    budgets = f"budget vs truncated (mean {student.path or '-'} tokens): {summary['mean_budget_tokens']} vs " \
              f"{summary['mean_truncated_tokens']}"
    print("truncate: " + json.dumps(summary["total"]) + "\n" + budgets + "\n" + format_table(summary["describe"]),
          flush=True)
    return summary


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    run_stage(run, default_config)
