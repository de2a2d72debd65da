"""Evaluation on 2 hosts for real, on one machine: 2 processes x 4 CPU devices joined by jax.distributed over
localhost (as tests/test_multihost.py trains), against 1 process x 8 devices that also goes through the
coordinator (gloo collectives on both sides). The tiny llama student samples greedy answers to 16 held-out
problems (with a stop string, so rows are also cut between decode chunks) and scores multiple-choice
documents; every number and every sample must be the one host's, and host 0 alone writes them.

Each launch is a process group of its own on a free port with bounded waits; whatever still runs when the
fixture ends is killed with its group."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hf_tiny import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
DRIVER = str(ROOT / "tests" / "multihost_eval_driver.py")  # the evaluate command, noting who writes what
PROBLEMS, MC_DOCS = 16, 12
RUN_TIMEOUT_S = 300  # one launch on 2 busy cores, compilation included


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mc_file(path: Path) -> Path:
    """MC_DOCS hellaswag documents in the Hugging Face layout, each with its own context and endings."""
    nouns = ["roof", "garden", "kitchen", "river", "market", "school", "bridge", "forest", "train", "shop", "lake",
             "farm"]
    rows = [{"activity_label": f"Task {i}", "ctx_a": f"A man walks to the {n}.", "ctx_b": "he",
             "endings": [f"looks at the {n}.", "eats 3 apples.", "counts to 17.", f"leaves the {nouns[i - 1]}."],
             "label": str(i % 4)} for i, n in enumerate(nouns[:MC_DOCS])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _launch(n: int, out: Path, model: Path, mc: Path) -> tuple[list[int], list[str]]:
    """One evaluation as `n` processes of 8 / n CPU devices; (exit codes, each process's log)."""
    port = _free_port()
    overrides = {"checkpoint": model, "output_dir": out, "dtype": "float32", "problems.synthetic.num": 200,
                 "problems.eval_limit": PROBLEMS, "generation.sampling.max_tokens": 16,
                 "generation.sampling.stop": "Yes Yes,Therefore", "generation.batch_size": 16,
                 "multiple_choice.tasks": "hellaswag,", "multiple_choice.files.hellaswag": mc,
                 "multiple_choice.batch_size": 4 * MC_DOCS}
    command = [sys.executable, DRIVER, "--config", "configs/eval/default.py", f"--writes={out}.writes"]
    command += [f"--config.{k}={v}" for k, v in overrides.items()]
    procs, logs = [], []
    try:
        for i in range(n):
            env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // n}", JAX_PLATFORMS="cpu",
                       JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i),
                       JAX_DISTILL_HEARTBEAT_TIMEOUT_S="10", JAX_DISTILL_INIT_TIMEOUT_S="120",
                       JAX_DISTILL_SHUTDOWN_TIMEOUT_S="60")
            logs.append(open(out.parent / f"{out.name}.log.{i}", "w+"))
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=logs[-1], stderr=subprocess.STDOUT,
                                          start_new_session=True))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        for p in procs:
            try:
                p.wait(max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                pass  # reported below with the logs
        texts = []
        for log in logs:
            log.seek(0)
            texts.append(log.read())
        return [p.returncode for p in procs], texts
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, tuple[Path, list[int], list[str]]]:
    """{processes: (output folder, exit codes, logs)} of the same evaluation on 1 x 8 and on 2 x 4 devices,
    the two launched side by side."""
    import concurrent.futures

    base = tmp_path_factory.mktemp("multihost_eval")
    model = save_tiny_model("llama", base / "student")
    mc = _mc_file(base / "hellaswag.jsonl")
    outs = {n: base / f"out_{n}x{8 // n}" for n in (1, 2)}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {n: pool.submit(_launch, n, out, model, mc) for n, out in outs.items()}
        return {n: (outs[n], *f.result()) for n, f in futures.items()}


def _results(out: Path) -> dict:
    return json.loads((out / "eval_results.json").read_text())


def _samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]


def test_every_process_exits_0_and_the_two_ran_as_one_8_device_run(runs):
    for n, (out, rcs, logs) in runs.items():
        assert rcs == [0] * n, "\n".join(f"--- process {i} (exit {rc}):\n{log[-3000:]}"
                                         for i, (rc, log) in enumerate(zip(rcs, logs)))
        for i, log in enumerate(logs):
            assert f"jax.distributed: process {i} of {n}, 8 devices ({8 // n} local)" in log, log[-3000:]
        assert _results(out).get("hosts") == {"processes": n, "devices": 8}


def test_host_0_alone_writes_one_set_of_outputs(runs):
    """Every file written, each once and by host 0 (the partial results, the samples, the results); the
    output folder then holds the two result files and no leftovers."""
    for n, (out, _, _) in runs.items():
        writes = Path(f"{out}.writes").read_text().split("\n")[:-1]
        names = ["partial/generation.json", "eval_samples.jsonl", "partial/mc_hellaswag.json", "eval_results.json"]
        assert sorted(writes) == sorted(f"0 {out / name}" for name in names), f"{n} process(es):\n" + "\n".join(writes)
        assert sorted(p.name for p in out.iterdir()) == ["eval_results.json", "eval_samples.jsonl"]


def test_two_hosts_give_the_one_host_samples_and_numbers(runs):
    """Per sample: text, answer, token counts, stop and finish reasons; then every metric, generation and
    multiple choice. Only what measures the run itself (timings, creation time, host count) may differ."""
    (one, *_), (two, *_) = runs[1], runs[2]
    samples_one, samples_two = _samples(one), _samples(two)
    assert len(samples_one) == PROBLEMS
    assert samples_two == samples_one
    reasons = {s["stop_reason"] for s in samples_one}
    assert "stop" in reasons and len(reasons) >= 2, reasons  # the stop string cut some rows, others ran on
    results_one, results_two = _results(one), _results(two)
    for r in (results_one, results_two):
        for part in (r["generation"], r["multiple_choice"]["hellaswag"]):
            part.pop("seconds")
        for key in ("seconds", "created", "hosts"):  # (the first test checks "hosts")
            r.pop(key, None)
        r["config"].pop("output_dir")
    assert results_two == results_one
    assert results_one["multiple_choice"]["hellaswag"]["n"] == MC_DOCS
    assert results_one["generation"]["overall"]["n"] == PROBLEMS
