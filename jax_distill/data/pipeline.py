"""The training input pipeline: trace records -> packed, masked token rows, as one Grain chain.

  source (JSONL/Parquet records) -> this host's share (records i, i+n, ...) -> shuffle(seed, new order
  each epoch) -> repeat(epochs) -> format (validate, chat template, tokenize, mask, over-long policy)
  -> [worker processes] -> count (skips by reason, in the main process) -> pack (Grain first-fit /
  best-fit: segment ids 1..k per row, positions restarting at 0) -> batch -> finish (names, full
  batches, token counts)

Every stage is a Grain transform whose iterator state is plain JSON, so `iterator.get_state()` saved
in a checkpoint and `set_state()` on a fresh iterator continue at exactly the next batch, statistics
included. Nothing is dropped silently: bad records are counted by reason with the file and line of the
first few (or raise DataError with `strict`), over-long examples are counted as dropped or truncated.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from typing import Any

import grain
import numpy as np
from ml_collections import ConfigDict

from jax_distill import checks
from jax_distill.data.chat import TEMPLATES, ChatFormat, DataError, template_day
from jax_distill.data.sources import FORMATS, RecordSource, local_matches, resolve_files
from jax_distill.records import get_field

log = logging.getLogger(__name__)

# Why a record was skipped. "overlong_dropped" follows data.overlong, "not_in_ids" data.ids_file; all others are bad records
# (DataError instead of a skip when data.strict is set).
SKIP_REASONS = (
    "invalid_utf8",  # bytes that are not UTF-8 (or lone surrogates in JSON escapes)
    "invalid_json",  # a JSONL line that does not parse, or is not an object
    "missing_field",  # a mapped field (question, trace, answer) absent or null
    "wrong_type",  # a mapped field that is not a string
    "empty_field",  # empty question or answer
    "empty_trace",  # empty trace for a variant in data.trace_required (raw, compressed)
    "overlong_dropped",  # longer than seq_len (or, truncated, no assistant token left)
    "not_in_ids",  # its id is not in data.ids_file (a matched training set: data/matched.py)
)
FILTERS = ("overlong_dropped", "not_in_ids")  # policies, not bad records: never raise under data.strict
FIRST_FEW = 5  # locations kept per reason for the report
PACKING = ("first_fit", "best_fit", "none")
OVERLONG = ("drop", "truncate")


def data_config() -> ConfigDict:
    """Data fields of a training config (`config.data`), with defaults."""
    c = ConfigDict()
    c.path = ()  # trace files: paths, globs or directories (a tuple; "a,b" on the command line); gs:// allowed
    # with path empty: train on procedural traces of this many problems made at start (training/builtin.py); 0 = off
    c.builtin_problems = 0
    c.format = "auto"  # auto (by suffix: .jsonl/.json/.ndjson, .parquet/.pq) | jsonl | parquet
    c.fields = ConfigDict(  # record field names (dotted for nested: "meta.question")
        dict(question="question", trace="trace", answer="answer", id="id", variant="variant")
    )
    c.trace_required = ("raw", "compressed")  # variants whose empty trace is a bad record ("empty_trace")
    c.default_variant = "raw"  # variant of records without the variant field
    c.system = ""  # optional system message before the question
    c.template = "auto"  # chat (tokenizer's template) | fallback (chat.FALLBACK_TEMPLATE) | auto
    c.template_date = "2026-01-01"  # what strftime_now gives templates that stamp a date: same tokens every run
    c.template_kwargs = "{}"  # JSON of extra chat-template variables, e.g. {"reasoning_effort": "high"} (gpt-oss)
    c.end_of_turn = ""  # token ending the assistant turn; "" = the last special token the template writes
    c.pack = "first_fit"  # first_fit | best_fit | none (one example per row)
    c.pack_bins = 0  # rows filled at once before they are emitted; 0 = batch_size
    # examples per optimizer step (global): 0 = fill each batch's rows by tokens (train.budget=tokens or
    # steps); N = every batch holds exactly N examples, packed into its rows (train.budget=examples, which
    # sets it from train.examples_per_step; a short last batch holds the rest)
    c.examples_per_step = 0
    c.overlong = "drop"  # drop | truncate (keep the first seq_len tokens)
    # "" = every record; else a file of record ids (data.fields.id), one per line: train only on those (the
    # experiment's matched sets, so every variant of a cell trains on the same questions); others are
    # counted under skipped "not_in_ids"
    c.ids_file = ""
    c.strict = False  # bad records raise DataError (file, line, field) instead of a counted skip
    c.shuffle = True  # full random-access shuffle, a new order each epoch
    c.shuffle_seed = -1  # -1 = the seed given to make_dataset (the training seed)
    c.num_epochs = 1  # 0 = repeat forever (train for a number of steps)
    c.workers = 0  # Grain worker processes for formatting/tokenizing (0 = in the main process)
    c.read_threads = 4  # threads reading and formatting records ahead (per process)
    return c


def validate(cfg: ConfigDict) -> None:
    """Every data field (checks.ConfigError naming config.data.<field>), local paths included; the
    training validate calls it, and so does every dataset built here."""
    c = {"data": cfg}  # errors name the field as it sits in the training config
    checks.is_type(c, "data.path", tuple)
    checks.is_type(c, "data.builtin_problems", int)
    checks.at_least(c, "data.builtin_problems", 0)
    checks.need(bool(cfg.path) or cfg.builtin_problems > 0, "data.path",
                "must name the trace files (paths, globs or directories), or set data.builtin_problems")
    for part in cfg.path:
        checks.need(isinstance(part, str) and bool(part.strip()), "data.path", f"entries must be paths; got {part!r}")
        checks.need(part.startswith("gs://") or bool(local_matches(part)), "data.path", f"nothing matches {part!r}")
    checks.one_of(c, "data.format", FORMATS)
    for name in ("question", "trace", "answer", "id", "variant"):
        checks.is_type(c, f"data.fields.{name}", str)
    for name in ("question", "trace", "answer"):
        checks.need(bool(cfg.fields[name]), f"data.fields.{name}", "must name a record field")
    checks.is_type(c, "data.trace_required", tuple)
    checks.need(all(isinstance(v, str) for v in cfg.trace_required), "data.trace_required",
                f"must be variant names; got {cfg.trace_required!r}")
    checks.is_type(c, "data.ids_file", str)
    checks.need(not cfg.ids_file or cfg.ids_file.startswith("gs://") or os.path.isfile(cfg.ids_file), "data.ids_file",
                f"no such file: {cfg.ids_file!r}")
    for name in ("default_variant", "system", "end_of_turn"):
        checks.is_type(c, f"data.{name}", str)
    checks.one_of(c, "data.template", TEMPLATES)
    template_day(cfg.template_date)
    checks.json_object(cfg.template_kwargs, "data.template_kwargs")
    checks.one_of(c, "data.pack", PACKING)
    checks.one_of(c, "data.overlong", OVERLONG)
    for name in ("strict", "shuffle"):
        checks.is_type(c, f"data.{name}", bool)
    for name, low in (("pack_bins", 0), ("examples_per_step", 0), ("shuffle_seed", -1), ("num_epochs", 0), ("workers", 0), ("read_threads", 1)):
        checks.is_type(c, f"data.{name}", int)
        checks.at_least(c, f"data.{name}", low)


@dataclasses.dataclass
class DataStats:
    """What the pipeline read, skipped, truncated and packed so far (updated as batches are drawn).

    Record counts include the few records the packer has read ahead of the last emitted batch; after
    `set_state` they restart from the packer's restored position and re-count those records, so they
    end where an uninterrupted run ends. Token counts are exactly those of the emitted batches."""

    files: list[str]
    read: int = 0  # records read, usable or not
    used: int = 0  # examples that went into rows
    truncated: int = 0  # over-long examples cut to seq_len (policy "truncate"); included in `used`
    skipped: dict[str, int] = dataclasses.field(default_factory=lambda: {r: 0 for r in SKIP_REASONS})
    first: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # reason -> first locations
    batches: int = 0
    rows: int = 0  # rows with at least one example
    max_rows: int = 0  # the most rows with examples in one batch (train.fit_rows sizes the batch by it)
    examples: int = 0  # examples in emitted batches (segments)
    real_tokens: int = 0  # non-pad input tokens
    loss_tokens: int = 0  # targets with loss_mask 1
    pad_tokens: int = 0  # padding in emitted batches (all-pad filler rows of a last batch included)

    @property
    def packing_efficiency(self) -> float:
        """Non-pad fraction of all token slots emitted."""
        total = self.real_tokens + self.pad_tokens
        return self.real_tokens / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: copy.deepcopy(v) for k, v in dataclasses.asdict(self).items() if k != "files"}
        d["packing_efficiency"] = self.packing_efficiency
        d["skipped_total"] = sum(self.skipped.values())
        return d

    def summary(self) -> str:
        """One report line plus the first locations of each skip reason."""
        skipped = ", ".join(f"{r}={n}" for r, n in self.skipped.items() if n) or "none"
        lines = [
            f"data: read {self.read}, used {self.used}, truncated {self.truncated}, skipped {skipped}; "
            f"{self.batches} batches, packing efficiency {self.packing_efficiency:.3f}, "
            f"{self.real_tokens} real tokens, {self.loss_tokens} loss tokens"
        ]
        for reason, where in self.first.items():
            lines.append(f"  {reason}: {'; '.join(where)}")
        return "\n".join(lines)

    def _records_state(self) -> dict:
        return dict(read=self.read, used=self.used, truncated=self.truncated, skipped=dict(self.skipped),
                    first={k: list(v) for k, v in self.first.items()})

    def _tokens_state(self) -> dict:
        return dict(batches=self.batches, rows=self.rows, max_rows=self.max_rows, examples=self.examples,
                    real_tokens=self.real_tokens, loss_tokens=self.loss_tokens, pad_tokens=self.pad_tokens)

    def _load(self, state: dict) -> None:
        for k, v in copy.deepcopy(state).items():
            setattr(self, k, v)


def batch_stats(batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-batch numbers for step metrics: real tokens, loss tokens, packing efficiency."""
    real = int((batch["segment_ids"] > 0).sum())
    return dict(real_tokens=real, loss_tokens=int(batch["loss_mask"].sum()),
                packing_efficiency=real / batch["segment_ids"].size)


