"""Trace records and their sharded, resumable storage.

Record: one JSON object per line (UTF-8), one per kept trace. Every variant has the same ten fields,
all strings, so training reads any of them and the usual tools load any mix of stage folders as one
table (`datasets.load_dataset("json", data_files=[f"{d}/*.jsonl" for d in dirs])`,
`pandas.read_json(file, lines=True)`):
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
  variant     raw | compressed | truncated | answer_only | pruned (traces/prune.py)
  meta        provenance and counts as the JSON text of an object (`json.loads(row["meta"])`); the
              readers here (read_records, index_records, read_at) hand it back decoded, as a dict:
              all: stage, time (unix), trace_chars, answer_chars, student_tokens (trace, when a student
                   tokenizer is configured)
              raw: engine, model, sampling (SamplingParams dict), seed (per request), prompt_hash
                   (sha256 of the chat messages), prompt_tokens, completion_tokens, finish_reason,
                   extracted (answer found), correct (True/False/None = unverified)
              compressed: source_id, compressor, rho_chars (= chars(compressed) / chars(raw)),
                   raw_chars, raw_student_tokens, rho_tokens (student tokens ratio), attempts, teacher
                   ({engine, model} of the raw record), fallback ("raw" when validation failed under
                   policy keep_raw) and failure (reason)
              truncated: source_id, compressed_id, compressor, budget_tokens (the compressed twin's
                   student tokens), raw_student_tokens
              answer_only: source_id
              pruned: source_id, mode, budget, budget_tokens, raw_student_tokens, scorer, removed_tokens
                   or removed_steps (and compressed_id, compressor under budget=match:<c>); traces/prune.py
Why meta is JSON text and not an object: Arrow (under `datasets`) gives each file's columns the type
of the values it holds, and a field that is null in a whole file (student_tokens without a tokenizer,
rho_* in a raw file, budget_tokens in an answer_only chunk) becomes type null there, which the next
file's numbers cannot be cast to: loading fails or not by the order of the files, whatever fixed set
of keys the object had. Text has one type whatever it holds, and the stages read meta through the
readers here, so no reader decodes it itself.
Chat format for training: user = question; assistant = "<think>\\n" + trace + "\\n</think>\\n\\n" + answer.

A stage's output directory (only record files end in .jsonl at its top level):
  {prefix}-{part:05d}.jsonl          records of one finished chunk of work
  errors/{prefix}-{part:05d}.jsonl   failures of that chunk, one per line: {"id", "stage", "reason",
                                     "detail", ...}; a skipped input row also has "where" (file:line)
                                     and "field"
  {prefix}-{part:05d}.done.json      written LAST: the work item ids the chunk covered, its counts, and the
                                     line and byte counts of its two files (keyed by path in the directory)
  {prefix}.lock                      while a run writes this prefix: its host and pid (traces/lock.py)
  summary.json                       the stage's summary (counts, rates, tables)
Every file is written to a temporary name and renamed into place (on gs://: uploaded as one object,
which GCS shows only once complete; storage.write_atomic), so a killed run leaves no half files; a
chunk without its done file is deleted and redone on the next run, and so is a chunk whose files no
longer match the counts its done file holds (a lost or cut file: warned, never trusted). `prefix`
names the stage and the work split ("generate-shard000of004"), so hosts sharing a directory never
collide; Ray actors (traces/dispatch.py) write the chunks the driver numbered, under its prefix.
Resuming skips the ids listed in trusted done files; a finished chunk is never rewritten.

The previous format (meta an object; errors in {prefix}-{part:05d}.errors.jsonl beside the records) is
still read, meta included, so its folders remain inputs of the next stage and of training. A stage run
does not add chunks to such a folder (it would mix two schemas in one table): it stops before any work,
naming a file of the old format; `python -m jax_distill.traces.store upgrade DIR` rewrites the finished
chunks of DIR in place (nothing is regenerated), or the stage writes to a new out_dir.

`run_chunks` is the one resumable loop every chunked stage runs (generate, compress, truncate): the
stage hands it its work items by id and how to process one chunk of them; the loop owns the rest.
A bad input row (a line that does not parse, a missing or mistyped field: see index_records) is a
work item of its own: the loop counts it under `skipped` by reason, writes it to the errors file with
its file:line and field, and lists the first few per reason in the summary (`skipped_examples`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from jax_distill import checks, records, storage
from jax_distill.records import BadRecord
from jax_distill.traces import lock
from jax_distill.traces.stats import Progress, merge_counts

log = logging.getLogger(__name__)

VARIANTS = ("raw", "compressed", "truncated", "answer_only", "pruned")
REQUIRED = {"id": str, "problem_id": str, "dataset": str, "question": str, "gold": str, "answer_type": str,
            "answer": str, "trace": str, "variant": str, "meta": str}
FIRST_FEW = 5  # skipped input rows listed per reason in a summary


def make_record(*, id: str, problem, answer: str, trace: str, variant: str, meta: dict) -> dict:
    """A record from a Problem (or a record dict holding its fields) and the new parts; meta is a dict
    here and JSON text on disk (write_chunk encodes it, the readers decode it)."""
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


def to_disk(rec: dict) -> dict:
    """A record as a line holds it: meta as the JSON text of its object."""
    return {**rec, "meta": json.dumps(rec["meta"], ensure_ascii=False)}


def validate_record(rec: Any, where: str) -> dict:
    """The record of one line with meta decoded; BadRecord (reason, `where` = file:line, field) when it is
    malformed. A meta object (the previous format) is taken as it is."""
    if not isinstance(_parsed(rec), dict):
        raise BadRecord("invalid_json", where, detail=f"a record is a JSON object, got {type(rec).__name__}")
    rid = rec.get("id")
    for field, typ in REQUIRED.items():
        if rec.get(field) is None:
            raise BadRecord("missing_field", where, field, f"record {rid!r} has no {field!r}")
        if not isinstance(rec[field], typ) and not (field == "meta" and isinstance(rec[field], dict)):
            raise BadRecord("wrong_type", where, field,
                            f"record {rid!r} field {field!r} must be {typ.__name__}, got {type(rec[field]).__name__}")
    if rec["variant"] not in VARIANTS:
        raise BadRecord("wrong_value", where, "variant", f"record {rid!r} variant {rec['variant']!r} not in {VARIANTS}")
    if not rec["answer"].strip():
        raise BadRecord("empty_field", where, "answer", f"record {rid!r} has an empty answer")
    meta = rec["meta"]
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as e:
            raise BadRecord("wrong_type", where, "meta", f"record {rid!r} meta is not JSON text: {e}") from None
        if not isinstance(meta, dict):
            raise BadRecord("wrong_type", where, "meta", f"record {rid!r} meta must hold a JSON object")
    return {**rec, "meta": meta}


# ----------------------------------------------------------------------------- chunk files

DONE = ".done.json"
ERRORS_DIR = "errors"
OLD_ERRORS = ".errors.jsonl"  # the previous format's errors file, beside the records


atomic_write = storage.write_atomic  # a local temporary renamed into place, or one gs:// upload


def _jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _chunk_paths(base: str) -> tuple[str, str]:
    """(records file, errors file) of the chunk at `base` ("{out_dir}/{prefix}-{part:05d}")."""
    out_dir, name = os.path.split(base)
    return base + ".jsonl", os.path.join(out_dir, ERRORS_DIR, name + ".jsonl")


def _file_entry(out_dir: str, path: str, data: bytes) -> tuple[str, dict]:
    return path[len(out_dir.rstrip("/")) + 1 :], {"lines": sum(1 for line in data.split(b"\n") if line.strip()),
                                            "bytes": len(data)}


def write_chunk(out_dir: str, prefix: str, part: int, records: list[dict], errors: list[dict], done: dict) -> str:
    """Write one chunk (records, errors, then the done marker holding their line and byte counts);
    returns the chunk's base path."""
    base = os.path.join(out_dir, f"{prefix}-{part:05d}")
    storage.makedirs(os.path.join(out_dir, ERRORS_DIR))
    files = {}
    for path, rows in zip(_chunk_paths(base), ([to_disk(r) for r in records], errors)):
        data = _jsonl(rows).encode("utf-8")
        atomic_write(path, data)
        rel, entry = _file_entry(out_dir, path, data)
        files[rel] = entry
    atomic_write(base + DONE, json.dumps({**done, "files": files}, ensure_ascii=False, indent=1))
    return base


