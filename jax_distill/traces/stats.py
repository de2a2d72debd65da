"""Counting for the trace stages: student-token counts, progress lines with rate and ETA, the per
dataset x compressor summary table (the paper's mean rho / token ratio), the same rho for a teacher at a
lower reasoning effort against its reference effort (effort_table), and a CLI that prints the
statistics of any record directory:
`python -m jax_distill.traces.stats --config configs/traces/stats.py --config.path=DIR`.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter, defaultdict
from typing import Iterable

from jax_distill import records


class StudentTokens:
    """Token counts in the student's tokenizer (any HF tokenizer folder); None everywhere when unset."""

    def __init__(self, path: str = ""):
        self.path = path
        self.tokenizer = None
        if path:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(path)

    def __bool__(self) -> bool:
        return self.tokenizer is not None

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count(self, text: str) -> int | None:
        return len(self.ids(text)) if self.tokenizer is not None else None

    def cut(self, text: str, budget: int) -> tuple[str, int]:
        """The longest prefix of `text`, cut at a token boundary, that re-tokenizes to <= budget tokens."""
        if budget <= 0:
            return "", 0
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) <= budget:
            return text, len(offsets)
        keep = budget
        while keep > 0:
            prefix = text[: offsets[keep - 1][1]].rstrip()
            n = len(self.ids(prefix))
            if n <= budget:
                return prefix, n
            keep -= 1  # a merge across the cut can add a token: back off one token at a time
        return "", 0