# ----------------------------------------------------------------------------- records -> examples


class _Skip(Exception):
    def __init__(self, reason: str, field: str = "", detail: str = ""):
        super().__init__(reason)
        self.reason, self.field, self.detail = reason, field, detail


def _text(record: dict, field: str) -> str:
    value = get_field(record, field)
    if value is None:
        raise _Skip("missing_field", field, "absent or null")
    if isinstance(value, bytes):  # Parquet binary columns
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _Skip("invalid_utf8", field, f"byte {e.start}") from None
    if not isinstance(value, str):
        raise _Skip("wrong_type", field, f"expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from "\ud800" escapes
        raise _Skip("invalid_utf8", field, "lone surrogate") from None
    return value


class _Format:
    """Record -> example (tokens/targets/loss_mask) or a skip marker; runs in threads or workers."""

    def __init__(self, chat: ChatFormat, cfg: ConfigDict, seq_len: int, files: list[str], formats: list[str]):
        self.chat, self.seq_len = chat, seq_len
        self.fields = cfg.fields.to_dict()
        self.trace_required = set(cfg.trace_required)
        self.default_variant = cfg.default_variant
        self.truncate = cfg.overlong == "truncate"
        self.strict = cfg.strict
        self.files, self.formats = files, formats
        self.ids = read_ids(cfg.ids_file) if cfg.ids_file else None

    def where(self, element: dict) -> str:
        unit = "line" if self.formats[element["file"]] == "jsonl" else "row"
        return f"{self.files[element['file']]}:{unit} {element['line']}"

    def __call__(self, element: dict) -> dict:
        try:
            return self._example(element)
        except _Skip as s:
            if self.strict and s.reason not in FILTERS:
                field = f" field {s.field!r}:" if s.field else ""
                raise DataError(f"{self.where(element)}:{field} {s.reason} ({s.detail})") from None
            return {"skip": s.reason, "field": s.field, "file": element["file"], "line": element["line"],
                    "index": element["index"]}

    def _record(self, element: dict) -> dict:
        if "row" in element:
            return element["row"]
        try:
            text = element["raw"].decode("utf-8")
        except UnicodeDecodeError as e:
            raise _Skip("invalid_utf8", "", f"byte {e.start} of the line") from None
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise _Skip("invalid_json", "", str(e)) from None
        if not isinstance(record, dict):
            raise _Skip("invalid_json", "", f"a JSON {type(record).__name__}, not an object")
        return record

    def verdict(self, element: dict) -> tuple[str | None, str | None, str]:
        """(record id, variant, skip reason or "") of one record as training would see it, data.ids_file
        aside: what the matched-set stage filters on."""
        record, rid, variant = None, None, None
        try:
            record = self._record(element)
            rid = get_field(record, self.fields["id"]) if self.fields.get("id") else None
            variant = get_field(record, self.fields["variant"]) if self.fields.get("variant") else None
            self._from_record(record, element)
            return rid, variant or self.default_variant, ""
        except _Skip as s:
            return rid, variant or self.default_variant, s.reason

    def _example(self, element: dict) -> dict:
        record = self._record(element)
        if self.ids is not None:
            rid = get_field(record, self.fields["id"]) if self.fields.get("id") else None
            if rid not in self.ids:
                raise _Skip("not_in_ids", self.fields.get("id", ""), f"id {rid!r} not in data.ids_file")
        return self._from_record(record, element)

    def _from_record(self, record: dict, element: dict) -> dict:
        f = self.fields
        question, answer, trace = _text(record, f["question"]), _text(record, f["answer"]), _text(record, f["trace"])
        variant = self.default_variant
        if f.get("variant") and get_field(record, f["variant"]) is not None:
            variant = _text(record, f["variant"])
        if not question.strip():
            raise _Skip("empty_field", f["question"], "empty")
        if not answer.strip():
            raise _Skip("empty_field", f["answer"], "empty")
        if not trace.strip() and variant in self.trace_required:
            raise _Skip("empty_trace", f["trace"], f"empty trace for variant {variant!r}")
        ids, mask = self.chat.encode(question.strip(), trace.strip(), answer.strip(), self.where(element))
        n = len(ids) - 1  # (input, target) pairs
        truncated = 0
        if n > self.seq_len:
            if not self.truncate:
                raise _Skip("overlong_dropped", "", f"{n} tokens > seq_len {self.seq_len}")
            ids, mask, n, truncated = ids[: self.seq_len + 1], mask[: self.seq_len + 1], self.seq_len, 1
            if not mask[1:].any():
                raise _Skip("overlong_dropped", "", f"prompt alone fills seq_len {self.seq_len}")
        return {"tokens": ids[:-1], "targets": ids[1:], "loss_mask": mask[1:], "index": element["index"],
                "truncated": truncated}


# ----------------------------------------------------------------------------- stateful stages


class _CountIterator(grain.DatasetIterator):
    def __init__(self, parent, stats: DataStats, where, shard_len: int):
        super().__init__(parent)
        self.stats, self._where, self._shard_len = stats, where, shard_len
        self._run = 0  # consecutive skips: a full pass without a usable record is an error

    def __next__(self):
        while True:
            element = next(self._parent)
            s = self.stats
            s.read += 1
            if "skip" not in element:
                self._run = 0
                s.used += 1
                s.truncated += int(element.pop("truncated"))
                return element
            reason = element["skip"]
            s.skipped[reason] += 1
            first = s.first.setdefault(reason, [])
            if len(first) < FIRST_FEW:
                loc = self._where(element["file"], element["line"])
                loc += f" ({element['field']})" if element["field"] else ""
                if loc not in first:  # later epochs meet the same records again
                    first.append(loc)
                    log.warning("data: skipped %s: %s", reason, loc)
            self._run += 1
            if self._run >= self._shard_len:
                raise DataError(f"no usable record in a full pass over this host's data\n{s.summary()}")

    def get_state(self):
        return {"parent": self._parent.get_state(), "records": self.stats._records_state(), "run": self._run}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self.stats._load(state["records"])
        self._run = state["run"]


class _Count(grain.IterDataset):
    """Counts records and skips (in the main process, so stats hold with worker processes too)."""

    def __init__(self, parent, stats: DataStats, where, shard_len: int):
        super().__init__(parent)
        self._stats, self._where, self._shard_len = stats, where, shard_len

    def __iter__(self):
        self._stats._load(DataStats(self._stats.files)._records_state())
        return _CountIterator(self._parent.__iter__(), self._stats, self._where, self._shard_len)


class _FinishIterator(grain.DatasetIterator):
    def __init__(self, parent, stats: DataStats, batch_size: int, pad: int):
        super().__init__(parent)
        self.stats, self._batch_size, self._pad = stats, batch_size, pad

    def __next__(self):
        b = next(self._parent)
        out = {
            "tokens": b["tokens"],
            "targets": b["targets"],
            "positions": b["tokens_positions"],
            "segment_ids": b["tokens_segment_ids"],
            "loss_mask": b["loss_mask"],
        }
        rows = out["tokens"].shape[0]
        if rows < self._batch_size:  # the last batch: filler rows of padding, never dropped examples
            fill = {"tokens": self._pad, "targets": self._pad}
            out = {k: np.concatenate([v, np.full((self._batch_size - rows,) + v.shape[1:], fill.get(k, 0), v.dtype)])
                   for k, v in out.items()}
        out = {k: np.ascontiguousarray(v, np.int32) for k, v in out.items()}
        s = self.stats
        real = int((out["segment_ids"] > 0).sum())
        s.batches += 1
        s.rows += rows
        s.max_rows = max(s.max_rows, rows)
        s.examples += int(out["segment_ids"].max(axis=1).sum())  # segments are 1..k per row
        s.real_tokens += real
        s.pad_tokens += out["segment_ids"].size - real
        s.loss_tokens += int(out["loss_mask"].sum())
        return out

    def get_state(self):
        return {"parent": self._parent.get_state(), "tokens": self.stats._tokens_state()}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self.stats._load(state["tokens"])


class _Finish(grain.IterDataset):
    """Names the packed features, fills a short last batch with padding rows, counts tokens."""

    def __init__(self, parent, stats: DataStats, batch_size: int, pad: int):
        super().__init__(parent)
        self._stats, self._batch_size, self._pad = stats, batch_size, pad

    def __iter__(self):
        self._stats._load(DataStats(self._stats.files)._tokens_state())
        return _FinishIterator(self._parent.__iter__(), self._stats, self._batch_size, self._pad)


def pack_step(examples: list[dict], rows: int, seq_len: int, pad: int, one_per_row: bool = False) -> dict[str, np.ndarray]:
    """One optimizer step's examples packed into at most `rows` rows (first fit, longest first; data.pack
    none: one per row), in the packers' feature names; DataError when they do not fit."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["tokens"]))
    fill, members = [], []  # per row: tokens used, example indices
    for i in order:
        n = len(examples[i]["tokens"])
        row = None if one_per_row else next((r for r, used in enumerate(fill) if used + n <= seq_len), None)
        if row is None:
            if len(fill) == rows:
                total = sum(len(e["tokens"]) for e in examples)
                raise DataError(f"train.examples_per_step: {len(examples)} examples ({total} tokens) do not fit in "
                                f"{rows} rows of seq_len {seq_len}; lower train.examples_per_step (at most "
                                f"train.batch_size always fits) or raise train.batch_size")
            fill.append(0), members.append([])
            row = len(fill) - 1
        fill[row] += n
        members[row].append(i)
    out = {k: np.full((len(fill), seq_len), pad if k in ("tokens", "targets") else 0, np.int32)
           for k in ("tokens", "targets", "loss_mask", "tokens_positions", "tokens_segment_ids")}
    for r, idx in enumerate(members):
        at = 0
        for seg, i in enumerate(sorted(idx), start=1):  # within a row, in stream order
            e, n = examples[i], len(examples[i]["tokens"])
            for k in ("tokens", "targets", "loss_mask"):
                out[k][r, at:at + n] = e[k]
            out["tokens_positions"][r, at:at + n] = np.arange(n)
            out["tokens_segment_ids"][r, at:at + n] = seg
            at += n
    return out


class _StepPackIterator(grain.DatasetIterator):
    def __init__(self, parent, per_step: int, rows: int, seq_len: int, pad: int, one_per_row: bool):
        super().__init__(parent)
        self._per_step, self._pack = per_step, (rows, seq_len, pad, one_per_row)

    def __next__(self):
        group = []
        for _ in range(self._per_step):
            example = next(self._parent, None)
            if example is None:
                break
            group.append(example)
        if not group:
            raise StopIteration
        return pack_step(group, *self._pack)

    def get_state(self):  # a step consumes whole groups: the parent's position is the whole state
        return {"parent": self._parent.get_state()}

    def set_state(self, state):
        self._parent.set_state(state["parent"])


class _StepPack(grain.IterDataset):
    """Exactly `per_step` examples per batch (train.budget=examples), packed into its rows."""

    def __init__(self, parent, per_step: int, rows: int, seq_len: int, pad: int, one_per_row: bool):
        super().__init__(parent)
        self._args = (per_step, rows, seq_len, pad, one_per_row)

    def __iter__(self):
        return _StepPackIterator(self._parent.__iter__(), *self._args)


# ----------------------------------------------------------------------------- public entry points


def _check_arguments(seq_len: int, batch_size: int, process_index: int, process_count: int) -> None:
    if seq_len < 2 or batch_size < 1:
        raise DataError(f"need seq_len >= 2 and batch_size >= 1, got {seq_len}, {batch_size}")
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} not in [0, {process_count})")


def example_dataset(
    cfg: ConfigDict, tokenizer, *, seq_len: int, seed: int, process_index: int = 0, process_count: int = 1,
    stats: DataStats | None = None,
) -> tuple[grain.IterDataset, DataStats]:
    """This host's stream of formatted examples before packing: dicts of `tokens`, `targets`,
    `loss_mask` ([n] int32, n <= seq_len) and `index` (global record index, for tests and debugging)."""
    validate(cfg)
    _check_arguments(seq_len, 1, process_index, process_count)
    files = resolve_files(cfg.path, cfg.format)
    columns = sorted({v.split(".")[0] for v in cfg.fields.to_dict().values() if v})
    source = RecordSource(files, cfg.format, columns)
    stats = stats or DataStats(source.names)
    ds = grain.MapDataset.source(source)[process_index::process_count]
    shard_len = len(ds)
    if shard_len == 0:
        raise DataError(f"host {process_index} of {process_count} has no records ({len(source)} in {cfg.path!r})")
    if cfg.shuffle:
        shuffle_seed = seed if cfg.shuffle_seed < 0 else cfg.shuffle_seed
        ds = ds.shuffle(seed=int(shuffle_seed) % 2**32)
    ds = ds.repeat(cfg.num_epochs or None)
    ds = ds.map(_Format(ChatFormat(tokenizer, cfg), cfg, seq_len, source.names, source.formats))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=64))
    if cfg.workers:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.workers))
    return _Count(it, stats, source.where, shard_len), stats


def make_dataset(
    cfg: ConfigDict, tokenizer, *, seq_len: int, batch_size: int, seed: int, process_index: int = 0,
    process_count: int = 1,
) -> tuple[grain.IterDataset, DataStats]:
    """This host's batches: dicts of int32 [batch_size, seq_len] arrays `tokens`, `targets` (next
    token), `positions` (from 0 per example), `segment_ids` (1..k per row, 0 = padding) and `loss_mask`
    (1 on assistant targets, end-of-turn included). `iter(ds)` is a Grain DatasetIterator: save
    `get_state()` in checkpoints, `set_state()` continues at exactly the next batch. `stats` (DataStats)
    follows the iterator most recently created and is restored with its state."""
    _check_arguments(seq_len, batch_size, process_index, process_count)
    examples, stats = example_dataset(
        cfg, tokenizer, seq_len=seq_len, seed=seed, process_index=process_index, process_count=process_count
    )
    lengths = {"tokens": seq_len, "targets": seq_len, "loss_mask": seq_len}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    padding = {"tokens": pad, "targets": pad, "loss_mask": 0}
    bins = cfg.pack_bins or batch_size
    if cfg.examples_per_step:
        if cfg.examples_per_step % process_count:
            raise DataError(f"data.examples_per_step {cfg.examples_per_step} does not divide over {process_count} shards")
        stepped = _StepPack(examples, cfg.examples_per_step // process_count, batch_size, seq_len, pad,
                            cfg.pack == "none")
        return _Finish(stepped, stats, batch_size, pad), stats
    if cfg.pack == "none":
        packed = grain.experimental.FirstFitPackIterDataset(
            examples, length_struct=lengths, num_packing_bins=batch_size, shuffle_bins=False,
            padding_struct=padding, max_sequences_per_bin=1,
        )
    else:
        cls = {"first_fit": grain.experimental.FirstFitPackIterDataset,
               "best_fit": grain.experimental.BestFitPackIterDataset}[cfg.pack]
        packed = cls(examples, length_struct=lengths, num_packing_bins=bins, seed=int(seed) % 2**32,
                     shuffle_bins=True, padding_struct=padding)
    batched = packed.batch(batch_size, drop_remainder=False)
    return _Finish(batched, stats, batch_size, pad), stats


def read_ids(path: str) -> frozenset[str]:
    """The ids of an ids file (one per line, blank lines ignored), local or gs://."""
    from jax_distill import storage

    return frozenset(line.strip() for line in storage.read_bytes(path).decode("utf-8").splitlines() if line.strip())


def record_verdicts(cfg: ConfigDict, tokenizer, *, seq_len: int) -> list[tuple[str | None, str | None, str]]:
    """(record id, variant, skip reason or "") for every record of cfg.path, in file order, formatted
    exactly as training formats it (same chat format, seq_len and over-long policy; data.ids_file aside)."""
    validate(cfg)
    files = resolve_files(cfg.path, cfg.format)
    columns = sorted({v.split(".")[0] for v in cfg.fields.to_dict().values() if v})
    source = RecordSource(files, cfg.format, columns)
    fmt = _Format(ChatFormat(tokenizer, cfg), cfg, seq_len, source.names, source.formats)
    return [fmt.verdict(source[i]) for i in range(len(source))]


def count_batches(cfg: ConfigDict, tokenizer, epochs: int = 1, **kwargs) -> tuple[int, DataStats]:
    """Batches in `epochs` epochs of this host's data (a full formatting pass; for schedules that need
    the number of steps, and train.fit_rows: stats.max_rows). Takes make_dataset's keyword arguments."""
    one = ConfigDict(cfg.to_dict())
    one.num_epochs = epochs
    ds, stats = make_dataset(one, tokenizer, **kwargs)
    n = sum(1 for _ in iter(ds))
    return n, stats
