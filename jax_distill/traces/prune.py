"""Student-scored pruning: the trace a student would find least informative, removed until it fits a budget.

`python -m jax_distill.traces.prune --config configs/traces/prune.py` or `run(config)`.
The student scores every raw trace with its own JAX forward pass (jax_distill/scoring.py, the models'
code), in its tokenizer and chat format (config.chat, the training `data.*` template fields): the
conversation is rendered as training renders it, the trace tokenized on its own (as budgets count it).
  prune_tokens  (mode=tokens, TokenSkip-style) each trace token's surprisal -log p(token | question,
                preceding trace); the lowest-surprisal tokens go first, until the re-tokenized text fits.
  prune_steps   (mode=steps, SPIRIT-style) steps are the trace's lines (its sentences when it is one
                line); a step's score is how much removing it alone raises the surprisal of the answer
                (-log p(answer | question, trace without the step) + log p(answer | question, trace)),
                computed once per step; the lowest-scoring steps go first, until the trace fits.
The answer is always kept: it is the record's own field, and the trace's last statement of the known
answer (its tokens, or the step holding it) is never removed. Budgets, in the student's tokens:
  ratio:R            round(R x tokens(raw trace)) per example
  match:<compressor> per example the length of the trace's compressed twin in match_dir (that compress
                     stage's output; counted here in this student's tokenizer), so rewrite and pruning
                     train at the same length. Items are the twins, as for truncated records.
Fitting: the fewest tokens (steps) removed in score order such that the text fits: a pruned trace is
within the budget and one more kept token (step) would exceed it. A pruned trace is then validated like
any compressed trace (compress.failures: shorter than the raw trace, states no other answer, mentions the
known one when require_answer); every input ends as pruned, within_budget (the raw trace already fits;
kept whole, still written), dropped (failed validation, or the protected answer alone exceeds the budget:
budget_below_answer; by reason) or errors (missing_raw); bad input rows are skipped and counted.
Records: variant "pruned", id "{raw id}/pruned" (store.py's id rule, so matched sets pair it with its raw
trace); meta.mode says tokens or steps.
"""

from __future__ import annotations

import functools
import json
import re
import statistics
import time
from collections import Counter

import numpy as np
from ml_collections import ConfigDict

from jax_distill import checks
from jax_distill.traces import store
from jax_distill.traces.stats import StudentTokens, describe, format_table

MODES = ("tokens", "steps")
TRACE_MARK, ANSWER_MARK = "\u2063TRACE\u2063", "\u2063ANSWER\u2063"  # placeholders located in the rendered chat


def default_config() -> ConfigDict:
    """Every field of the prune stage, each commented once; configs/traces/prune.py starts here."""
    from jax_distill.engines.jax_engine import chat_config

    c = ConfigDict()
    c.raw_dir = "runs/traces/raw"  # generate stage output
    c.match_dir = "runs/traces/compressed-extractive"  # compress stage output of the budget=match compressor
    c.out_dir = "runs/traces/prune-steps-extractive"
    c.mode = "steps"  # tokens (prune_tokens) | steps (prune_steps)
    c.budget = "match:extractive"  # ratio:R | match:<compressor> (per example, the twin in match_dir)
    c.scorer = ConfigDict(dict(
        model="",  # the student's HF folder (local or gs://) whose forward pass scores the traces
        dtype="auto",  # float32 | bfloat16 | float16 | auto (bfloat16 on accelerators, float32 on CPU)
        compute_dtype="",  # activations; "" = dtype
        mesh=dict(data=-1, fsdp=1, tensor=1),  # device mesh; -1 = all remaining devices
        batch_size=16,  # sequences per forward pass
        max_length=2048,  # tokens per sequence (longer ones lose question tokens from the left)
    ))
    c.chat = chat_config()  # the chat format the student trains with (the training data.* fields)
    c.require_answer = True  # a pruned trace must still mention the known answer
    c.verify_timeout_s = 5.0  # per answer check (math-verify)
    c.chunk_size = 64  # records per atomically written chunk
    c.shard = "0/1"  # "i/n": this host's share (by raw record id)
    c.student_tokenizer = ""  # tokenizer folder the budgets count in ("" = scorer.model's)
    c.strict = False  # a bad input row raises (naming file:line and field) instead of a counted skip
    return c


