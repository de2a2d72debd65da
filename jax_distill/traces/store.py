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
  {prefix}-{part:05d}.done.json      written LAST: the work item ids the chunk covered, its counts, and the
                                     line and byte counts of its two files
  {prefix}.lock                      while a run writes this prefix: its host and pid (traces/lock.py)
  summary.json                       the stage's summary (counts, rates, tables)
Every file is written to a temporary name and renamed into place, so a killed run leaves no half
files; a chunk without its done file is deleted and redone on the next run, and so is a chunk whose
files no longer match the counts its done file holds (a lost or cut file: warned, never trusted).
`prefix` names the stage and the work split ("generate-shard000of004"), so hosts sharing a directory
never collide. Resuming skips the ids listed in trusted done files; a finished chunk is never rewritten.

`run_chunks` is the one resumable loop every chunked stage runs (generate, compress, truncate): the
stage hands it its work items by id and how to process one chunk of them; the loop owns the rest.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from jax_distill import checks, records
from jax_distill.records import BadRecord
from jax_distill.traces import lock
from jax_distill.traces.stats import Progress, merge_counts

log = logging.getLogger(__name__)

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



# ----------------------------------------------------------------------------- chunk files

DONE = ".done.json"
CHUNK_FILES = (".jsonl", ".errors.jsonl")  # each chunk's files, in writing order (the done marker last)


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
    """Write one chunk (records, errors, then the done marker holding their line and byte counts);
    returns the chunk's base path."""
    base = os.path.join(out_dir, f"{prefix}-{part:05d}")
    files = {}
    for suffix, rows in zip(CHUNK_FILES, (records, errors)):
        data = _jsonl(rows)
        atomic_write(base + suffix, data)
        files[suffix] = {"lines": len(rows), "bytes": len(data.encode("utf-8"))}
    atomic_write(base + DONE, json.dumps({**done, "files": files}, ensure_ascii=False, indent=1))
    return base


def _lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _distrust(base: str, info: dict) -> str:
    """Why a done marker's chunk files cannot be trusted ('' = they match the counts it holds)."""
    if "files" not in info:
        return "the done marker holds no file counts"
    for suffix, want in info["files"].items():
        path = base + suffix
        if not os.path.exists(path):
            return f"{path} is missing"
        if os.path.getsize(path) != want["bytes"] or _lines(path) != want["lines"]:
            return f"{path} has {_lines(path)} records ({os.path.getsize(path)} bytes); its done marker says " \
                   f"{want['lines']} ({want['bytes']} bytes)"
    return ""


_warned: set[str] = set()


def _markers(out_dir: str, prefix: str = "") -> list[tuple[str, dict, str]]:
    """(chunk base path, done info, why untrusted or '') of every done marker under `prefix`, by name."""
    out = []
    for path in sorted(glob.glob(os.path.join(out_dir, f"{prefix}*{DONE}"))):
        base = path[: -len(DONE)]
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        why = _distrust(base, info)
        if why and path not in _warned:
            _warned.add(path)
            log.warning("traces: not trusting finished chunk %s: %s; its work is redone", path, why)
        out.append((base, info, why))
    return out


def clean_partial(out_dir: str, prefix: str) -> list[str]:
    """Delete this prefix's chunk files without a trusted done marker and its stray temporaries (left by
    a killed run, or a lost file). Only its own prefix: other hosts may be writing theirs alongside."""
    removed = []
    for base, _, why in _markers(out_dir, prefix):
        if why:
            os.remove(base + DONE)
    done = {base for base, _, _ in _markers(out_dir, prefix)}
    for path in glob.glob(os.path.join(out_dir, f"{prefix}-*")):
        name = os.path.basename(path)
        base = re.sub(r"(\.errors)?\.jsonl$", "", path)
        if ".tmp" in name or (path.endswith(".jsonl") and base not in done):
            os.remove(path)
            removed.append(path)
    return removed


