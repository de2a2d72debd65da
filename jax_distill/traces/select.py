"""Model-free compressors that choose or cut the teacher's own text instead of rewriting it: the first
baselines a rewrite must beat. The compress stage runs them (compressor.kind, same config, same output
format: variant "compressed", ids "{raw id}/compressed", meta.compressor = the kind or its name).

  shortest_correct  per question, of its verified samples in the raw folder (the K drawn, minus the
                    rejected ones), the shortest trace in characters (ties: the smaller record id). The
                    pairing with raw: raw training under keep=all_correct trains on EVERY verified sample,
                    so each of them gets a twin "{sample id}/compressed" carrying the question's shortest
                    trace (and its answer): the same training examples and ids as raw (matched sets pair
                    them one to one), only the trace replaced; rho_chars = chars(shortest) / chars(that
                    sample), rho_tokens likewise in student tokens (1 for the chosen sample's own twin).
                    meta: chosen (the shortest sample's id), chosen_sample_index (k of "/s{k}": which of
                    the K draws it was), drawn (K, the teacher's sampling.n), candidates (verified samples
                    of the question), rank_by_length (of this record's own sample among them, 1 = the
                    chosen). Inputs are raw records; every one ends compressed.
  post_think        per raw record, the visible text after the reasoning block (the record's answer
                    field: a think model's text after </think>, harmony's final channel) becomes the
                    trace, one statement per line (its lines; its sentences when it is one line); the
                    last statement stating the answer (and what follows it) stays the answer. Counted by reason
                    and handled by the stage's policy when the visible text has no reasoning beyond the
                    answer: answer_not_stated (no statement states the known answer), no_reasoning
                    (nothing before that statement), restates_answer (every statement before it mentions
                    the answer: "Tom has 7 apples now." before "The answer is 7."). A candidate is then
                    validated like any compressed trace (compress.failures). One attempt (the text is
                    deterministic): a failure is dropped, or under policy=keep_raw kept as its raw trace.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter, defaultdict

from ml_collections import ConfigDict

from jax_distill.problems import extract_answer
from jax_distill.traces import store
from jax_distill.traces.stats import StudentTokens, compression_table, format_table

KINDS = ("shortest_correct", "post_think")
POST_THINK_REASONS = ("answer_not_stated", "no_reasoning", "restates_answer")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _student_tokens(rec: dict, student: StudentTokens):
    n = rec["meta"].get("student_tokens")
    return student.count(rec["trace"]) if student and n is None else n


def _sample_index(record_id: str) -> int | None:
    m = re.search(r"/s(\d+)$", record_id)
    return int(m.group(1)) if m else None


def shortest_correct(samples: list[dict], name: str, student: StudentTokens) -> list[dict]:
    """The compressed records of one question from its verified raw samples (see the module docstring)."""
    ordered = sorted(samples, key=lambda r: (len(r["trace"]), r["id"]))
    chosen = ordered[0]
    chosen_tokens = _student_tokens(chosen, student)
    out = []
    for rank, source in enumerate(ordered, 1):
        source_tokens = _student_tokens(source, student)
        meta = {
            "stage": "compress", "time": time.time(), "source_id": source["id"], "compressor": name,
            "chosen": chosen["id"], "chosen_sample_index": _sample_index(chosen["id"]),
            "drawn": (chosen["meta"].get("sampling") or {}).get("n"), "candidates": len(samples),
            "rank_by_length": rank, "raw_chars": len(source["trace"]),
            "rho_chars": len(chosen["trace"]) / max(len(source["trace"]), 1),
            "student_tokens": chosen_tokens, "raw_student_tokens": source_tokens,
            "rho_tokens": chosen_tokens / source_tokens if chosen_tokens is not None and source_tokens else None,
            "attempts": 1, "teacher": {k: chosen["meta"].get(k) for k in ("engine", "model")},
        }
        out.append(store.make_record(id=f"{source['id']}/compressed", problem=chosen, answer=chosen["answer"],
                                     trace=chosen["trace"], variant="compressed", meta=meta))
    return sorted(out, key=lambda r: r["id"])


def statements(text: str) -> list[str]:
    """Lines of `text`; the sentences of its one line when it has only one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) == 1:
        return [s.strip() for s in _SENTENCE_END.split(lines[0]) if s.strip()]
    return lines


def post_think(raw: dict) -> tuple[str, str, str]:
    """(trace, answer, reason): the visible text as the trace, its last statement stating the answer (and
    what follows it) as the answer, and '' or the POST_THINK_REASONS entry saying why the visible text
    holds no reasoning beyond the answer."""
    from jax_distill.traces.compress import mentions

    parts = statements(raw["answer"])
    states = [i for i, s in enumerate(parts) if extract_answer(s, raw["answer_type"]) is not None
              or mentions(s, raw["gold"], raw["answer_type"])]
    if not states:
        return "", raw["answer"], "answer_not_stated"
    at = states[-1]
    trace, answer = "\n".join(parts), " ".join(parts[at:])
    if at == 0:
        return trace, answer, "no_reasoning"
    if all(mentions(s, raw["gold"], raw["answer_type"]) for s in parts[:at]):
        return trace, answer, "restates_answer"
    return trace, answer, ""


