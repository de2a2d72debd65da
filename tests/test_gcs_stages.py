"""Every trace stage reads and writes gs:// as a local folder (fake-gcs-server, tests/gcs_emulator.py):
generate killed mid-run leaves finished chunks, a chunk without its done marker and its lock object; the
rerun takes the stale lock over, drops the unfinished chunk and ends with the records of an unbroken
local run. compress, truncate and stats from and to gs:// equal their local runs; a live lock object
refuses a second writer."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gcs_emulator import serving
from hf_tiny import tokenizer_dir
from jax_distill import storage
from jax_distill.cli import load_config
from jax_distill.traces import compress, generate, lock, stats, store, truncate

ROOT = Path(__file__).resolve().parents[1]
GEN = {"problems.synthetic.num": 30, "sampling.n": 2, "chunk_size": 4}


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("gcs")) as server:
        yield server


def cfg(stage: str, **overrides):
    return load_config(str(ROOT / f"configs/traces/{stage}.py"), overrides)


def contents(out: str):
    """Records (meta without its time) by file name, errors, and done markers (ids, counts, lines) of a
    stage folder, local or gs://."""
    recs = {os.path.basename(f): [{**r, "meta": {k: v for k, v in r["meta"].items() if k != "time"}}
                                  for r in store.read_records(f)] for f in store.chunk_files(out)}
    done = {}
    for path in storage.glob(os.path.join(out, f"*{store.DONE}")):
        info = json.loads(storage.read_bytes(path))
        done[os.path.basename(path)] = {**{k: v for k, v in info.items() if k != "time"},
                                        "files": {f: e["lines"] for f, e in info["files"].items()}}
    return recs, done, store.read_errors(out)


def names(out: str) -> list[str]:
    return [p[len(out) + 1 :] for p in storage.glob(f"{out}/**")]


def test_generate_killed_on_gcs_resumes_to_the_local_records(gcs, tmp_path, caplog):
    out, local = f"gs://{gcs.bucket}/killed/raw", str(tmp_path / "raw")
    reference = generate.run(cfg("generate", out_dir=local, **GEN))
    cmd = [sys.executable, str(ROOT / "tests/generate_driver.py"), "kill", "2",
           f"--config={ROOT}/configs/traces/generate.py", f"--config.out_dir={out}"]
    cmd += [f"--config.{k}={v}" for k, v in GEN.items()]
    killed = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                            timeout=180)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    left = names(out)
    assert sum(n.endswith(store.DONE) for n in left) == 2  # two finished chunks
    assert "generate-shard000of001-00002.jsonl" in left and "generate-shard000of001.lock" in left  # cut there

    with caplog.at_level(logging.WARNING):
        rerun = generate.run(cfg("generate", out_dir=out, **GEN))
    assert any("taking over the stale lock" in r.getMessage() for r in caplog.records)
    assert rerun["skipped_finished"] == 2 * GEN["chunk_size"]
    assert rerun["balanced"] and rerun["total"] == reference["total"]
    assert contents(out) == contents(local)
    assert "generate-shard000of001.lock" not in names(out)
    assert json.loads(storage.read_bytes(f"{out}/summary.json"))["total"] == reference["total"]


def test_compress_truncate_stats_on_gcs_equal_local(gcs, tmp_path):
    tok = str(tokenizer_dir())
    root, local = f"gs://{gcs.bucket}/stages", str(tmp_path)
    results = {}
    for base in (root, local):
        generate.run(cfg("generate", out_dir=f"{base}/raw", **GEN))
        comp = compress.run(cfg("compress", in_dir=f"{base}/raw", out_dir=f"{base}/comp", chunk_size=7,
                                student_tokenizer=tok))
        trunc = truncate.run(cfg("truncate", raw_dir=f"{base}/raw", compressed_dir=f"{base}/comp",
                                 out_dir=f"{base}/trunc", chunk_size=9, student_tokenizer=tok))
        results[base] = comp, trunc, stats.run(load_config(str(ROOT / "configs/traces/stats.py"),
                                                           {"path": f"{base}/trunc"}))
    for stage in ("comp", "trunc"):
        assert contents(f"{root}/{stage}") == contents(f"{local}/{stage}")
    (comp, trunc, described), (comp_l, trunc_l, described_l) = results[root], results[local]
    assert comp["total"] == comp_l["total"] and comp["table"] == comp_l["table"] and comp["total"]["compressed"] > 0
    assert trunc["total"] == trunc_l["total"] and trunc["total"]["truncated"] > 0
    assert described == described_l and described["describe"]
    assert storage.read_bytes(f"{root}/comp/summary.md") == Path(local, "comp/summary.md").read_bytes()