def parse_budget(spec: str, field: str = "budget") -> tuple[str, object]:
    """"ratio:0.5" -> ("ratio", 0.5); "match:llama" -> ("match", "llama"); ConfigError naming `field`."""
    kind, _, value = str(spec).partition(":")
    if kind == "ratio":
        try:
            ratio = float(value)
        except ValueError:
            ratio = -1.0
        checks.need(0.0 < ratio <= 1.0, field, f"ratio:R needs 0 < R <= 1; got {spec!r}")
        return kind, ratio
    checks.need(kind == "match" and bool(value), field, f"must be ratio:R or match:<compressor>; got {spec!r}")
    return kind, value


def validate(config: ConfigDict) -> None:
    """Every field before any work (checks.ConfigError naming config.<field>)."""
    from jax_distill.cli import check_declared
    from jax_distill.engines.jax_engine import validate_placement

    check_declared(config, default_config(), "prune config")
    checks.exists(config, "raw_dir", what="raw trace directory")
    store.validate_chunking(config)
    checks.one_of(config, "mode", MODES)
    if parse_budget(config.budget)[0] == "match":
        checks.exists(config, "match_dir", what="compressed trace directory (budget=match)")
    checks.need(bool(config.scorer.model), "scorer.model", "must name the student's HF folder (it scores the traces)")
    validate_placement(config, "scorer")
    for name in ("batch_size", "max_length"):
        checks.is_type(config, f"scorer.{name}", int)
        checks.at_least(config, f"scorer.{name}", 1)
    checks.is_type(config, "require_answer", bool)
    checks.is_type(config, "strict", bool)
    checks.positive(config, "verify_timeout_s")


# ----------------------------------------------------------------------------- scoring


class Scorer:
    """The student's forward pass over rendered conversations: per-token surprisal of a trace, and the
    surprisal of the answer after a (shortened) trace."""

    def __init__(self, config: ConfigDict):
        from jax_distill.data.chat import ChatFormat
        from jax_distill.engines.jax_engine import load_model

        s = config.scorer
        self.model, self.tokenizer, self.rules = load_model(s.model, "", s.dtype, s.compute_dtype, s.mesh)
        self.format = ChatFormat(self.tokenizer, config.chat)
        self.batch_size, self.max_length, self.name = s.batch_size, s.max_length, str(s.model)
        self.pieces = functools.lru_cache(maxsize=1024)(self._pieces)  # a question is rendered once, not per step

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _pieces(self, question: str) -> tuple[list[int], list[int]]:
        """(ids before the trace, ids between the trace and the answer) of the training conversation."""
        full = self.format.render(self.format.messages(question, TRACE_MARK, ANSWER_MARK), add_generation_prompt=False)
        before, _, rest = full.partition(TRACE_MARK)
        between = rest.partition(ANSWER_MARK)[0]
        return self.ids(before), self.ids(between)

    def logprobs(self, pairs):
        from jax_distill.scoring import token_logprobs

        return [lp for lp, _ in token_logprobs(self.model, pairs, self.batch_size, self.max_length, self.rules)]

    def token_surprisal(self, records: list[dict]) -> list[np.ndarray]:
        """-log p of each trace token (the trace tokenized on its own) given the question and the trace before it."""
        pairs = [(self.pieces(r["question"])[0], self.ids(r["trace"])) for r in records]
        return [-lp for lp in self.logprobs(pairs)]

    def answer_surprisal(self, jobs: list[tuple[dict, str]]) -> list[float]:
        """-log p(answer | question, trace) for each (record, trace to put in its place)."""
        pairs = []
        for rec, trace in jobs:
            before, between = self.pieces(rec["question"])
            pairs.append((before + self.ids(trace) + between, self.ids(rec["answer"])))
        return [float(-lp.sum()) for lp in self.logprobs(pairs)]


# ----------------------------------------------------------------------------- pruning


def answer_span(trace: str, gold: str, answer_type: str) -> tuple[int, int] | None:
    """Character span of the trace's last mention of the known answer (as compress.mentions finds it)."""
    if answer_type == "number":
        pattern = rf"(?<![\d.]){re.escape(gold)}(?![\d]|\.\d)"
    elif answer_type == "choice":
        pattern = rf"(?:\(|\b){re.escape(gold)}(?:\)|\b)"
    else:
        pattern = re.escape(gold)
    found = list(re.finditer(pattern, trace))
    return (found[-1].start(), found[-1].end()) if found else None


def fit_removal(n: int, length, budget: int, start: int = 0) -> int | None:
    """The fewest r of n candidates (in removal order) to remove so that length(r) <= budget, searched
    from `start` (length need not be monotone: a re-tokenized text can merge across a cut); None when
    even removing all n does not fit."""
    r = min(max(start, 0), n)
    while length(r) > budget:
        if r == n:
            return None
        r += 1
    while r > 0 and length(r - 1) <= budget:
        r -= 1
    return r