def post_think_chunk(raws: list[dict], name: str, config, student: StudentTokens):
    """Records, errors and counts of one chunk of raw records under post_think."""
    from jax_distill.traces.compress import _record, failures

    outcomes, errors = {}, []
    candidates = {}
    for i, raw in enumerate(raws):
        trace, answer, reason = post_think(raw)
        if reason:
            outcomes[i] = reason
        else:
            candidates[i] = (trace, answer)
    order = sorted(candidates)
    reasons = failures([candidates[i][0] for i in order], [raws[i] for i in order], config)
    for i, reason in zip(order, reasons):
        outcomes[i] = reason
    records, buckets, failed, failed_by_dataset = [], Counter(), Counter(), Counter()
    for i, raw in enumerate(raws):
        reason = outcomes[i]
        if not reason:
            trace, answer = candidates[i]
            rec = _record(raw, trace, _Named(name), student, 1, "")
            rec = store.make_record(id=rec["id"], problem=raw, answer=answer, trace=trace, variant="compressed",
                                    meta={**rec["meta"], "visible_chars": len(raw["answer"])})
            records.append(rec)
            buckets["compressed"] += 1
            continue
        failed[reason] += 1
        failed_by_dataset[raw["dataset"]] += 1
        errors.append({"id": raw["id"], "stage": "compress", "reason": reason, "detail": raw["answer"][:300]})
        if config.policy == "keep_raw":
            records.append(_record(raw, raw["trace"], _Named(name), student, 1, reason))
            buckets["fallback_raw"] += 1
        else:
            buckets["dropped"] += 1
    counts = {"inputs": len(raws), "compressed": buckets["compressed"], "fallback_raw": buckets["fallback_raw"],
              "dropped": buckets["dropped"], "errors": {}, "failures": dict(failed),
              "failed_by_dataset": dict(failed_by_dataset)}  # rho over all inputs counts them as 1
    return records, errors, counts


class _Named:
    """What compress._record reads of a compressor: its name."""

    def __init__(self, name: str):
        self.name = name


def shortest_chunk(groups: list[list[tuple]], name: str, student: StudentTokens):
    """Records, errors and counts of one chunk of questions (each: its raw records' locations)."""
    records, counts = [], Counter()
    for locations in groups:
        samples = [store.read_at(*loc) for loc in locations]
        records += shortest_correct(samples, name, student)
        counts["inputs"] += len(samples)
        counts["compressed"] += len(samples)
        counts["questions"] += 1
        counts["single_candidate"] += len(samples) == 1
    return records, [], {"inputs": 0, "compressed": 0, "errors": {}, **counts}


def run(config: ConfigDict) -> dict:
    """The compress stage for a compressor of KINDS (config validated by compress.run); resumable."""
    kind, name = config.compressor.kind, config.compressor.name or config.compressor.kind
    student = StudentTokens(config.student_tokenizer)
    bad = []
    items = store.index_records(config.in_dir, variant="raw", skip=None if config.strict else bad.append)
    if kind == "shortest_correct":
        by_question = defaultdict(list)
        for rid, loc in items.items():
            problem = store.read_at(*loc)["problem_id"]
            by_question[problem].append(loc)
        work = {f"question:{p}": locs for p, locs in by_question.items()}
        process = lambda chunk: shortest_chunk(chunk, name, student)  # noqa: E731
        balance = ("inputs", ("compressed", "errors"))
    else:
        work = items
        process = lambda chunk: post_think_chunk([store.read_at(*loc) for loc in chunk], name, config, student)  # noqa: E731
        balance = ("inputs", ("compressed", "fallback_raw", "dropped", "errors"))
    summary = store.run_chunks(
        "compress", config.out_dir, config.shard, config.chunk_size, {**work, **store.skipped_items(bad)}, process,
        unit="questions" if kind == "shortest_correct" else "traces", balance=balance,
        provenance=lambda: {"compressor": name},
        summarize=lambda total: {"in_dir": config.in_dir, "policy": config.policy, "table": compression_table(
            store.read_records(config.out_dir), total.get("failed_by_dataset", {}))},
    )
    store.atomic_write(os.path.join(config.out_dir, "summary.md"), format_table(summary["table"]) + "\n")
    print("compress: " + json.dumps(summary["total"]) + "\n" + format_table(summary["table"]), flush=True)
    return summary