def test_live_lock_object_refuses_a_second_writer(gcs):
    out = f"gs://{gcs.bucket}/locked"
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": "now", "stage": "generate"}
    storage.write_atomic(f"{out}/generate-shard000of001.lock", json.dumps(holder))
    with pytest.raises(lock.FolderLocked, match=f"pid {os.getpid()}"):
        generate.run(cfg("generate", out_dir=out, **GEN))
    assert not storage.glob(f"{out}/*{store.DONE}")


def test_evaluate_and_report_on_gcs_equal_local(gcs, tmp_path):
    """A student on gs:// evaluated into gs://, then the report over gs:// run folders into gs://: the
    numbers of the same steps on local paths."""
    from hf_tiny import save_tiny_model
    from jax_distill import evaluate, report

    model = save_tiny_model("llama", tmp_path / "llama")
    remote = f"gs://{gcs.bucket}/eval"
    storage.gcs().put(str(model), f"{gcs.bucket}/eval/llama", recursive=True)
    results = {}
    for base, checkpoint in ((remote, f"{remote}/llama"), (str(tmp_path), str(model))):
        results[base] = evaluate.run(load_config(str(ROOT / "configs/eval/default.py"), {
            "checkpoint": checkpoint, "output_dir": f"{base}/runs/raw/eval", "dtype": "float32",
            "problems.synthetic.num": 60, "problems.eval_limit": 3, "generation.sampling.max_tokens": 8,
            "generation.batch_size": 3, "multiple_choice.tasks": ""}))
        for variant, train_time in (("raw", 100.0), ("compressed-extractive", 40.0)):
            run = f"{base}/runs/{variant}"
            if variant != "raw":
                storage.makedirs(f"{run}/eval")
                for name in ("eval_results.json", "eval_samples.jsonl"):
                    storage.write_atomic(f"{run}/eval/{name}", storage.read_bytes(f"{base}/runs/raw/eval/{name}"))
            storage.write_atomic(f"{run}/train_summary.json", json.dumps({
                "teacher": "procedural", "student": "tiny", "method": "full", "variant": variant, "seed": 0,
                "train_tokens": 1000, "train_time_s": train_time, "data_path": [], "status": "complete"}))
    local = str(tmp_path)
    assert results[remote]["generation"]["overall"] == results[local]["generation"]["overall"]
    assert not storage.exists(f"{remote}/runs/raw/eval/partial")  # finished parts are removed at the end
    assert storage.read_bytes(f"{remote}/runs/raw/eval/eval_samples.jsonl") == \
        Path(local, "runs/raw/eval/eval_samples.jsonl").read_bytes()

    reports = {}
    for base in (remote, local):
        paths = report.run(load_config(str(ROOT / "configs/eval/report.py"), {
            "runs": f"{base}/runs", "output_dir": f"{base}/report", "n_boot": 200}))
        reports[base] = json.loads(storage.read_bytes(paths["json"]))
        assert paths["plot"] == f"{base}/report/accuracy_vs_length.png" and storage.size(paths["plot"]) > 1000
        assert storage.read_bytes(f"{base}/report/main_table.md").decode().count("\n") >= 3
    strip = lambda r: json.loads(json.dumps({k: v for k, v in r.items() if k != "files"}).replace(remote, local))  # noqa: E731
    assert strip(reports[remote]) == strip(reports[local]) and len(reports[local]["cells"]) == 2