def prune_tokens(rec: dict, surprisal: np.ndarray, budget: int, scorer: Scorer) -> tuple[str | None, dict]:
    """(pruned trace or None when the protected answer alone exceeds the budget, meta)."""
    enc = scorer.tokenizer(rec["trace"], add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    span = answer_span(rec["trace"], rec["gold"], rec["answer_type"])
    protected = {i for i, (a, b) in enumerate(offsets) if span and a < span[1] and b > span[0]}
    order = sorted((i for i in range(len(ids)) if i not in protected), key=lambda i: (surprisal[i], i))

    @functools.lru_cache(maxsize=None)
    def text(r: int) -> str:
        gone = set(order[:r])
        kept = [t for i, t in enumerate(ids) if i not in gone]
        return scorer.tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False).strip()

    r = fit_removal(len(order), lambda r: len(scorer.ids(text(r))), budget, len(ids) - budget)
    meta = {"protected_tokens": len(protected)}
    return (None, meta) if r is None else (text(r), {**meta, "removed_tokens": r})


def steps_of(trace: str) -> tuple[list[str], str]:
    """(steps, joiner): the trace's lines, or its sentences when it is one line."""
    from jax_distill.traces.select import statements

    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    return (statements(trace), " ") if len(lines) == 1 else (lines, "\n")


def prune_steps(rec: dict, steps: list[str], joiner: str, scores: list[float], budget: int,
                scorer: Scorer) -> tuple[str | None, dict]:
    """(pruned trace or None when the protected step alone exceeds the budget, meta)."""
    from jax_distill.traces.compress import mentions

    holding = [i for i, s in enumerate(steps) if mentions(s, rec["gold"], rec["answer_type"])]
    protected = {holding[-1]} if holding else set()
    order = sorted((i for i in range(len(steps)) if i not in protected), key=lambda i: (scores[i], i))

    def text(r: int) -> str:
        gone = set(order[:r])
        return joiner.join(s for i, s in enumerate(steps) if i not in gone)

    r = fit_removal(len(order), lambda r: len(scorer.ids(text(r))), budget)
    meta = {"steps": len(steps), "protected_step": min(protected, default=None), "step_scores": [round(s, 4) for s in scores]}
    return (None, meta) if r is None else (text(r), {**meta, "removed_steps": order[:r]})


def process_chunk(items: list[tuple[tuple | None, tuple | None]], scorer: Scorer, student: StudentTokens, config):
    """[(twin's location or None, raw location or None)] -> (records, errors, counts)."""
    from jax_distill.traces.compress import failures

    kind, value = parse_budget(config.budget)
    name = "pruned"  # ids "{raw id}/pruned" (store.py's rule; the mode is in meta and the folder name)
    records, errors, buckets, failed = [], [], Counter(), Counter()
    jobs = []  # (raw, budget, twin)
    for twin_loc, raw_loc in items:
        twin = store.read_at(*twin_loc) if twin_loc else None
        if raw_loc is None:
            raw_id = twin["meta"]["source_id"]
            buckets["missing_raw"] += 1
            errors.append({"id": f"{raw_id}/{name}", "stage": "prune", "reason": "missing_raw",
                           "detail": f"no raw record {raw_id!r} in {config.raw_dir}"})
            continue
        raw = store.read_at(*raw_loc)
        raw_tokens = student.count(raw["trace"])
        budget = student.count(twin["trace"]) if kind == "match" else round(value * raw_tokens)
        jobs.append((raw, budget, twin, raw_tokens))
    to_prune = [j for j in jobs if j[3] > j[1]]
    results = _prune(to_prune, scorer, config.mode)
    texts = {id(j[0]): results[k] for k, j in enumerate(to_prune)}
    candidates = [j for j in to_prune if texts[id(j[0])][0] is not None]
    reasons = dict(zip((id(j[0]) for j in candidates),
                       failures([texts[id(j[0])][0] for j in candidates], [j[0] for j in candidates], config)))
    for raw, budget, twin, raw_tokens in jobs:
        text, detail = texts.get(id(raw), (raw["trace"], {}))
        reason = "budget_below_answer" if text is None else reasons.get(id(raw), "")
        if reason:
            failed[reason] += 1
            buckets["dropped"] += 1
            errors.append({"id": f"{raw['id']}/{name}", "stage": "prune", "reason": reason,
                           "detail": (text or "")[:300], "budget_tokens": budget})
            continue
        buckets["pruned" if id(raw) in texts else "within_budget"] += 1
        n = student.count(text)
        meta = {"stage": "prune", "time": time.time(), "source_id": raw["id"], "mode": config.mode,
                "budget": config.budget, "budget_tokens": budget, "student_tokens": n, "raw_student_tokens": raw_tokens,
                "rho_tokens": n / raw_tokens if raw_tokens else None, "rho_chars": len(text) / max(len(raw["trace"]), 1),
                "scorer": scorer.name, "teacher": {k: raw["meta"].get(k) for k in ("engine", "model")}, **detail}
        if twin is not None:
            meta.update(compressed_id=twin["id"], compressor=twin["meta"].get("compressor"))
        records.append(store.make_record(id=f"{raw['id']}/{name}", problem=raw, answer=raw["answer"], trace=text,
                                         variant="pruned", meta=meta))
    counts = {"inputs": len(items), "pruned": buckets["pruned"], "within_budget": buckets["within_budget"],
              "dropped": buckets["dropped"], "failures": dict(failed),
              "errors": {"missing_raw": buckets["missing_raw"]} if buckets["missing_raw"] else {}}
    return records, errors, counts


