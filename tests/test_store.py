"""Data safety of the chunk loop (traces/store.py): one writer per output folder part (a second run is
refused, naming the folder and the holder; a stale lock is taken over; shards share a folder), and a
finished chunk is trusted only while its records file holds the records its done marker counts."""

import glob
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jax_distill.cli import load_config
from jax_distill.traces import generate, store

ROOT = Path(__file__).resolve().parents[1]
GEN = {"problems.synthetic.num": 30, "sampling.n": 2, "chunk_size": 2}


def gen_cfg(out, **overrides):
    return load_config(str(ROOT / "configs/traces/generate.py"), {"out_dir": str(out), **GEN, **overrides})


def records_of(out):
    return sorted((r["id"], r["answer"], r["trace"]) for r in store.read_records(str(out)))


@pytest.fixture
def paused_run(tmp_path):
    """A generate process (through the CLI) holding its lock, paused before its 3rd done marker; yields
    (process, out_dir, start(shard) -> None) and lets it finish on exit."""
    out, flags = tmp_path / "out", tmp_path / "flags"
    flags.mkdir()
    procs = []

    def start(shard="0/1"):
        cmd = [sys.executable, str(ROOT / "tests/generate_driver.py"), "pause", "2", str(flags),
               f"--config={ROOT}/configs/traces/generate.py", f"--config.out_dir={out}", f"--config.shard={shard}"]
        cmd += [f"--config.{k}={v}" for k, v in GEN.items()]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 120
        while not (flags / "paused").exists():  # the driver waits there: no race on what it has written
            assert procs[0].poll() is None and time.monotonic() < deadline, procs[0].communicate()
            time.sleep(0.02)
        return procs[0]

    def finish():
        (flags / "go").touch()
        out_, err = procs[0].communicate(timeout=120)
        assert procs[0].returncode == 0, err[-3000:]

    yield start, out, finish
    if procs and procs[0].poll() is None:
        (flags / "go").touch()
        procs[0].communicate(timeout=120)


def test_second_writer_is_refused_and_the_first_finishes(paused_run, tmp_path):
    start, out, finish = paused_run
    first = start()
    assert len(glob.glob(str(out / "*.done.json"))) == 2
    with pytest.raises(store.lock.FolderLocked) as refused:
        generate.run(gen_cfg(out))
    message = str(refused.value)
    assert message.startswith(f"{out}: another generate run writes generate-shard000of001 here")
    assert f"host {socket.gethostname()}, pid {first.pid}" in message
    assert len(glob.glob(str(out / "*.done.json"))) == 2  # the refused run touched nothing
    finish()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["balanced"] and summary["this_run"] == summary["total"]
    assert not (out / "generate-shard000of001.lock").exists()
    reference = generate.run(gen_cfg(tmp_path / "reference"))
    assert summary["total"] == reference["total"] and records_of(out) == records_of(tmp_path / "reference")


def test_shards_sharing_a_folder_run_together(paused_run, tmp_path):
    start, out, finish = paused_run
    start("0/2")
    other = generate.run(gen_cfg(out, shard="1/2"))  # its own prefix, its own lock
    assert other["problems_in_shard"] > 0 and other["this_run"]
    finish()
    generate.run(gen_cfg(tmp_path / "reference"))
    assert records_of(out) == records_of(tmp_path / "reference")


def test_stale_lock_is_taken_over(tmp_path, caplog):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)  # a process that has exited
    out = tmp_path / "out"
    out.mkdir()
    lock_file = out / "generate-shard000of001.lock"
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": "earlier", "stage": "generate"}))
    with caplog.at_level(logging.WARNING):
        summary = generate.run(gen_cfg(out))
    assert summary["balanced"] and summary["total"]["generated"] == 2 * summary["problems"]
    assert any("taking over the stale lock" in r.getMessage() and str(pid) in r.getMessage() for r in caplog.records)
    assert not lock_file.exists()
    # a holder on another host cannot be checked from here: refused
    lock_file.write_text(json.dumps({"host": "elsewhere", "pid": pid, "since": "earlier", "stage": "generate"}))
    with pytest.raises(store.lock.FolderLocked, match="host elsewhere"):
        generate.run(gen_cfg(out))


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_lost_records_of_a_finished_chunk_are_redone(tmp_path, damage, caplog):
    out, ref = tmp_path / "out", tmp_path / "reference"
    generate.run(gen_cfg(out))
    reference = generate.run(gen_cfg(ref))
    victim = sorted(glob.glob(str(out / "*-00001.jsonl")))[0]
    lost = {json.loads(line)["id"] for line in Path(victim).read_text().splitlines()}
    assert lost
    if damage == "delete":
        os.remove(victim)
    else:
        Path(victim).write_text(Path(victim).read_text().splitlines(keepends=True)[0])
    with caplog.at_level(logging.WARNING):
        rerun = generate.run(gen_cfg(out))
    assert any(victim in r.getMessage() for r in caplog.records)  # the warning names the file
    assert rerun["this_run"]["generated"] == GEN["chunk_size"] * GEN["sampling.n"]  # the damaged chunk, again
    assert rerun["balanced"] and rerun["total"] == reference["total"]
    assert lost <= {r["id"] for r in store.read_records(str(out))}
    assert records_of(out) == records_of(ref)