def finished(out_dir: str) -> tuple[set[str], list[dict]]:
    """(ids of finished work items, done infos) over every trusted chunk in the directory."""
    ids, infos = set(), []
    for _, info, why in _markers(out_dir):
        if not why:
            ids.update(info["ids"])
            infos.append(info)
    return ids, infos


def next_part(out_dir: str, prefix: str) -> int:
    parts = [int(m.group(1)) for base, _, _ in _markers(out_dir, prefix) if (m := re.search(r"-(\d+)$", base))]
    return max(parts) + 1 if parts else 0


def chunk_files(out_dir: str, suffix: str = ".jsonl") -> list[str]:
    """Files of trusted finished chunks only, sorted by name."""
    return [base + suffix for base, _, why in _markers(out_dir) if not why]


# ----------------------------------------------------------------------------- reading


def _parsed(row: Any) -> Any:
    """A row of records.iter_records, raising the BadRecord it holds in place of a line that did not parse."""
    if isinstance(row, BadRecord):
        raise row
    return row


def read_records(path: str, variant: str | None = None) -> Iterator[dict]:
    """Records of a stage directory (trusted finished chunks only, validated) or of one JSONL file."""
    files = [path] if os.path.isfile(path) else chunk_files(path)
    if not files and not os.path.isdir(path):
        raise FileNotFoundError(f"no trace records at {path!r}")
    for file in files:
        for where, rec in records.iter_records(file):
            rec = validate_record(_parsed(rec), where)
            if variant is None or rec["variant"] == variant:
                yield rec


def index_records(path: str, variant: str | None = None) -> dict[str, tuple[str, int, int]]:
    """id -> (file, byte offset, line) over a stage directory's finished chunks, so a stage can join
    against another's records without holding their text in memory (see read_at)."""
    index = {}
    for file in chunk_files(path):
        with open(file, "rb") as f:
            offsets = [0]
            for raw in f:
                offsets.append(offsets[-1] + len(raw))
        for where, rec in records.iter_records(file):
            rec = validate_record(_parsed(rec), where)
            if variant is None or rec["variant"] == variant:
                line = int(where.rsplit(":", 1)[1])
                index[rec["id"]] = (file, offsets[line - 1], line)
    return index


def read_at(file: str, offset: int, line: int) -> dict:
    """The record an index_records entry points at."""
    with open(file, "rb") as f:
        f.seek(offset)
        raw = f.readline()
    where = f"{file}:{line}"
    try:
        return validate_record(json.loads(raw.decode("utf-8")), where)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRecord("invalid_json", where, detail=str(e)) from None


def read_errors(out_dir: str) -> list[dict]:
    return [_parsed(e) for file in chunk_files(out_dir, ".errors.jsonl") for _, e in records.iter_records(file)]


def write_summary(out_dir: str, summary: dict) -> None:
    atomic_write(os.path.join(out_dir, "summary.json"), json.dumps(summary, ensure_ascii=False, indent=1, default=str))


# ----------------------------------------------------------------------------- shards