def _prune(jobs, scorer: Scorer, mode: str) -> list[tuple[str | None, dict]]:
    """Score the chunk's traces in batched forward passes, then prune each to its budget."""
    if not jobs:
        return []
    raws = [j[0] for j in jobs]
    if mode == "tokens":
        surprisal = scorer.token_surprisal(raws)
        return [prune_tokens(raw, s, budget, scorer) for (raw, budget, *_), s in zip(jobs, surprisal)]
    split = [steps_of(r["trace"]) for r in raws]
    requests = []
    for raw, (steps, joiner) in zip(raws, split):
        requests.append((raw, raw["trace"]))
        requests += [(raw, joiner.join(s for k, s in enumerate(steps) if k != i)) for i in range(len(steps))]
    answer = scorer.answer_surprisal(requests)
    out, at = [], 0
    for (raw, budget, *_), (steps, joiner) in zip(jobs, split):
        base, alone = answer[at], answer[at + 1 : at + 1 + len(steps)]
        at += 1 + len(steps)
        out.append(prune_steps(raw, steps, joiner, [a - base for a in alone], budget, scorer))
    return out


def describe_output(out_dir: str) -> dict:
    """The stage's own summary fields: records per variant, and how far under its budget a trace ended."""
    out = [{"dataset": r["dataset"], "variant": r["variant"], "meta": r["meta"]} for r in store.read_records(out_dir)]
    gaps = [r["meta"]["budget_tokens"] - r["meta"]["student_tokens"] for r in out]
    return {"describe": describe(out), "mean_tokens_under_budget": round(statistics.fmean(gaps), 3) if gaps else None}


def run(config: ConfigDict, scorer: Scorer | None = None) -> dict:
    """Prune this shard's traces to their budgets; resumable. `scorer` overrides config.scorer (tests)."""
    validate(config)
    student = StudentTokens(config.student_tokenizer or config.scorer.model)
    get_scorer = (lambda: scorer) if scorer is not None else functools.cache(lambda: Scorer(config))
    bad = []
    skip = None if config.strict else bad.append
    raws = store.index_records(config.raw_dir, variant="raw", skip=skip)
    name = "pruned"
    if parse_budget(config.budget)[0] == "match":
        twins = store.index_records(config.match_dir, variant="compressed", skip=skip)
        items = {}
        for cid, loc in twins.items():
            raw_id = cid.removesuffix("/compressed")
            items[f"{raw_id}/{name}"] = (loc, raws.get(raw_id))
    else:
        items = {f"{rid}/{name}": (None, loc) for rid, loc in raws.items()}
    items.update(store.skipped_items(bad))
    summary = store.run_chunks(
        "prune", config.out_dir, config.shard, config.chunk_size, items,
        lambda chunk: process_chunk(chunk, get_scorer(), student, config),
        unit="traces", balance=("inputs", ("pruned", "within_budget", "dropped", "errors")),
        shard_key=lambda out_id: out_id.rsplit("/", 1)[0],
        provenance=lambda: {"scorer": get_scorer().name, "mode": config.mode, "budget": config.budget},
        summarize=lambda total: describe_output(config.out_dir),
    )
    print("prune: " + json.dumps(summary["total"]) + "\n" + format_table(summary["describe"]), flush=True)
    return summary


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    run_stage(run, default_config)
