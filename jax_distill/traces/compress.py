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
Policy on failure, declared in `policy`: retry (the default: ask again with a new seed up to `retries`
times, then drop; the experiment's matched sets then drop that trace from every variant), drop (emit
nothing), keep_raw (only when asked for: emit the raw trace as the "compressed" record,
meta.fallback="raw", so the "compressed" set holds raw traces; the tables count them). Every input
ends in one bucket: inputs = compressed + fallback_raw + dropped + errors (engine_error, empty_trace)
+ skipped (a bad input row: a line that does not parse, a missing or mistyped field; counted by reason,
its file:line (field) in the errors file and the first few in the summary; `strict` raises instead).
rho = chars(compressed) / chars(raw) per example, and the same ratio in student tokens, averaged two ways
(stats.compression_table): over successes, and over all inputs with a trace, where every failure
(fallback, dropped or engine error) counts as 1 (the raw trace kept whole), the fallback count beside.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections import Counter

from ml_collections import ConfigDict

from jax_distill import checks, engines
from jax_distill.engines.base import SamplingParams
from jax_distill.problems import check_answers, extract_answer
from jax_distill.sampling_params import sampling_config, validate_sampling
from jax_distill.traces import dispatch, store
from jax_distill.traces.stats import StudentTokens, compression_table, format_table

POLICIES = ("keep_raw", "drop", "retry")
KINDS = ("extractive", "engine", "shortest_correct", "post_think")  # the last two: traces/select.py
ATTEMPT_SEED_STRIDE = 1000003  # retry attempt a samples with seed + stride * a

# The paper's gist: a shorter reasoning keeping the essential logical steps, key insights and the answer.
DEFAULT_TEMPLATE = (
    "Below are a question, a step-by-step reasoning trace that solves it, and the final answer.\n"
    "Rewrite the reasoning into a much shorter version that keeps only the essential logical steps, the key "
    "insights and the calculations needed to reach the answer, and that ends with the final answer. Drop "
    "repetitions, hesitations, detours and re-checks. Reply with the shortened reasoning only.\n\n"
    "Question:\n{question}\n\nReasoning:\n{trace}\n\nFinal answer: {answer}"
)



def default_config() -> ConfigDict:
    """Every field of the compress stage, each commented once; configs/traces/compress.py starts here."""
    c = ConfigDict()
    c.in_dir = "runs/traces/raw"  # generate stage output (raw records)
    c.out_dir = "runs/traces/compressed-extractive"
    c.compressor = ConfigDict(dict(
        kind="extractive",  # extractive (model-free baseline) | engine | shortest_correct | post_think (select.py)
        name="",  # label in records and tables ("" = kind or model folder name)
        engine=engines.default_config(),  # used when kind=engine
        template=DEFAULT_TEMPLATE,  # user turn; {question}, {trace}, {answer} are filled in
        system="",  # optional system turn
        # the paper's compression temperature; one candidate per attempt (n=1); max_tokens budgets the
        # compressed trace; attempt a of policy=retry uses seed + ATTEMPT_SEED_STRIDE * a
        sampling=sampling_config(n=1, temperature=0.3, top_p=1.0, max_tokens=4096, seed=0),
    ))
    c.compressor.engine.reasoning = "none"  # instruction models answer in plain text
    c.policy = "retry"  # on validation failure: retry (then drop) | drop | keep_raw (raw text in the compressed set)
    c.retries = 2  # extra attempts under policy=retry (then drop)
    c.require_answer = True  # a compressed trace must mention the known answer
    c.verify_timeout_s = 5.0  # per answer check (math-verify)
    c.chunk_size = 64  # records per atomically written chunk
    c.shard = "0/1"  # "i/n": this host's share of the records (by id hash)
    # HF tokenizer folder for rho in student tokens (meta.student_tokenizer names it); one tokenizer only, so
    # these counts are no length budget for other students (truncate recounts in each student's own)
    c.student_tokenizer = ""
    c.strict = False  # a bad input row raises (naming file:line and field) instead of a counted skip
    c.dispatch = dispatch.default_config()  # where chunks run: here, or Ray actors each holding one engine
    return c