def parse_shard(spec: str, field: str = "shard") -> tuple[int, int]:
    """"i/n" -> (i, n) with 0 <= i < n; a ConfigError naming `field` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    checks.need(bool(m) and int(m[1]) < int(m[2]), field, f"must look like 'i/n' with 0 <= i < n, got {spec!r}")
    return int(m[1]), int(m[2])


def in_shard(item_id: str, shard: tuple[int, int]) -> bool:
    """Stable assignment of work items to hosts by id hash (independent of order and of other items)."""
    i, n = shard
    return n == 1 or int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big") % n == i


def shard_prefix(stage: str, shard: tuple[int, int]) -> str:
    return f"{stage}-shard{shard[0]:03d}of{shard[1]:03d}"


def validate_chunking(config) -> None:
    """The fields every chunked stage declares: out_dir, chunk_size, shard, student_tokenizer."""
    checks.is_type(config, "out_dir", str)
    checks.need(bool(config.out_dir), "out_dir", "must name the stage's output directory")
    checks.need(not config.out_dir.startswith("gs://"), "out_dir", "must be a local directory (chunks are "
                "renamed into place); copy the finished directory to gs:// afterwards")
    checks.is_type(config, "chunk_size", int)
    checks.at_least(config, "chunk_size", 1)
    checks.is_type(config, "shard", str)
    parse_shard(config.shard)
    checks.exists(config, "student_tokenizer", what="tokenizer folder", allow_empty=True)


# ----------------------------------------------------------------------------- the chunk loop

Chunk = tuple[list[dict], list[dict], dict]  # (records, errors, counts) of one processed chunk


def _bucket_total(value) -> int:
    return sum(value.values()) if isinstance(value, dict) else value


def run_chunks(
    stage: str,
    out_dir: str,
    shard: str,
    chunk_size: int,
    items: Mapping[str, Any],
    process: Callable[[list], Chunk],
    *,
    unit: str,
    balance: tuple[str, tuple[str, ...]],
    shard_key: Callable[[str], str] = lambda item_id: item_id,
    provenance: Callable[[], dict] = dict,
    summarize: Callable[[dict], dict] = lambda total: {},
    dispatch: Callable[[Callable[[list], Chunk], Iterable[list]], Iterable[Chunk]] = map,
) -> dict:
    """Run `process` over the work items of this shard that no trusted chunk has finished, `chunk_size`
    items a chunk, each chunk written atomically as it comes back; returns the summary (also written).

    items       item id -> what `process` needs of it (a Problem, or a record's location: small, so a
                chunk can be shipped elsewhere); the ids are what done markers list
    process     items -> (records, errors, counts); counts are summed over chunks by merge_counts
    balance     (input count, buckets): the summary's `balanced` says every input landed in one bucket
    shard_key   the id an item is sharded by (default: its own)
    provenance  extra fields for each done marker (e.g. the engine's name), asked after each chunk
    summarize   the stage's own summary fields (tables), from the merged total over the directory
    dispatch    how chunks are processed: `map(process, chunks)` here; a remote pool (Ray workers on
                GPU hosts) plugs in as any map that yields the chunks' results in order
    """
    started = time.time()
    spec = parse_shard(shard)
    prefix = shard_prefix(stage, spec)
    os.makedirs(out_dir, exist_ok=True)
    with lock.hold(out_dir, prefix, stage):  # one writer per prefix: a second is refused, naming the holder
        clean_partial(out_dir, prefix)
        done_ids, _ = finished(out_dir)
        mine = [i for i in items if in_shard(shard_key(i), spec)]
        todo = [i for i in mine if i not in done_ids]
        chunks = [todo[k : k + chunk_size] for k in range(0, len(todo), chunk_size)]
        part = next_part(out_dir, prefix)
        progress = Progress(stage, len(todo), unit)
        run_infos = []
        for ids, (recs, errors, counts) in zip(chunks, dispatch(process, ([items[i] for i in ids] for ids in chunks))):
            info = {"stage": stage, "ids": ids, "counts": counts, "time": time.time(), **provenance()}
            write_chunk(out_dir, prefix, part, recs, errors, info)
            part += 1
            run_infos.append(info)
            progress.update(len(ids))
        total = merge_counts(finished(out_dir)[1])
        summary = {"stage": stage, "out_dir": out_dir, "shard": shard, f"{unit}_in_shard": len(mine),
                   "skipped_finished": len(mine) - len(todo), "this_run": merge_counts(run_infos), "total": total}
        if total:
            inputs, buckets = balance
            summary["balanced"] = total.get(inputs, 0) == sum(_bucket_total(total.get(b, 0)) for b in buckets)
        summary.update(summarize(total), seconds=round(time.time() - started, 2))
        write_summary(out_dir, summary)
    return summary
