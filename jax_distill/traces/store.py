"""Trace records and their sharded, resumable storage.

Record: one JSON object per line (UTF-8), one per kept trace; every variant has the same fields, so
training reads any of them:
  id          unique record id. Raw samples: "{problem_id}/s{k}" (k = sample index among the K drawn);
              derived variants append "/{variant}" to their source's id ("arith-0-000003/s1/compressed").
  problem_id  id of the Problem it answers
  dataset     dataset name of the problem
  question    the question text (the user turn)
  gold        the known answer (string)
  answer_type number | latex | choice
  answer      the final answer text to train on (what follows the think block), e.g. "The answer is 42."
              or "... \\boxed{42}"; never empty
  trace       the reasoning WITHOUT <think> tags ("" for answer_only)
  variant     raw | compressed | truncated | answer_only
  meta        provenance and counts, by stage:
              all: stage, time (unix), trace_chars, answer_chars, student_tokens (trace, when a student
                   tokenizer is configured)
              raw: engine, model, sampling (SamplingParams dict), seed (per request), prompt_hash
                   (sha256 of the chat messages), prompt_tokens, completion_tokens, finish_reason,
                   extracted (answer found), correct (True/False/None = unverified)
              compressed: source_id, compressor, rho_chars (= chars(compressed) / chars(raw)),
                   raw_chars, raw_student_tokens, rho_tokens (student tokens ratio), attempts,
                   fallback ("raw" when validation failed under policy keep_raw) and failure (reason)
              truncated: source_id, compressed_id, budget_tokens (the compressed twin's student tokens),
                   raw_student_tokens
              answer_only: source_id
Chat format for training: user = question; assistant = "<think>\\n" + trace + "\\n</think>\\n\\n" + answer.

A stage's output directory:
  {prefix}-{part:05d}.jsonl          records of one finished chunk of work
  {prefix}-{part:05d}.errors.jsonl   failures of that chunk, one per line: {"id", "stage", "reason", "detail"}
  {prefix}-{part:05d}.done.json      written LAST: the work item ids the chunk covered and its counts
  summary.json                       the stage's summary (counts, rates, tables)
Every file is written to a temporary name and renamed into place, so a killed run leaves no half
files; a chunk without its done file is deleted and redone on the next run. `prefix` names the stage
and the work split ("generate-shard000of004"), so hosts sharing a directory never collide. Resuming
skips the ids listed in done files; a finished chunk is never rewritten.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Iterable, Iterator

VARIANTS = ("raw", "compressed", "truncated", "answer_only")
REQUIRED = {"id": str, "problem_id": str, "dataset": str, "question": str, "gold": str, "answer": str,
            "trace": str, "variant": str, "meta": dict}


def make_record(*, id: str, problem, answer: str, trace: str, variant: str, meta: dict) -> dict:
    """A record from a Problem (or a record dict holding its fields) and the new parts."""
    get = (lambda k: problem[k]) if isinstance(problem, dict) else (lambda k: getattr(problem, k))
    return {
        "id": id,
        "problem_id": get("problem_id") if isinstance(problem, dict) else problem.id,
        "dataset": get("dataset"),
        "question": get("question"),
        "gold": get("gold"),
        "answer_type": get("answer_type"),
        "answer": answer,
        "trace": trace,
        "variant": variant,
        "meta": {"trace_chars": len(trace), "answer_chars": len(answer), **meta},
    }


def validate_record(rec: Any, where: str) -> dict:
    """Raise ValueError naming `where` (file:line) and the field when a record is malformed."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: record must be a JSON object, got {type(rec).__name__}")
    for field, typ in REQUIRED.items():
        if field not in rec:
            raise ValueError(f"{where}: record {rec.get('id')!r} misses field {field!r}")
        if not isinstance(rec[field], typ):
            raise ValueError(f"{where}: record {rec.get('id')!r} field {field!r} must be {typ.__name__}, "
                             f"got {type(rec[field]).__name__}")
    if rec["variant"] not in VARIANTS:
        raise ValueError(f"{where}: record {rec['id']!r} variant {rec['variant']!r} not in {VARIANTS}")
    if not rec["answer"].strip():
        raise ValueError(f"{where}: record {rec['id']!r} has an empty answer")
    return rec


# ----------------------------------------------------------------------------- files


