"""Matched training sets: every variant of a cell trains on the same questions, or the comparison is
confounded (raw over-long examples dropped while their compressed twins stay; a failed compression
kept as raw text, or dropped from one variant only).

`python -m jax_distill.data.matched --config configs/from_json.py:<match_config.json>` or `run(config)`;
the experiment runner writes one config per teacher/student/method row (its `match` stage).

Each variant's records are formatted exactly as training will format them (the student's tokenizer,
seq_len, chat format and over-long policy: data.record_verdicts). Records are keyed by their SOURCE id,
the raw trace they derive from (store.py: a derived variant's id is "{raw id}/{variant}"), so a raw
trace and its compressed, truncated or answer-only twins share one key. An id is kept when every variant
has a usable record of it; otherwise it is removed by the first rule that fails, in this order:
  missing:<variant>   the variant has no record of it (generation kept the trace but compression failed
                      and dropped it, the truncate stage found no twin, ...)
  <reason>:<variant>  the record is unusable in training: overlong_dropped (longer than seq_len in the
                      student's tokens), empty_trace, invalid_json, ... (data.SKIP_REASONS)
so universe = kept + sum(removed). `generation` beside them counts the teacher's samples that never
became a raw trace (rejected or failed, from the raw directory's summary), which no variant has.
Writes, under out_dir: ids/<variant>.txt (the record ids each variant trains on, for data.ids_file),
matched.json (counts, per variant records and usable ones, and a fingerprint of the inputs: a rerun on
unchanged inputs does nothing).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter

from ml_collections import ConfigDict

from jax_distill import checks
from jax_distill.data.pipeline import data_config, record_verdicts
from jax_distill.data.sources import resolve_files


def default_config() -> ConfigDict:
    """Every field of the match stage, each commented once."""
    c = ConfigDict()
    c.variants = ConfigDict()  # variant label -> its trace directory (the variants of one cell)
    c.raw_dir = ""  # the teacher's generate-stage directory ("" = no generation count)
    c.tokenizer = ""  # the student's tokenizer folder (lengths are counted in its tokens)
    c.seq_len = 16384  # the cell's train.seq_len
    c.data = data_config()  # the cell's data fields (chat format, fields, over-long policy); path is set per variant
    c.out_dir = "runs/matched"
    return c


def validate(config: ConfigDict) -> None:
    from jax_distill.cli import check_declared

    check_declared(config, default_config(), "match config")
    checks.need(len(config.variants) > 0, "variants", "must name at least one variant directory")
    for label, path in config.variants.items():
        checks.need(os.path.isdir(path), f"variants.{label}", f"no such directory: {path!r}")
    checks.need(bool(config.tokenizer), "tokenizer", "must name the student's tokenizer folder")
    checks.is_type(config, "seq_len", int)
    checks.at_least(config, "seq_len", 2)
    checks.need(bool(config.out_dir), "out_dir", "must be set")


def source_id(record_id: str, variant: str) -> str:
    """The raw trace a record derives from: "{raw id}/{variant}" -> raw id (store.py's id rule)."""
    suffix = f"/{variant}"
    return record_id[: -len(suffix)] if variant != "raw" and record_id.endswith(suffix) else record_id


def fingerprint(config: ConfigDict) -> str:
    """Inputs and settings: the record files (names and sizes) of every variant, and the config."""
    h = hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode())
    for label in sorted(config.variants):
        for f in resolve_files(config.variants[label]):
            h.update(f"{label}:{os.path.basename(f)}:{os.path.getsize(f)}\n".encode())
    return h.hexdigest()


def match(verdicts: dict[str, list[tuple]]) -> tuple[dict[str, list[str]], dict]:
    """variant -> [(record id, variant, reason)] => (variant -> kept record ids, counts)."""
    usable: dict[str, dict[str, str]] = {}  # variant -> source id -> record id
    unusable: dict[str, dict[str, str]] = {}  # variant -> source id -> reason
    unnamed = Counter()  # records without an id (a line that does not parse): no source id to match
    for label, rows in verdicts.items():
        usable[label], unusable[label] = {}, {}
        for rid, variant, reason in rows:
            if rid is None:
                unnamed[f"{reason}:{label}"] += 1
                continue
            sid = source_id(str(rid), str(variant))
            (unusable if reason else usable)[label].setdefault(sid, reason or str(rid))
    universe = sorted(set().union(*(set(usable[v]) | set(unusable[v]) for v in verdicts)))
    removed, kept = Counter(), []
    for sid in universe:
        rule = next((f"missing:{v}" for v in verdicts if sid not in usable[v] and sid not in unusable[v]), None)
        rule = rule or next((f"{unusable[v][sid]}:{v}" for v in verdicts if sid in unusable[v]), None)
        if rule:
            removed[rule] += 1
        else:
            kept.append(sid)
    ids = {v: sorted(usable[v][sid] for sid in kept) for v in verdicts}
    counts = {
        "universe": len(universe), "kept": len(kept), "removed": dict(sorted(removed.items())),
        "unnamed_records": dict(unnamed),
        "variants": {v: {"records": len(rows), "usable": len(usable[v])} for v, rows in verdicts.items()},
    }
    return ids, counts


def _generation_removed(raw_dir: str) -> int | None:
    path = os.path.join(raw_dir, "summary.json")
    if not raw_dir or not os.path.exists(path):
        return None
    total = json.loads(open(path).read()).get("total", {})
    return total["generated"] - total["kept"] if "generated" in total and "kept" in total else None


def run(config: ConfigDict) -> dict:
    """Write this cell's matched id files and counts; a rerun on unchanged inputs returns the saved counts."""
    from transformers import AutoTokenizer

    from jax_distill.traces import store

    validate(config)
    summary_path = os.path.join(config.out_dir, "matched.json")
    stamp = fingerprint(config)
    if os.path.exists(summary_path):
        saved = json.loads(open(summary_path).read())
        if saved.get("fingerprint") == stamp:
            return saved
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
    verdicts = {}
    for label, path in config.variants.items():
        cfg = ConfigDict(config.data.to_dict())
        cfg.path, cfg.ids_file = (str(path),), ""
        verdicts[label] = record_verdicts(cfg, tokenizer, seq_len=config.seq_len)
    ids, counts = match(verdicts)
    counts["generation"] = _generation_removed(config.raw_dir)
    os.makedirs(os.path.join(config.out_dir, "ids"), exist_ok=True)
    files = {}
    for label, rows in ids.items():
        files[label] = os.path.join(config.out_dir, "ids", f"{label}.txt")
        store.atomic_write(files[label], "".join(f"{r}\n" for r in rows))
    summary = {**counts, "ids_files": files, "tokenizer": config.tokenizer, "seq_len": config.seq_len,
               "fingerprint": stamp}
    store.atomic_write(summary_path, json.dumps(summary, indent=1))
    print(describe(summary, config.out_dir), flush=True)
    return summary


def describe(summary: dict, where: str = "") -> str:
    """One printed line per matched set: kept of universe, and what each rule removed."""
    removed = ", ".join(f"{rule} {n}" for rule, n in summary["removed"].items()) or "nothing"
    gen = "" if summary.get("generation") is None else f"; generation rejected {summary['generation']} samples before"
    return f"matched {where}: {summary['kept']} of {summary['universe']} traces in every variant; removed: {removed}{gen}"


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    run_stage(run, default_config)