class Progress:
    """Prints `stage: done/total (rate/s, ETA)` to stderr at most every `every_s` seconds and at the end."""

    def __init__(self, stage: str, total: int, unit: str = "items", every_s: float = 10.0):
        self.stage, self.total, self.unit, self.every_s = stage, total, unit, every_s
        self.done, self.start, self.last = 0, time.monotonic(), 0.0

    def update(self, n: int = 1, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if force or now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = "?" if left == float("inf") else f"{int(left // 60)}m{int(left % 60):02d}s"
        return f"{self.stage}: {self.done}/{self.total} {self.unit} ({rate:.2f}/s, ETA {eta})"


def merge_counts(infos: Iterable[dict]) -> dict:
    """Sum the `counts` of done infos: numbers add, nested {reason: n} dicts add per reason."""
    total: dict = {}
    for info in infos:
        for key, value in info.get("counts", {}).items():
            if isinstance(value, dict):
                total.setdefault(key, Counter()).update(value)
            else:
                total[key] = total.get(key, 0) + value
    return {k: dict(v) if isinstance(v, Counter) else v for k, v in total.items()}


def compression_table(records: Iterable[dict], failed_by_dataset: dict[str, int] | None = None) -> list[dict]:
    """Per (dataset, compressor): inputs, successes, fallbacks (keep_raw) and failures, and mean rho (chars
    and student tokens) two ways: over successes (`mean_rho_*`), and over all inputs (`mean_rho_*_all`),
    where a failure counts as 1, the raw trace kept whole: a fallback record as it is, and each of
    `failed_by_dataset` (the compress stage's count of inputs with no record: dropped, engine error)."""
    groups = defaultdict(list)
    for r in records:
        if r["variant"] == "compressed":
            groups[(r["dataset"], r["meta"].get("compressor", "?"))].append(r["meta"])
    failed = dict(failed_by_dataset or {})
    compressors = sorted({c for _, c in groups}) or ["?"]
    for dataset in failed:  # a dataset whose every input failed has no record, still a row
        if not any(d == dataset for d, _ in groups) and len(compressors) == 1:
            groups[(dataset, compressors[0])] = []
    rows = []
    for (dataset, compressor), metas in sorted(groups.items()):
        compressed = [m for m in metas if not m.get("fallback")]
        fallbacks = len(metas) - len(compressed)
        missing = failed.get(dataset, 0) - fallbacks if len(compressors) == 1 else 0  # dropped + engine errors
        rho = [m["rho_chars"] for m in compressed]
        tok = [m["rho_tokens"] for m in compressed if m.get("rho_tokens") is not None]
        rho_all = [m["rho_chars"] for m in metas] + [1.0] * missing
        tok_all = [m["rho_tokens"] for m in metas if m.get("rho_tokens") is not None] + ([1.0] * missing if tok else [])
        rows.append({
            "dataset": dataset,
            "compressor": compressor,
            "inputs": len(metas) + missing,
            "examples": len(metas),
            "compressed": len(compressed),
            "fallback_raw": fallbacks,
            "failed": fallbacks + missing,
            "mean_rho_chars": round(statistics.fmean(rho), 4) if rho else None,
            "mean_rho_chars_all": round(statistics.fmean(rho_all), 4) if rho_all else None,
            "mean_rho_tokens": round(statistics.fmean(tok), 4) if tok else None,
            "mean_rho_tokens_all": round(statistics.fmean(tok_all), 4) if tok_all else None,
        })
    return rows


def _kept_lengths(folder: str) -> tuple[dict[str, list[tuple]], dict[str, str]]:
    """problem_id -> [(trace chars, student tokens or None) per kept sample], problem_id -> dataset."""
    from jax_distill.traces.store import read_records

    samples, dataset = defaultdict(list), {}
    for r in read_records(folder, variant="raw"):
        samples[r["problem_id"]].append((len(r["trace"]), r["meta"].get("student_tokens")))
        dataset[r["problem_id"]] = r["dataset"]
    return samples, dataset


def _question_rho(effort: list[tuple], reference: list[tuple], i: int) -> float | None:
    """Mean length over a question's kept samples at the effort / the same at the reference (i: 0 chars,
    1 student tokens; None when a sample has no count, or the reference's tokens are 0)."""
    if any(s[i] is None for s in effort + reference):
        return None
    low, high = statistics.fmean(s[i] for s in effort), statistics.fmean(s[i] for s in reference)
    return low / max(high, 1) if i == 0 else (low / high if high else None)


def effort_table(effort_dir: str, reference_dir: str, label: str, by_dataset: bool = True) -> list[dict]:
    """Per dataset (or one row, dataset "all", with by_dataset=False): one teacher's kept traces at a lower reasoning effort (raw folder `effort_dir`)
    against its kept traces at the reference effort (`reference_dir`), paired BY QUESTION (problem_id;
    sample k at one effort is no twin of sample k at the other). A question's length at an effort is the
    MEAN over its kept samples (raw training trains on every one under keep=all_correct, on the one
    under first_correct), in chars and, where every sample of both counts them (meta.student_tokens:
    generate's student_tokenizer), in student tokens; rho = effort length / reference length.
    mean_rho_*: over the questions kept at both; mean_rho_*_all: over `inputs`, a lost question at 1 (as a
    failed compression: the reference trace kept). Counts, by question: inputs (kept at the reference,
    generated at the effort: in its finished chunks), examples (kept at both), dropped (lost: every
    sample rejected at the effort), errors (lost, with an engine error or empty completion among its
    samples), unpaired (kept at one effort, never generated at the other: in no count above),
    kept_only_at_effort (rejected at the reference, kept at the effort), and the kept samples of the
    questions kept at both (reference_samples, effort_samples)."""
    from jax_distill.traces.store import finished, read_errors

    effort, effort_ds = _kept_lengths(effort_dir)
    reference, reference_ds = _kept_lengths(reference_dir)
    generated = {"effort": finished(effort_dir)[0], "reference": finished(reference_dir)[0]}
    errored = {e.get("problem_id") for e in read_errors(effort_dir)}
    if not by_dataset:  # one group: its means over every question, not a mean of dataset means
        effort_ds, reference_ds = dict.fromkeys(effort_ds, "all"), dict.fromkeys(reference_ds, "all")
    rows = []
    for dataset in sorted(set(effort_ds.values()) | set(reference_ds.values())):
        ours = [q for q in reference if reference_ds[q] == dataset]
        inputs = [q for q in ours if q in generated["effort"]]
        both = [q for q in inputs if q in effort]
        lost = [q for q in inputs if q not in effort]
        at_effort = [q for q in effort if effort_ds[q] == dataset and q not in reference]
        rho = [_question_rho(effort[q], reference[q], 0) for q in both]
        tok = [t for q in both if (t := _question_rho(effort[q], reference[q], 1)) is not None]
        rho_all = rho + [1.0] * len(lost)
        tok_all = tok + ([1.0] * len(lost) if tok else [])
        rows.append({
            "dataset": dataset, "compressor": label, "inputs": len(inputs), "examples": len(both),
            "dropped": sum(q not in errored for q in lost), "errors": sum(q in errored for q in lost),
            "unpaired": len(ours) - len(inputs) + sum(q not in generated["reference"] for q in at_effort),
            "kept_only_at_effort": sum(q in generated["reference"] for q in at_effort),
            "reference_samples": sum(len(reference[q]) for q in both),
            "effort_samples": sum(len(effort[q]) for q in both),
            "mean_rho_chars": round(statistics.fmean(rho), 4) if rho else None,
            "mean_rho_chars_all": round(statistics.fmean(rho_all), 4) if rho_all else None,
            "mean_rho_tokens": round(statistics.fmean(tok), 4) if tok else None,
            "mean_rho_tokens_all": round(statistics.fmean(tok_all), 4) if tok_all else None,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of a list of flat dicts (their keys as columns), "(no rows)" for none."""
    return records.markdown_table(rows, list(rows[0])) if rows else "(no rows)"


def describe(records: Iterable[dict]) -> list[dict]:
    """Per (dataset, variant): records, mean trace chars, mean trace student tokens (when counted)."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["variant"])].append(r["meta"])
    rows = []
    for (dataset, variant), metas in sorted(groups.items()):
        toks = [m["student_tokens"] for m in metas if m.get("student_tokens") is not None]
        rows.append({"dataset": dataset, "variant": variant, "records": len(metas),
                     "mean_trace_chars": round(statistics.fmean(m["trace_chars"] for m in metas), 1),
                     "mean_student_tokens": round(statistics.fmean(toks), 1) if toks else None})
    return rows


def default_config():
    """The stats command's one field; configs/traces/stats.py starts here."""
    from ml_collections import ConfigDict

    return ConfigDict(dict(path="runs/traces/raw"))  # a stage output directory or one JSONL file


def validate(config) -> None:
    from jax_distill import checks
    from jax_distill.cli import check_declared

    check_declared(config, default_config(), "stats config")
    checks.exists(config, "path", what="trace directory or JSONL file")


def run(config) -> dict:
    from jax_distill.traces.store import read_records

    validate(config)
    records = list(read_records(config.path))
    summary = {"describe": describe(records), "compression": compression_table(records)}
    print(format_table(summary["describe"]))
    if summary["compression"]:
        print(format_table(summary["compression"]))
    return summary


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    run_stage(run, default_config)