def atomic_write(path: str, data: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_chunk(out_dir: str, prefix: str, part: int, records: list[dict], errors: list[dict], done: dict) -> str:
    """Write one chunk (records, errors, then the done marker); returns the chunk's base path."""
    base = os.path.join(out_dir, f"{prefix}-{part:05d}")
    atomic_write(base + ".jsonl", _jsonl(records))
    atomic_write(base + ".errors.jsonl", _jsonl(errors))
    atomic_write(base + ".done.json", json.dumps(done, ensure_ascii=False, indent=1))
    return base


def _done_files(out_dir: str, prefix: str = "") -> list[str]:
    return sorted(glob.glob(os.path.join(out_dir, f"{prefix}*.done.json")))


def clean_partial(out_dir: str, prefix: str) -> list[str]:
    """Delete this prefix's chunk files without a done marker and its stray temporaries (left by a
    killed run). Only its own prefix: other hosts may be writing theirs into the same directory."""
    removed = []
    done = {p[: -len(".done.json")] for p in _done_files(out_dir, prefix)}
    for path in glob.glob(os.path.join(out_dir, f"{prefix}-*")):
        name = os.path.basename(path)
        base = re.sub(r"(\.errors)?\.jsonl$", "", path)
        if ".tmp" in name or (path.endswith(".jsonl") and base not in done):
            os.remove(path)
            removed.append(path)
    return removed


def finished(out_dir: str) -> tuple[set[str], list[dict]]:
    """(ids of finished work items, done infos) over every chunk in the directory."""
    ids, infos = set(), []
    for path in _done_files(out_dir):
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        ids.update(info["ids"])
        infos.append(info)
    return ids, infos


def next_part(out_dir: str, prefix: str) -> int:
    parts = [int(m.group(1)) for p in _done_files(out_dir, prefix)
             if (m := re.search(r"-(\d+)\.done\.json$", p))]
    return max(parts) + 1 if parts else 0


def chunk_files(out_dir: str, suffix: str = ".jsonl") -> list[str]:
    """Files of finished chunks only, sorted by name."""
    return [p[: -len(".done.json")] + suffix for p in _done_files(out_dir)]


def iter_jsonl(path: str) -> Iterator[tuple[str, dict]]:
    """(file:line, object) of a JSONL file; raises ValueError naming file:line on bad UTF-8 or JSON."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{where}: not a valid UTF-8 JSON line: {e}") from e


def read_records(path: str, variant: str | None = None) -> Iterator[dict]:
    """Records of a stage directory (finished chunks only, validated) or of one JSONL file."""
    files = [path] if os.path.isfile(path) else chunk_files(path)
    if not files and not os.path.isdir(path):
        raise FileNotFoundError(f"no trace records at {path!r}")
    for file in files:
        for where, rec in iter_jsonl(file):
            validate_record(rec, where)
            if variant is None or rec["variant"] == variant:
                yield rec


def index_records(path: str, variant: str | None = None) -> dict[str, tuple[str, int]]:
    """id -> (file, byte offset) over a stage directory's finished chunks, so a stage can join against
    another's records without holding their text in memory (see read_at)."""
    index = {}
    for file in chunk_files(path):
        with open(file, "rb") as f:
            offset = 0
            for raw in f:
                if raw.strip():
                    rec = json.loads(raw)
                    if variant is None or rec.get("variant") == variant:
                        index[rec["id"]] = (file, offset)
                offset += len(raw)
    return index


def read_at(file: str, offset: int) -> dict:
    with open(file, "rb") as f:
        f.seek(offset)
        line = f.readline()
    return validate_record(json.loads(line.decode("utf-8")), f"{file}@{offset}")


def batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items from any iterable (streams; nothing is loaded ahead)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_errors(out_dir: str) -> list[dict]:
    return [e for file in chunk_files(out_dir, ".errors.jsonl") for _, e in iter_jsonl(file)]


def write_summary(out_dir: str, summary: dict) -> None:
    atomic_write(os.path.join(out_dir, "summary.json"), json.dumps(summary, ensure_ascii=False, indent=1, default=str))


def parse_shard(spec: str) -> tuple[int, int]:
    """"i/n" -> (i, n) with 0 <= i < n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec or "0/1")
    if not m or not int(m[1]) < int(m[2]):
        raise ValueError(f"shard must look like 'i/n' with 0 <= i < n, got {spec!r}")
    return int(m[1]), int(m[2])


def in_shard(item_id: str, shard: tuple[int, int]) -> bool:
    """Stable assignment of work items to hosts by id hash (independent of order and of other items)."""
    import hashlib

    i, n = shard
    return n == 1 or int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big") % n == i


def shard_prefix(stage: str, shard: tuple[int, int]) -> str:
    return f"{stage}-shard{shard[0]:03d}of{shard[1]:03d}"