def validate(config: ConfigDict) -> None:
    """Every field before any work (checks.ConfigError naming config.<field>); the engine sub-config only
    when the compressor is an engine."""
    from jax_distill.cli import check_declared

    check_declared(config, default_config(), "compress config")
    checks.exists(config, "in_dir", what="raw trace directory")
    store.validate_chunking(config)
    checks.one_of(config, "compressor.kind", KINDS)
    for name in ("name", "template", "system"):
        checks.is_type(config, f"compressor.{name}", str)
    checks.need("{trace}" in config.compressor.template, "compressor.template", "must contain {trace}")
    validate_sampling(config, "compressor.sampling")
    checks.need(config.compressor.sampling.n == 1, "compressor.sampling.n", "must be 1 (one candidate per attempt)")
    if config.compressor.kind == "engine":
        engines.validate(config, "compressor.engine")
    checks.one_of(config, "policy", POLICIES)
    checks.is_type(config, "retries", int)
    checks.at_least(config, "retries", 0)
    checks.is_type(config, "require_answer", bool)
    checks.is_type(config, "strict", bool)
    checks.positive(config, "verify_timeout_s")
    dispatch.validate(config, "dispatch")


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

    def __init__(self, cfg: ConfigDict, engine=None):
        """`cfg`: the `compressor` sub-config; `engine` overrides cfg.engine (tests, a shared model)."""
        self.cfg = cfg
        self.engine = engine
        if cfg.kind == "engine" and engine is None:
            self.engine = engines.make_engine(cfg.engine)
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
        params = SamplingParams.from_config(self.cfg.sampling)
        if params.seed is not None:
            params = dataclasses.replace(params, seed=params.seed + ATTEMPT_SEED_STRIDE * attempt)
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
        # per dataset: inputs that had a trace but no compressed one (rho over all inputs counts them as 1)
        "failed_by_dataset": dict(Counter(raws[i]["dataset"] for i, o in outcomes.items()
                                          if o.bucket != "compressed" and o.reason != "empty_trace")),
    }
    records = [o.record for _, o in sorted(outcomes.items()) if o.record is not None]
    return records, errors, counts


def _record(raw: dict, text: str, compressor: Compressor, student: StudentTokens, attempts: int, failure: str) -> dict:
    # both counts in this stage's tokenizer (named in the meta): the raw record's own count may come from
    # another tokenizer (generate's student_tokenizer), and a ratio of two tokenizers means nothing
    raw_tokens = student.count(raw["trace"])
    tokens = student.count(text)
    meta = {
        "stage": "compress", "time": time.time(), "source_id": raw["id"], "compressor": compressor.name,
        "raw_chars": len(raw["trace"]), "rho_chars": len(text) / max(len(raw["trace"]), 1),
        "student_tokens": tokens, "raw_student_tokens": raw_tokens, "student_tokenizer": student.path,
        "rho_tokens": tokens / raw_tokens if tokens is not None and raw_tokens else None,
        "attempts": attempts, "teacher": {k: raw["meta"].get(k) for k in ("engine", "model")},
    }
    if failure:
        meta.update(fallback="raw", failure=failure)
    return store.make_record(id=f"{raw['id']}/compressed", problem=raw, answer=raw["answer"], trace=text,
                             variant="compressed", meta=meta)


def run(config: ConfigDict, engine=None) -> dict:
    """Compress this shard's raw records; resumable. `engine` overrides config.compressor.engine."""
    validate(config)
    if config.compressor.kind in ("shortest_correct", "post_think"):  # choose or cut the teacher's own text
        from jax_distill.traces import select

        return select.run(config)
    student = StudentTokens(config.student_tokenizer)
    compressor = dispatch.Lazy(lambda: Compressor(config.compressor, engine))  # a model loads only where chunks run
    bad = []
    # locations: each chunk reads only its own records; bad rows are items too (counted, never processed)
    items = store.index_records(config.in_dir, variant="raw", skip=None if config.strict else bad.append)
    summary = store.run_chunks(
        "compress", config.out_dir, config.shard, config.chunk_size, {**items, **store.skipped_items(bad)},
        lambda locations: process_chunk([store.read_at(*loc) for loc in locations], compressor(), config, student),
        unit="traces", balance=("inputs", ("compressed", "fallback_raw", "dropped", "errors")),
        provenance=lambda: {"compressor": compressor().name},
        summarize=lambda total: {"in_dir": config.in_dir, "policy": config.policy, "table": compression_table(
            store.read_records(config.out_dir), total.get("failed_by_dataset", {}))},
        dispatch=dispatch.make(config.dispatch, config.compressor.engine if config.compressor.kind == "engine" else None),
    )
    store.atomic_write(os.path.join(config.out_dir, "summary.md"), format_table(summary["table"]) + "\n")
    print("compress: " + json.dumps(summary["total"]) + "\n" + format_table(summary["table"]), flush=True)
    return summary


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    run_stage(run, default_config)
