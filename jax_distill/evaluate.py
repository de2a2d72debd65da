"""Stage 5: evaluate a student checkpoint. `python -m jax_distill.evaluate --config configs/eval/default.py`.

Two kinds of measurement, one JSON per run (`<output_dir>/eval_results.json`: config, checkpoint and
every metric; per-sample generations in `eval_samples.jsonl`):

In-distribution generation. The held-out problems of the trace stage (`problems` sub-config, same split
and decontamination) are asked through the student's chat template (the training data's ChatFormat) and
sampled with the JAX sampler; answers are extracted and checked with the trace stage's checker. Per
dataset and overall: accuracy (an unverifiable check counts as wrong and is counted), mean / median
reasoning tokens (the think block, in the student's tokenizer), mean / median output tokens (everything
generated, EOS included), truncation rate (samples that hit max_tokens), share with no extractable answer.

Out-of-distribution multiple choice by log-likelihood, as lm-evaluation-harness scores it: each choice
is a (context, continuation) pair; the harness's token split (trailing context spaces move to the
continuation; continuation tokens = tokens(context + continuation) minus tokens(context); an empty
context becomes the EOS token; no BOS added); acc = argmax of summed log-probability, acc_norm = argmax
of log-probability / continuation length in UTF-8 bytes. Zero-shot, with the harness's prompts. Files are
read locally in the harness's dataset layouts (the Hugging Face datasets it loads), one record per line
(.jsonl), a JSON list (.json) or Parquet (.parquet):
  hellaswag   Rowan/hellaswag validation: activity_label, ctx_a, ctx_b, endings[4], label ("0".."3")
  winogrande  winogrande (winogrande_xl) validation: sentence (one "_"), option1, option2, answer ("1"|"2");
              partial scoring: the contexts differ ("sentence up to _" + option), the continuation is the
              rest of the sentence, so acc_norm = acc
  piqa        piqa validation: goal, sol1, sol2, label (0|1)
  arc_easy    allenai/ai2_arc ARC-Easy test: question, choices {text[], label[]}, answerKey
  boolq       super_glue boolq validation: passage, question, label (0 = no, 1 = yes)
  truthfulqa_mc1  truthful_qa multiple_choice validation: question, mc1_targets {choices[], labels[]}
              (the harness's 6-shot QA preamble; the correct choice is labels.index(1))
  mmlu_humanities / mmlu_social_sciences / mmlu_other / mmlu_stem
              cais/mmlu "all" test: question, subject, choices[4], answer (0..3); each group keeps its
              subjects (the harness's categories) and is the mean over all its questions
A file is `multiple_choice.files.<task>` or `<multiple_choice.data_dir>/<task>.{jsonl,json,parquet}`
(MMLU groups share `mmlu.*`). A bad record is skipped and counted (or raises naming file, record and
field with multiple_choice.strict).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import math
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_distill.parallel.sharding import use_rules
from jax_distill.sampling import _Static, bucket

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- log-likelihood


def harness_split(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids exactly as lm-evaluation-harness splits them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    if context == "":
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("empty context needs an EOS token to condition on; the tokenizer has none")
        return [eos], encode(continuation)
    whole, ctx = encode(context + continuation), encode(context)
    return ctx, whole[len(ctx) :]


@functools.partial(jax.jit, static_argnames=("module", "cfg", "rules"))
def _score(params, tokens, positions, segments, targets, target_mask, *, module, cfg, rules):
    """Left-padded inputs [B, T]; continuation targets [B, C] right-aligned with the inputs' last C
    columns -> (sum of target log-probs [B], all targets greedy [B])."""
    cfg, rules = cfg.value, rules.value
    C = targets.shape[1]
    with use_rules(rules):
        hidden, _ = module.hidden_states(params, cfg, tokens, positions, segments)
        logits = module.unembed(params, cfg, hidden[:, -C:])  # [B, C, V] fp32
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    total = jnp.sum(jnp.where(target_mask, picked, 0.0), axis=-1)
    greedy = jnp.all((jnp.argmax(logits, axis=-1) == targets) | ~target_mask, axis=-1)
    return total, greedy


def loglikelihood(
    model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 16, max_length: int = 2048, rules=None
) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), continuation is the greedy decode) per request.

    Longer than max_length + 1 tokens: the context is cut from the left, as the harness does."""
    enc = []
    for ctx, cont in requests:
        c, t = harness_split(tokenizer, ctx, cont)
        if not t:
            raise ValueError(f"empty continuation after tokenization for {cont!r}")
        if len(t) > max_length:
            raise ValueError(f"continuation of {len(t)} tokens exceeds max_length={max_length}")
        whole = (c + t)[-(max_length + 1) :]
        enc.append((whole[:-1], t))
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i][0]))
    out: list[tuple[float, bool]] = [(0.0, False)] * len(enc)
    shards = 1
    if rules is not None:
        spec = rules.spec(("batch",))[0]
        axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
        shards = int(np.prod([rules.mesh.shape[a] for a in axes])) if axes else 1
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        B = shards * bucket(-(-len(idx) // shards), minimum=1)
        T = bucket(max(len(enc[i][0]) for i in idx))
        C = min(T, bucket(max(len(enc[i][1]) for i in idx), minimum=4))
        tokens = np.zeros((B, T), np.int32)
        positions = np.zeros((B, T), np.int32)
        segments = np.zeros((B, T), np.int32)
        targets = np.zeros((B, C), np.int32)
        tmask = np.zeros((B, C), bool)
        for r, i in enumerate(idx):
            inp, t = enc[i]
            tokens[r, T - len(inp) :] = inp
            positions[r, T - len(inp) :] = np.arange(len(inp))
            segments[r, T - len(inp) :] = 1
            targets[r, C - len(t) :] = t
            tmask[r, C - len(t) :] = True
        arrays = [tokens, positions, segments, targets, tmask]
        if rules is not None:
            arrays = [jax.device_put(a, rules.sharding(("batch", None), a.shape)) for a in arrays]
        total, greedy = _score(
            model.params, *arrays, module=model.module, cfg=_Static(model.config), rules=_Static(rules)
        )
        total, greedy = np.asarray(total), np.asarray(greedy)
        for r, i in enumerate(idx):
            out[i] = (float(total[r]), bool(greedy[r]))
    return out


# ----------------------------------------------------------------------------- multiple-choice tasks


@dataclasses.dataclass
class MCDoc:
    """One question: a (context, continuation) per choice and the gold choice index."""

    requests: list[tuple[str, str]]
    gold: int


def _hellaswag_pre(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(d):
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    query = _hellaswag_pre(d["activity_label"] + ": " + ctx)
    return MCDoc([(query, " " + _hellaswag_pre(e)) for e in d["endings"]], int(d["label"]))


def _winogrande(d):
    i = d["sentence"].index("_")
    rest = " " + d["sentence"][i + 1 :].strip()
    contexts = [d["sentence"][:i] + d["option1"], d["sentence"][:i] + d["option2"]]
    return MCDoc([(c, rest) for c in contexts], {"1": 0, "2": 1}[str(d["answer"])])


def _piqa(d):
    ctx = f"Question: {d['goal']}\nAnswer:"
    return MCDoc([(ctx, " " + d["sol1"]), (ctx, " " + d["sol2"])], int(d["label"]))


def _arc(d):
    ctx = f"Question: {d['question']}\nAnswer:"
    labels = list(d["choices"]["label"])
    return MCDoc([(ctx, " " + t) for t in d["choices"]["text"]], labels.index(d["answerKey"]))


def _boolq(d):
    ctx = f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:"
    return MCDoc([(ctx, " no"), (ctx, " yes")], int(d["label"]))


TRUTHFULQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


def _truthfulqa_mc1(d):
    ctx = TRUTHFULQA_PREAMBLE + "\n\nQ: " + d["question"] + "\nA:"
    targets = d["mc1_targets"]
    return MCDoc([(ctx, " " + c) for c in targets["choices"]], list(targets["labels"]).index(1))


MMLU_CATEGORIES = {
    "humanities": (
        "formal_logic high_school_european_history high_school_us_history high_school_world_history "
        "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
        "prehistory professional_law world_religions"
    ).split(),
    "social_sciences": (
        "econometrics high_school_geography high_school_government_and_politics high_school_macroeconomics "
        "high_school_microeconomics high_school_psychology human_sexuality professional_psychology "
        "public_relations security_studies sociology us_foreign_policy"
    ).split(),
    "other": (
        "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
        "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology"
    ).split(),
    "stem": (
        "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
        "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
        "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
        "high_school_mathematics high_school_physics high_school_statistics machine_learning"
    ).split(),
}


def _mmlu(d):
    subject = d["subject"].replace("_", " ")
    ch = list(d["choices"])
    if len(ch) != 4:
        raise KeyError("choices (need 4)")
    ctx = (
        f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        f"{d['question'].strip()}\nA. {ch[0]}\nB. {ch[1]}\nC. {ch[2]}\nD. {ch[3]}\nAnswer:"
    )
    return MCDoc([(ctx, " " + letter) for letter in "ABCD"], int(d["answer"]))


def _mmlu_group(category: str):
    subjects = set(MMLU_CATEGORIES[category])
    return lambda d: _mmlu(d) if d["subject"] in subjects else None  # None: not in this group


# task -> (file stem, record -> MCDoc | None to skip silently as out of the group)
TASKS: dict[str, tuple[str, Callable[[dict], MCDoc | None]]] = {
    "hellaswag": ("hellaswag", _hellaswag),
    "winogrande": ("winogrande", _winogrande),
    "piqa": ("piqa", _piqa),
    "arc_easy": ("arc_easy", _arc),
    "boolq": ("boolq", _boolq),
    "truthfulqa_mc1": ("truthfulqa_mc1", _truthfulqa_mc1),
    **{f"mmlu_{c}": ("mmlu", _mmlu_group(c)) for c in MMLU_CATEGORIES},
}


def read_records(path: str | Path) -> list[tuple[str, Any]]:
    """(where, record) for a .jsonl / .json / .parquet file; an undecodable line is kept as the error."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"{path}:{i + 1}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records")
        return [(f"{path}:{i + 1}", r) for i, r in enumerate(data)]
    out = []
    with open(path, encoding="utf-8", errors="strict") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    out.append((f"{path}:{n}", ValueError(f"invalid JSON: {e}")))
    return out


def task_file(mc_cfg, task: str) -> Path:
    stem = TASKS[task][0]
    explicit = (mc_cfg.files.get(task) or mc_cfg.files.get(stem) or "") if "files" in mc_cfg else ""
    if explicit:
        return Path(explicit)
    for ext in (".jsonl", ".json", ".parquet"):
        p = Path(mc_cfg.data_dir) / f"{stem}{ext}"
        if p.exists():
            return p
    raise FileNotFoundError(
        f"multiple_choice: no file for task {task!r}: set multiple_choice.files.{task} or put "
        f"{stem}.jsonl|json|parquet in multiple_choice.data_dir={mc_cfg.data_dir!r}"
    )


def load_task(task: str, path: str | Path, limit: int = 0, strict: bool = False) -> tuple[list[MCDoc], dict]:
    """Documents of a task and a report of skipped records ({reason: count}, examples)."""
    if task not in TASKS:
        raise ValueError(f"unknown multiple-choice task {task!r}; known: {sorted(TASKS)}")
    to_doc = TASKS[task][1]
    docs, bad, examples = [], {}, []
    for where, rec in read_records(path):
        try:
            if isinstance(rec, Exception):
                raise rec
            doc = to_doc(rec)
            if doc is None:
                continue
            if not 0 <= doc.gold < len(doc.requests):
                raise IndexError(f"gold index {doc.gold} outside {len(doc.requests)} choices")
        except (KeyError, ValueError, IndexError, TypeError, AttributeError) as e:
            reason = f"missing field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
            if strict:
                raise ValueError(f"{where}: {task} record: {reason}") from None
            bad[reason] = bad.get(reason, 0) + 1
            if len(examples) < 5:
                examples.append(f"{where}: {reason}")
            continue
        docs.append(doc)
        if limit and len(docs) >= limit:
            break
    if bad:
        log.warning("%s: skipped %d bad records in %s (e.g. %s)", task, sum(bad.values()), path, examples[:2])
    return docs, {"skipped": bad, "examples": examples}


def score_docs(docs: list[MCDoc], scores: list[float]) -> dict:
    """acc and acc_norm (log-prob / continuation bytes) from one score per request, in doc order."""
    acc = norm = 0
    k = 0
    for d in docs:
        s = np.asarray(scores[k : k + len(d.requests)])
        k += len(d.requests)
        lengths = np.asarray([len(cont.encode("utf-8")) for _, cont in d.requests], np.float64)
        acc += int(np.argmax(s) == d.gold)
        norm += int(np.argmax(s / lengths) == d.gold)
    n = len(docs)
    return {"acc": acc / n if n else float("nan"), "acc_norm": norm / n if n else float("nan"), "n": n}


def evaluate_multiple_choice(model, tokenizer, mc_cfg, rules=None) -> dict:
    results = {}
    for task in [t.strip() for t in mc_cfg.tasks.split(",") if t.strip()]:
        path = task_file(mc_cfg, task)
        docs, report = load_task(task, path, mc_cfg.limit, mc_cfg.strict)
        start = time.time()
        requests = [r for d in docs for r in d.requests]
        scores = loglikelihood(model, tokenizer, requests, mc_cfg.batch_size, mc_cfg.max_length, rules)
        res = score_docs(docs, [s for s, _ in scores])
        res.update(file=str(path), seconds=round(time.time() - start, 2), **report)
        log.info(
            "%s: acc %.4f acc_norm %.4f (n=%d, %.1fs)", task, res["acc"], res["acc_norm"], res["n"], res["seconds"]
        )
        results[task] = res
    return results


# ----------------------------------------------------------------------------- generation accuracy


def _stats(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return float(statistics.fmean(values)), float(statistics.median(values))


def generation_metrics(samples: list[dict]) -> dict:
    """Aggregate per-sample records (correct, reasoning_tokens, output_tokens, finish_reason, answer)."""
    n = len(samples)
    if n == 0:
        return {"n": 0}
    mean_r, median_r = _stats([s["reasoning_tokens"] for s in samples])
    mean_o, median_o = _stats([s["output_tokens"] for s in samples])
    return {
        "n": n,
        "accuracy": sum(s["correct"] is True for s in samples) / n,
        "unverified": sum(s["correct"] is None for s in samples),
        "no_answer_rate": sum(s["answer"] is None for s in samples) / n,
        "mean_reasoning_tokens": mean_r,
        "median_reasoning_tokens": median_r,
        "mean_output_tokens": mean_o,
        "median_output_tokens": median_o,
        "truncation_rate": sum(s["finish_reason"] == "length" for s in samples) / n,
    }


def evaluate_generation(engine, problems, gen_cfg) -> tuple[dict, list[dict]]:
    """Sample answers to held-out problems and check them; returns (metrics, per-sample records)."""
    from jax_distill.engines.base import SamplingParams
    from jax_distill.problems import check_answers, extract_answer

    params = SamplingParams(
        n=gen_cfg.n,
        temperature=gen_cfg.temperature,
        top_p=gen_cfg.top_p,
        top_k=gen_cfg.top_k,
        max_tokens=gen_cfg.max_tokens,
        seed=gen_cfg.seed,
        stop=tuple(s for s in gen_cfg.stop.split("|") if s),
    )
    requests = [[{"role": "user", "content": p.question}] for p in problems]
    completions = engine.generate(requests, params)
    samples = []
    for p, outs in zip(problems, completions):
        for j, c in enumerate(outs):
            answer = extract_answer(c.answer_text, p.answer_type) if c.answer_text else None
            samples.append(
                {
                    "id": p.id,
                    "dataset": p.dataset,
                    "sample": j,
                    "gold": p.gold,
                    "answer_type": p.answer_type,
                    "answer": answer,
                    "finish_reason": c.finish_reason,
                    "output_tokens": c.completion_tokens,
                    "reasoning_tokens": engine.count_tokens(c.reasoning) if c.reasoning else 0,
                    "text": c.text,
                }
            )
    checks = check_answers([(s["answer"], s["gold"], s["answer_type"]) for s in samples], gen_cfg.check_timeout_s)
    for s, ok in zip(samples, checks):
        s["correct"] = ok
    by_dataset = {}
    for name in sorted({s["dataset"] for s in samples}):
        by_dataset[name] = generation_metrics([s for s in samples if s["dataset"] == name])
    return {"overall": generation_metrics(samples), "by_dataset": by_dataset}, samples


# ----------------------------------------------------------------------------- the stage


def _jsonable(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def run(config) -> dict:
    """Evaluate `config.checkpoint`; writes eval_results.json (+ eval_samples.jsonl) and returns it."""
    from transformers import AutoTokenizer

    from jax_distill.engines.jax_engine import JaxEngine, chat_config
    from jax_distill.models import from_pretrained
    from jax_distill.models.hf_io import local_folder
    from jax_distill.parallel.sharding import ShardingRules, make_mesh

    if not config.checkpoint:
        raise ValueError("evaluate: config.checkpoint (student HF folder) is required")
    if not config.output_dir:
        raise ValueError("evaluate: config.output_dir is required")
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rules = ShardingRules(make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor))
    dtype = jnp.dtype(config.dtype)
    model = from_pretrained(
        config.checkpoint, dtype=dtype, compute_dtype=jnp.dtype(config.compute_dtype or dtype), rules=rules
    )
    tokenizer = AutoTokenizer.from_pretrained(local_folder(config.tokenizer or config.checkpoint))
    results: dict[str, Any] = {
        "checkpoint": str(config.checkpoint),
        "config": config.to_dict(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if config.generation.enabled:
        from jax_distill.problems import load_problems_with_report

        _, problems, problem_report = load_problems_with_report(config)
        chat = chat_config(**config.chat.to_dict())
        engine = JaxEngine(
            model,
            tokenizer,
            rules=rules,
            batch_size=config.generation.batch_size,
            chat=chat,
            model_name=str(config.checkpoint),
        )
        t = time.time()
        metrics, samples = evaluate_generation(engine, problems, config.generation)
        metrics["seconds"] = round(time.time() - t, 2)
        metrics["problems"] = problem_report.get("split", {})
        results["generation"] = metrics
        with open(out_dir / "eval_samples.jsonl", "w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
        o = metrics["overall"]
        log.info(
            "generation: accuracy %.4f, median reasoning tokens %s, truncated %.3f (n=%d)",
            o.get("accuracy", float("nan")),
            o.get("median_reasoning_tokens"),
            o.get("truncation_rate", 0),
            o["n"],
        )
    if config.multiple_choice.tasks:
        results["multiple_choice"] = evaluate_multiple_choice(model, tokenizer, config.multiple_choice, rules)
    results["seconds"] = round(time.time() - start, 2)
    results = _jsonable(results)
    path = out_dir / "eval_results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    tmp.replace(path)
    log.info("wrote %s", path)
    return results


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_stage(run)