def _raw_lines(data: bytes) -> list[bytes]:
    """A file's lines as iterating over it in binary gives them (each ends after a b"\\n", and only there)."""
    lines = data.split(b"\n")
    return [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def _lines(path: str) -> int:
    return sum(1 for line in storage.read_bytes(path).split(b"\n") if line.strip())


def _is_old(info: dict) -> bool:
    """A done marker of the previous format (its files keyed by suffix, errors beside the records)."""
    return OLD_ERRORS in info.get("files", {})


def _file_path(base: str, key: str) -> str:
    """The file a done marker's `files` key names: a path in the directory, or (previous format) a suffix."""
    return base + key if key.startswith(".") else os.path.join(os.path.dirname(base), key)


def _distrust(base: str, info: dict) -> str:
    """Why a done marker's chunk files cannot be trusted ('' = they match the counts it holds)."""
    if "files" not in info:
        return "the done marker holds no file counts"
    for key, want in info["files"].items():
        path = _file_path(base, key)
        if not storage.exists(path):
            return f"{path} is missing"
        # a gs:// object is written whole or not at all: its size is enough (no download)
        if storage.size(path) != want["bytes"] or (not storage.is_gcs(path) and _lines(path) != want["lines"]):
            return f"{path} has {_lines(path)} records ({storage.size(path)} bytes); its done marker says " \
                   f"{want['lines']} ({want['bytes']} bytes)"
    return ""


_warned: set[str] = set()


def _markers(out_dir: str, prefix: str = "") -> list[tuple[str, dict, str]]:
    """(chunk base path, done info, why untrusted or '') of every done marker under `prefix`, by name."""
    out = []
    for path in storage.glob(os.path.join(out_dir, f"{prefix}*{DONE}")):
        base = path[: -len(DONE)]
        info = json.loads(storage.read_bytes(path))
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
            storage.remove(base + DONE)
    done = {os.path.basename(base) for base, _, _ in _markers(out_dir, prefix)}
    for folder in (out_dir, os.path.join(out_dir, ERRORS_DIR)):
        for path in storage.glob(os.path.join(folder, f"{prefix}-*")):
            name = os.path.basename(path)
            chunk = re.sub(r"(\.errors)?\.jsonl$", "", name)
            if ".tmp" in name or (name.endswith(".jsonl") and chunk not in done):
                storage.remove(path)
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


def chunk_files(out_dir: str, kind: str = "records") -> list[str]:
    """The records (or `kind="errors"`: errors) files of trusted finished chunks only, sorted by name."""
    pick = 0 if kind == "records" else 1
    return [base + OLD_ERRORS if pick and _is_old(info) else _chunk_paths(base)[pick]
            for base, info, why in _markers(out_dir) if not why]


def refuse_old_format(out_dir: str) -> None:
    """A stage adds no chunk to a folder holding the previous format: ValueError naming one of its files."""
    old = [base for base, info, why in _markers(out_dir) if not why and _is_old(info)]
    if old:
        raise ValueError(
            f"{old[0]}.jsonl: written in the previous trace format (meta a JSON object, errors in "
            f"{OLD_ERRORS} beside the records; {len(old)} such chunk(s) in {out_dir}); a run does not mix two "
            f"formats in one folder: upgrade it in place first (`python -m jax_distill.traces.store upgrade "
            f"{out_dir}`, nothing is regenerated) or write to a new out_dir")


def upgrade(out_dir: str) -> list[str]:
    """Rewrite the previous format's finished chunks of `out_dir` in the current one (meta as JSON text,
    errors under errors/), each under its prefix's lock; returns their records files. Lines that do not
    parse are kept as they are. Killed midway, a chunk's files and done marker disagree: it is redone."""
    done = []
    for base, info, why in _markers(out_dir):
        if why or not _is_old(info):
            continue
        prefix = os.path.basename(base).rsplit("-", 1)[0]
        with lock.hold(out_dir, prefix, "upgrade"):
            records_path, errors_path = _chunk_paths(base)
            lines = []
            # every line in place (blank or not parsing too): file:line stays the same
            for raw in _raw_lines(storage.read_bytes(records_path)):
                try:
                    rec = json.loads(raw) if raw.strip() else None
                except (UnicodeDecodeError, json.JSONDecodeError):
                    rec = None
                if isinstance(rec, dict) and isinstance(rec.get("meta"), dict):
                    raw = (json.dumps(to_disk(rec), ensure_ascii=False) + "\n").encode("utf-8")
                lines.append(raw)
            new = b"".join(lines)
            errors = storage.read_bytes(base + OLD_ERRORS)
            storage.makedirs(os.path.dirname(errors_path))
            atomic_write(errors_path, errors)
            files = dict(_file_entry(out_dir, p, d) for p, d in ((records_path, new), (errors_path, errors)))
            atomic_write(records_path, new)
            atomic_write(base + DONE, json.dumps({**info, "files": files}, ensure_ascii=False, indent=1))
            storage.remove(base + OLD_ERRORS)
            done.append(records_path)
    return done


# ----------------------------------------------------------------------------- reading


def read_records(path: str, variant: str | None = None) -> Iterator[dict]:
    """Records of a stage directory (trusted finished chunks only, validated, meta decoded) or of one
    JSONL file; a bad row raises BadRecord naming its file:line."""
    files = [path] if storage.isfile(path) else chunk_files(path)
    if not files and not storage.isdir(path):
        raise FileNotFoundError(f"no trace records at {path!r}")
    for file in files:
        for where, rec in records.iter_records(file):
            rec = validate_record(rec, where)
            if variant is None or rec["variant"] == variant:
                yield rec


def index_records(path: str, variant: str | None = None, skip: Callable[[BadRecord], None] | None = None,
                  ) -> dict[str, tuple[str, int, int]]:
    """id -> (file, byte offset, line) over a stage directory's finished chunks, so a stage can join
    against another's records without holding their text in memory (see read_at). A bad row (see
    validate_record) raises BadRecord naming file:line, or goes to `skip` (then run_chunks counts it)."""
    index = {}
    for file in chunk_files(path):
        offsets = [0]
        for raw in _raw_lines(storage.read_bytes(file)):
            offsets.append(offsets[-1] + len(raw))
        for where, rec in records.iter_records(file):
            try:
                rec = validate_record(rec, where)
            except BadRecord as bad:
                if skip is None:
                    raise
                skip(bad)
                continue
            if variant is None or rec["variant"] == variant:
                line = int(where.rsplit(":", 1)[1])
                index[rec["id"]] = (file, offsets[line - 1], line)
    return index


def skipped_items(bad: list[BadRecord]) -> dict[str, BadRecord]:
    """Work items of bad input rows for run_chunks, by a stable id: the file's name and the line."""
    return {os.path.basename(b.where): b for b in bad}


def read_at(file: str, offset: int, line: int) -> dict:
    """The record an index_records entry points at."""
    with records.open_binary(file) as f:
        f.seek(offset)
        raw = f.readline()
    where = f"{file}:{line}"
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRecord("invalid_json", where, detail=str(e)) from None
    return validate_record(rec, where)


def _parsed(row: Any) -> Any:
    """A row of records.iter_records, raising the BadRecord it holds in place of a line that did not parse."""
    if isinstance(row, BadRecord):
        raise row
    return row


def read_errors(out_dir: str) -> list[dict]:
    return [_parsed(e) for file in chunk_files(out_dir, "errors") for _, e in records.iter_records(file)]


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
    checks.is_type(config, "chunk_size", int)
    checks.at_least(config, "chunk_size", 1)
    checks.is_type(config, "shard", str)
    parse_shard(config.shard)
    checks.exists(config, "student_tokenizer", what="tokenizer folder", allow_empty=True)


# ----------------------------------------------------------------------------- the chunk loop

Chunk = tuple[list[dict], list[dict], dict]  # (records, errors, counts) of one processed chunk


def _bucket_total(value) -> int:
    return sum(value.values()) if isinstance(value, dict) else value


def _skipped_chunk(stage: str, inputs: str, bad: Mapping[str, BadRecord]) -> Chunk:
    """What a chunk's bad input rows add: one error each (with where and field) and their counts."""
    errors = [{"id": i, "stage": stage, "reason": b.reason, "where": b.where, "field": b.field, "detail": b.detail}
              for i, b in bad.items()]
    counts = {inputs: len(bad), "skipped": {}}
    for b in bad.values():
        counts["skipped"][b.reason] = counts["skipped"].get(b.reason, 0) + 1
    return [], errors, counts


def skipped_examples(out_dir: str, limit: int = FIRST_FEW) -> dict[str, list[str]]:
    """The first few skipped input rows per reason over a stage directory, as "file:line (field)"."""
    first: dict[str, list[str]] = {}
    for e in read_errors(out_dir):
        if "where" in e and len(first.setdefault(e["reason"], [])) < limit:
            first[e["reason"]].append(e["where"] + (f" ({e['field']})" if e.get("field") else ""))
    return first


@dataclasses.dataclass
class ChunkJob:
    """Processes and writes one numbered chunk, in this process or in a Ray actor (traces/dispatch.py):
    picklable, so `process` and `provenance` must be too (engines behind dispatch.Lazy)."""

    stage: str
    out_dir: str
    prefix: str
    inputs: str
    process: Callable[[list], Chunk]
    provenance: Callable[[], dict]

    def __call__(self, job: tuple[int, list[str], dict[str, Any]]) -> tuple[str, dict]:
        """(part, ids, item of each id) -> (the chunk's base path, its done info), once it is written."""
        part, ids, items = job
        recs, errors, counts = self.process([items[i] for i in ids if not isinstance(items[i], BadRecord)])
        bad = {i: items[i] for i in ids if isinstance(items[i], BadRecord)}
        if bad:
            _, bad_errors, bad_counts = _skipped_chunk(self.stage, self.inputs, bad)
            errors, counts = errors + bad_errors, merge_counts([{"counts": counts}, {"counts": bad_counts}])
        info = {"stage": self.stage, "ids": ids, "counts": counts, "time": time.time(), **self.provenance()}
        return write_chunk(self.out_dir, self.prefix, part, recs, errors, info), info


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
    dispatch: Callable[[ChunkJob, Iterable[tuple]], Iterable[tuple[str, dict]]] = map,
) -> dict:
    """Run `process` over the work items of this shard that no trusted chunk has finished, `chunk_size`
    items a chunk, each chunk written atomically as it comes back; returns the summary (also written).

    items       item id -> what `process` needs of it (a Problem, or a record's location: small, so a
                chunk can be shipped elsewhere); the ids are what done markers list. A BadRecord (a bad
                input row, see skipped_items) never reaches `process`: it counts as an input and under
                `skipped` by reason, and goes to the errors file with its file:line and field
    process     items -> (records, errors, counts); counts are summed over chunks by merge_counts
    balance     (input count, buckets): the summary's `balanced` says every input landed in one bucket
                (`skipped` is one too)
    shard_key   the id an item is sharded by (default: its own)
    provenance  extra fields for each done marker (e.g. the engine's name), asked after each chunk
                where it was processed
    summarize   the stage's own summary fields (tables), from the merged total over the directory
    dispatch    who runs the ChunkJob of each (part, ids, items) job: `map` here, or a pool of Ray actors
                (dispatch.make); any order, each job to completion once. Parts are numbered here, so the
                files are those of a run in this process whoever writes them
    """
    started = time.time()
    spec = parse_shard(shard)
    prefix = shard_prefix(stage, spec)
    inputs, buckets = balance
    storage.probe(out_dir)  # an unreachable gs:// folder fails in seconds, naming it
    storage.makedirs(out_dir)
    with lock.hold(out_dir, prefix, stage):  # one writer per prefix: a second is refused, naming the holder
        refuse_old_format(out_dir)
        clean_partial(out_dir, prefix)
        done_ids, _ = finished(out_dir)
        mine = [i for i in items if in_shard(shard_key(i), spec)]
        todo = [i for i in mine if i not in done_ids]
        chunks = [todo[k : k + chunk_size] for k in range(0, len(todo), chunk_size)]
        part = next_part(out_dir, prefix)
        progress = Progress(stage, len(todo), unit)
        run_infos = []
        job = ChunkJob(stage, out_dir, prefix, inputs, process, provenance)
        jobs = ((part + k, ids, {i: items[i] for i in ids}) for k, ids in enumerate(chunks))
        for base, info in dispatch(job, jobs):
            if not storage.exists(base + DONE):
                raise RuntimeError(f"{base}{DONE}: written by a worker but not visible here; with dispatch.kind=ray "
                                   f"on several hosts out_dir must be a folder they share (NFS) or gs://")
            run_infos.append(info)
            progress.update(len(info["ids"]))
        clean_partial(out_dir, prefix)  # temporaries of a worker that died mid-write
        total = merge_counts(finished(out_dir)[1])
        summary = {"stage": stage, "out_dir": out_dir, "shard": shard, f"{unit}_in_shard": len(mine),
                   "skipped_finished": len(mine) - len(todo), "this_run": merge_counts(run_infos), "total": total}
        if total:
            summary["balanced"] = total.get(inputs, 0) == sum(_bucket_total(total.get(b, 0))
                                                              for b in (*buckets, "skipped"))
        if total.get("skipped"):
            summary["skipped_examples"] = skipped_examples(out_dir)
        summary.update(summarize(total), seconds=round(time.time() - started, 2))
        write_summary(out_dir, summary)
    return summary


def main(argv: list[str]) -> int:
    """`python -m jax_distill.traces.store upgrade DIR...`: rewrite previous-format folders in place."""
    if len(argv) < 2 or argv[0] != "upgrade":
        print("usage: python -m jax_distill.traces.store upgrade DIR...", file=sys.stderr)
        return 2
    for out_dir in argv[1:]:
        files = upgrade(out_dir)
        print(f"{out_dir}: {len(files)} chunk(s) upgraded", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
