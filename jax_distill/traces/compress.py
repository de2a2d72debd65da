"""Stage 2: rewrite each raw trace into a shorter one that keeps the essential steps and the answer.

`python -m jax_distill.traces.compress --config configs/traces/compress.py` or `run(config)`.
Compressors: an Engine (an instruction model through vLLM / a server / JAX) given the configurable
prompt template (the paper's gist, temperature 0.3), or the deterministic extractive baseline below.

Validation of a compressed trace, in order (the first failing check is the reason):
  empty            nothing left after removing think blocks
  not_shorter      chars(compressed) >= chars(raw)
  answer_mismatch  it states a final answer that differs from the known one
  answer_missing   it never mentions the known answer (only with require_answer)
  unverified       the answer check timed out
Policy on failure: keep_raw (emit the raw trace as the "compressed" record, meta.fallback="raw"),
drop (emit nothing), retry (ask again with a new seed up to `retries` times, then drop). Every input
ends in one bucket: inputs = compressed + fallback_raw + dropped + errors (engine_error, empty_trace).
rho = chars(compressed) / chars(raw) per example, and the same ratio in student tokens.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections import Counter

from jax_distill.engines.base import SamplingParams
from jax_distill.problems import check_answers, extract_answer
from jax_distill.traces import store
from jax_distill.traces.stats import Progress, StudentTokens, compression_table, format_table, merge_counts

POLICIES = ("keep_raw", "drop", "retry")

# The paper's gist: a shorter reasoning keeping the essential logical steps, key insights and the answer.
DEFAULT_TEMPLATE = (
    "Below are a question, a step-by-step reasoning trace that solves it, and the final answer.\n"
    "Rewrite the reasoning into a much shorter version that keeps only the essential logical steps, the key "
    "insights and the calculations needed to reach the answer, and that ends with the final answer. Drop "
    "repetitions, hesitations, detours and re-checks. Reply with the shortened reasoning only.\n\n"
    "Question:\n{question}\n\nReasoning:\n{trace}\n\nFinal answer: {answer}"
)

_EQUATION = re.compile(r"(-?\d+(?:\.\d+)?(?:\s*[-+*/×x]\s*-?\d+(?:\.\d+)?)+)\s*=\s*(-?\d+(?:\.\d+)?)")


def extractive(trace: str) -> str:
    """Keep the computations (equations "a op b = c", a later equation with the same left side replacing
    an earlier one, which drops corrected detours) and the concluding line. Deterministic, model-free."""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    equations: dict[str, tuple[int, str]] = {}
    order = 0
    for line in lines:
        for lhs, rhs in _EQUATION.findall(line):
            key = re.sub(r"\s+", "", lhs)
            shown = re.sub(r"\s+", " ", lhs).strip()
            equations[key] = (equations.get(key, (order, ""))[0], f"{shown} = {rhs}")
            order += 1
    kept = [eq for _, eq in sorted(equations.values())]
    conclusion = lines[-1]
    if not kept:  # no arithmetic: the first and the last statement
        return conclusion if len(lines) == 1 else lines[0] + "\n" + conclusion
    return "\n".join(kept + [conclusion])


@dataclasses.dataclass
class Outcome:
    record: dict | None
    bucket: str          # compressed | fallback_raw | dropped | errors
    reason: str = ""
    attempts: int = 0


def mentions(text: str, gold: str, answer_type: str) -> bool:
    if answer_type == "number":
        return re.search(rf"(?<![\d.]){re.escape(gold)}(?![\d]|\.\d)", text.replace(",", "")) is not None
    if answer_type == "choice":
        return re.search(rf"(?:\(|\b){re.escape(gold)}(?:\)|\b)", text) is not None
    return re.sub(r"\s+", "", gold) in re.sub(r"\s+", "", text)


def failures(candidates: list[str], raws: list[dict], config) -> list[str]:
    """Reason per candidate ('' = valid)."""
    reasons = [""] * len(candidates)
    to_check = []
    for i, (text, raw) in enumerate(zip(candidates, raws)):
        if not text.strip():
            reasons[i] = "empty"
        elif len(text) >= len(raw["trace"]):
            reasons[i] = "not_shorter"
        else:
            to_check.append(i)
    extracted = {i: extract_answer(candidates[i], raws[i]["answer_type"]) for i in to_check}
    stated = [i for i in to_check if extracted[i] is not None]
    verdicts = check_answers([(extracted[i], raws[i]["gold"], raws[i]["answer_type"]) for i in stated],
                             timeout_s=config.verify_timeout_s)
    for i, ok in zip(stated, verdicts):
        reasons[i] = "" if ok else ("unverified" if ok is None else "answer_mismatch")
    for i in to_check:
        if i not in extracted or extracted[i] is None:
            if config.require_answer and not mentions(candidates[i], raws[i]["gold"], raws[i]["answer_type"]):
                reasons[i] = "answer_missing"
    return reasons


class Compressor:
    """Turns raw records into candidate compressed texts (one call per attempt)."""

    def __init__(self, config, engine=None):
        self.cfg = config.compressor
        if self.cfg.kind not in ("extractive", "engine"):
            raise ValueError(f"compressor.kind must be extractive|engine, got {self.cfg.kind!r}")
        self.engine = engine
        if self.cfg.kind == "engine" and engine is None:
            from jax_distill.engines import make_engine

            self.engine = make_engine(self.cfg.engine)
        self.name = self.cfg.name or (self.cfg.kind if self.cfg.kind == "extractive" else
                                      os.path.basename(str(getattr(self.engine, "model", "engine")).rstrip("/")))

    def messages(self, raw: dict) -> list[dict]:
        user = (self.cfg.template.replace("{question}", raw["question"]).replace("{trace}", raw["trace"])
                .replace("{answer}", raw["answer"]))
        return ([{"role": "system", "content": self.cfg.system}] if self.cfg.system else []) + \
            [{"role": "user", "content": user}]

    def __call__(self, raws: list[dict], attempt: int) -> list[str]:
        if self.cfg.kind == "extractive":
            return [extractive(r["trace"]) for r in raws]
        params = SamplingParams(n=1, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                max_tokens=self.cfg.max_tokens, seed=self.cfg.seed + 1000003 * attempt)
        outs = self.engine.generate([self.messages(r) for r in raws], params)
        texts = []
        for o in outs:
            c = o[0]
            # the engine split off any reasoning (engine.reasoning); what remains is the compressed trace
            texts.append(c.answer_text)
        return texts


def process_chunk(raws: list[dict], compressor: Compressor, config, student: StudentTokens):
    outcomes: dict[int, Outcome] = {}
    errors = []
    active = []
    for i, r in enumerate(raws):
        if not r["trace"].strip():
            outcomes[i] = Outcome(None, "errors", "empty_trace")
            errors.append({"id": r["id"], "stage": "compress", "reason": "empty_trace", "detail": ""})
        else:
            active.append(i)
    last_reason: dict[int, str] = {}
    attempts = 1 + (config.retries if config.policy == "retry" else 0)
    for attempt in range(attempts):
        if not active:
            break
        try:
            candidates = compressor([raws[i] for i in active], attempt)
        except Exception as e:  # noqa: BLE001  (recorded, the run goes on)
            for i in active:
                outcomes[i] = Outcome(None, "errors", "engine_error", attempt + 1)
                errors.append({"id": raws[i]["id"], "stage": "compress", "reason": "engine_error",
                               "detail": f"{type(e).__name__}: {e}"[:2000]})
            active = []
            break
        reasons = failures(candidates, [raws[i] for i in active], config)
        still = []
        for i, text, reason in zip(active, candidates, reasons):
            if reason:
                last_reason[i] = reason
                errors.append({"id": raws[i]["id"], "stage": "compress", "reason": reason, "attempt": attempt,
                               "detail": text[:300]})
                still.append(i)
            else:
                outcomes[i] = Outcome(_record(raws[i], text.strip(), compressor, student, attempt + 1, ""),
                                      "compressed", "", attempt + 1)
        active = still
    for i in active:  # failed every attempt
        if config.policy == "keep_raw":
            rec = _record(raws[i], raws[i]["trace"], compressor, student, attempts, last_reason[i])
            outcomes[i] = Outcome(rec, "fallback_raw", last_reason[i], attempts)
        else:
            outcomes[i] = Outcome(None, "dropped", last_reason[i], attempts)
    buckets = Counter(o.bucket for o in outcomes.values())
    counts = {
        "inputs": len(raws),
        "compressed": buckets["compressed"],
        "fallback_raw": buckets["fallback_raw"],
        "dropped": buckets["dropped"],
        "errors": dict(Counter(o.reason for o in outcomes.values() if o.bucket == "errors")),
        "failures": dict(Counter(o.reason for o in outcomes.values() if o.bucket in ("fallback_raw", "dropped"))),
        "failed_attempts": dict(Counter(e["reason"] for e in errors if "attempt" in e)),
    }
    records = [o.record for _, o in sorted(outcomes.items()) if o.record is not None]
    return records, errors, counts


def _record(raw: dict, text: str, compressor: Compressor, student: StudentTokens, attempts: int, failure: str) -> dict:
    raw_tokens = raw["meta"].get("student_tokens")
    if raw_tokens is None and student:
        raw_tokens = student.count(raw["trace"])
    tokens = student.count(text)
    meta = {
        "stage": "compress", "time": time.time(), "source_id": raw["id"], "compressor": compressor.name,
        "raw_chars": len(raw["trace"]), "rho_chars": len(text) / max(len(raw["trace"]), 1),
        "student_tokens": tokens, "raw_student_tokens": raw_tokens,
        "rho_tokens": tokens / raw_tokens if tokens is not None and raw_tokens else None,
        "attempts": attempts, "teacher": {k: raw["meta"].get(k) for k in ("engine", "model")},
    }
    if failure:
        meta.update(fallback="raw", failure=failure)
    return store.make_record(id=f"{raw['id']}/compressed", problem=raw, answer=raw["answer"], trace=text,
                             variant="compressed", meta=meta)


def run(config, engine=None) -> dict:
    """Compress every raw record of config.in_dir into config.out_dir; resumable. `engine` overrides
    config.compressor.engine (tests, or stages sharing one loaded model)."""
    if config.policy not in POLICIES:
        raise ValueError(f"compress.policy must be one of {POLICIES}, got {config.policy!r}")
    shard = store.parse_shard(config.shard)
    os.makedirs(config.out_dir, exist_ok=True)
    prefix = store.shard_prefix("compress", shard)
    store.clean_partial(config.out_dir, prefix)
    done_ids, _ = store.finished(config.out_dir)
    # streamed: one pass over ids to plan, then raw traces are read chunk by chunk, never all at once
    shard_ids = [i for i in store.index_records(config.in_dir, variant="raw") if store.in_shard(i, shard)]
    todo_ids = {i for i in shard_ids if i not in done_ids}
    todo = (r for r in store.read_records(config.in_dir, variant="raw") if r["id"] in todo_ids)
    student = StudentTokens(config.student_tokenizer)
    compressor = None
    part = store.next_part(config.out_dir, prefix)
    progress = Progress("compress", len(todo_ids), "traces")
    started, run_infos = time.time(), []
    for chunk in store.batches(todo, config.chunk_size):
        compressor = compressor or Compressor(config, engine)
        records, errors, counts = process_chunk(chunk, compressor, config, student)
        info = {"stage": "compress", "ids": [r["id"] for r in chunk], "counts": counts, "time": time.time(),
                "compressor": compressor.name}
        store.write_chunk(config.out_dir, prefix, part, records, errors, info)
        part += 1
        run_infos.append(info)
        progress.update(len(chunk))
    _, infos = store.finished(config.out_dir)
    total = merge_counts(infos)
    table = compression_table(store.read_records(config.out_dir))
    summary = {"stage": "compress", "in_dir": config.in_dir, "out_dir": config.out_dir, "shard": config.shard,
               "inputs_in_shard": len(shard_ids), "skipped_finished": len(shard_ids) - len(todo_ids),
               "this_run": merge_counts(run_infos), "total": total, "table": table,
               "seconds": round(time.time() - started, 2)}
    if total:
        summary["balanced"] = total["inputs"] == (total["compressed"] + total["fallback_raw"] + total["dropped"]
                                                  + sum(total.get("errors", {}).values()))
    store.write_summary(config.out_dir, summary)
    store.atomic_write(os.path.join(config.out_dir, "summary.md"), format_table(table) + "\n")
    print("compress: " + json.dumps(total) + "\n" + format_table(table), flush=True)
    return summary


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    run_stage(run)
