"""Multi-host training for real on one machine: 2 processes x 4 CPU devices joined by jax.distributed
over localhost (coordinator address, process count and id from the environment, gloo collectives), the
tiny config with train.data_shards=2, against 1 process x 8 devices with the same data shards.

Every run is a subprocess group of its own, on free ports, with bounded waits; whatever is still running
when a test ends (passed or not) is killed with its process group."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hf_tiny import tokenizer_dir, write_train_traces
from test_train import _assert_same_exports  # the HF and PEFT exports, bit for bit

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "train" / "tiny.py")
DRIVER = str(ROOT / "tests" / "multihost_driver.py")
RECORDS, STEPS, EVERY = 32, 6, 2
TERM_AT, KILL_AT = 1, 5  # SIGTERM after step 1 (between checkpoints); kill -9 after 5, 4 committed
HEARTBEAT_S = 10  # a host that stops sending heartbeats this long is declared dead
RUN_TIMEOUT_S = 600  # one launch on 2 busy cores, compilation included


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One persistent compilation cache for every launch: reruns load the programs, not compile them."""
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    return write_train_traces(tmp_path_factory.mktemp("traces") / "traces.jsonl", n=RECORDS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hosts:
    """`n` processes of one training run (process i: 8 / n CPU devices, JAX_PROCESS_ID=i), started together."""

    def __init__(self, n: int, run_dir: Path, traces: Path, cache: str, faults: dict[int, list[str]] | None = None):
        self.run_dir, self.procs, self.logs = run_dir, [], []
        run_dir.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        overrides = {"data.path": traces, "train.tokenizer": tokenizer_dir(), "train.run_dir": run_dir,
                     "train.steps": STEPS, "train.seq_len": 64, "checkpoint.every": EVERY, "train.data_shards": 2}
        stamp = time.monotonic_ns()
        for i in range(n):
            env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // n}", JAX_PLATFORMS="cpu",
                       JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i),
                       JAX_DISTILL_HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_S), JAX_DISTILL_INIT_TIMEOUT_S="300",
                       JAX_DISTILL_SHUTDOWN_TIMEOUT_S="60", JAX_COMPILATION_CACHE_DIR=cache,
                       JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
            command = [sys.executable, DRIVER, "--config", TINY, f"--ids={run_dir}/ids.{i}"]
            command += [f"--config.{k}={v}" for k, v in overrides.items()]
            command += [f"--fault={f}" for f in (faults or {}).get(i, [])]
            log = open(run_dir / f"log.{stamp}.{i}.txt", "w+")
            self.logs.append(log)
            self.procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def output(self, i: int) -> str:
        self.logs[i].seek(0)
        return self.logs[i].read()

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> list[int]:
        deadline = time.monotonic() + timeout
        for i, p in enumerate(self.procs):
            try:
                p.wait(max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"host {i} still running after {timeout}s:\n{self.output(i)[-3000:]}")
        return [p.returncode for p in self.procs]

    def wait_for(self, condition, what: str, timeout: float = RUN_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for i, p in enumerate(self.procs):
                assert p.poll() is None, f"host {i} exited {p.returncode} before {what}:\n{self.output(i)[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} after {timeout}s"
            time.sleep(0.05)

    def kill(self) -> None:
        """Every process group still there, killed (the tests' finally)."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(30)
        for log in self.logs:
            log.close()


def _train(n, run_dir, traces, cache) -> tuple[list[int], list[str]]:
    hosts = Hosts(n, run_dir, traces, cache)
    try:
        rcs = hosts.wait()
        return rcs, [hosts.output(i) for i in range(n)]
    finally:
        hosts.kill()


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, open(run_dir / "metrics.jsonl"))}


def _ids(path: Path) -> set[int]:
    return {int(line) for line in path.read_text().split()}


def _committed(run_dir: Path, step: int) -> bool:
    return (run_dir / "checkpoints" / str(step)).is_dir()


@pytest.fixture(scope="module")
def runs(traces, cache, tmp_path_factory) -> tuple[Path, Path, dict]:
    """(1 process x 8 devices uninterrupted, 2 processes x 4 devices interrupted twice and resumed, what the
    interruptions showed). The one process has the distributed runtime too, so its collectives are gloo's,
    as the two processes' are; it runs beside the two hosts' first launch.

    The two hosts: SIGTERM on host 1 after step TERM_AT must stop both with that step saved; the rerun
    resumes there, and host 1 is killed -9 after step KILL_AT (checkpoint KILL_AT - 1 committed): host 0
    must exit within the heartbeat timeout naming the dead task; the third launch resumes from KILL_AT - 1
    and ends the run. Its per-step losses and exports then equal the one host's only if 2 x 4 devices
    train as 1 x 8 and both resumes are exact."""
    one, two = tmp_path_factory.mktemp("one_host"), tmp_path_factory.mktemp("two_hosts")
    seen = {}
    reference = Hosts(1, one, traces, cache)
    hosts = Hosts(2, two, traces, cache, faults={1: [f"pause@{TERM_AT}"]})
    flag = two / "paused"
    try:
        hosts.wait_for(flag.exists, f"host 1 paused at step {TERM_AT}")
        hosts.procs[1].send_signal(signal.SIGTERM)  # a preemption notice on one host only
        flag.unlink()
        seen["sigterm"] = (hosts.wait(), [hosts.output(i) for i in range(2)], _committed(two, TERM_AT))
    finally:
        hosts.kill()

    hosts = Hosts(2, two, traces, cache, faults={1: [f"pause@{KILL_AT - 1}", f"kill@{KILL_AT}"]})
    try:
        hosts.wait_for(flag.exists, f"host 1 paused at step {KILL_AT - 1}")
        hosts.wait_for(lambda: _committed(two, KILL_AT - 1), f"checkpoint {KILL_AT - 1} committed")
        flag.unlink()
        assert hosts.procs[1].wait(120) == -signal.SIGKILL, hosts.output(1)[-3000:]
        killed = time.monotonic()
        try:
            rc = hosts.procs[0].wait(HEARTBEAT_S + 60)
        except subprocess.TimeoutExpired:
            rc = None  # a hang
        seen["kill9"] = (rc, time.monotonic() - killed, hosts.output(0))
    finally:
        hosts.kill()

    try:
        assert reference.wait() == [0], reference.output(0)[-3000:]
    finally:
        reference.kill()
    seen["resume"] = _train(2, two, traces, cache)
    return one, two, seen


def test_sigterm_on_one_host_stops_both_at_that_step_saved(runs):
    rcs, out, committed = runs[2]["sigterm"]
    assert rcs == [143, 143], "\n".join(o[-3000:] for o in out)
    for o in out:
        assert f"SIGTERM: saved step {TERM_AT}" in o, o[-3000:]
    assert committed


def test_kill9_on_one_host_ends_the_other_within_the_heartbeat_timeout(runs):
    rc, waited, out = runs[2]["kill9"]
    assert rc is not None, f"host 0 still running {waited:.0f}s after host 1 was killed -9:\n{out[-3000:]}"
    assert rc != 0 and "JAX distributed service detected fatal errors" in out, out[-3000:]
    assert "stopped sending heartbeats" in out, out[-3000:]  # names the dead task
    assert f"resumed from step {TERM_AT}" in out
    print(f"host 0 exited {waited:.1f}s after host 1 was killed (heartbeat timeout {HEARTBEAT_S}s)")


def test_two_hosts_train_as_one_and_resume_exactly(runs):
    """Same per-step losses and bit-identical final parameters as 1 x 8 devices after both interruptions;
    each host read only its own half of the records (i, i+2, ...) and together all of them, as the one
    host did."""
    one_host, two_hosts, seen = runs
    rcs, out = seen["resume"]
    assert rcs == [0, 0], "\n".join(o[-3000:] for o in out)
    assert all(f"resumed from step {KILL_AT - 1}" in o for o in out), out[0][-3000:]
    assert list(_losses(one_host)) == list(range(1, STEPS + 1))
    assert _losses(two_hosts) == _losses(one_host)
    _assert_same_exports(two_hosts, one_host)
    host0, host1 = _ids(two_hosts / "ids.0"), _ids(two_hosts / "ids.1")
    assert host0 == set(range(0, RECORDS, 2)) and host1 == set(range(1, RECORDS, 2))
    assert host0 | host1 == _ids(one_host / "ids.0") == set(range(RECORDS))
    summary = json.loads((two_hosts / "train_summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == STEPS


def test_checkpoint_of_another_host_count_is_not_damage(tmp_path):
    """A step whose data positions 2 hosts saved, restored by 1: a clear error, not a step set aside."""
    from jax_distill.training import checkpoint

    data = tmp_path / "7" / "data"
    data.mkdir(parents=True)
    for i in range(2):
        (data / f"process_{i}-of-2.json").write_text("{}")
    with pytest.raises(ValueError, match=r"step 7 .* saved by 2 host\(s\), this run has 1"):
        checkpoint._check_same_hosts(7, checkpoint.epath.Path(data))
    for i in range(2):
        (data / f"process_{i}-of-2.json").unlink()
    (data / "process_0-of-1.json").write_text("{}")
    checkpoint._check_same_hosts(7, checkpoint.epath.Path(data))


def test_data_shards_side_by_side(traces):
    """One host reading 2 data shards gives, row for row, shard 0's batch then shard 1's, and checkpoints
    and restores both positions; a saved position of other shards is refused."""
    from hf_tiny import load_tokenizer

    from jax_distill import data as data_lib
    from jax_distill.cli import load_config
    from jax_distill.parallel import distributed

    cfg = load_config(TINY, {"data.path": str(traces), "train.run_dir": "x", "train.tokenizer": str(tokenizer_dir())})
    tok = load_tokenizer()
    assert distributed.host_shards(2, 8) == (range(0, 2), 2) and distributed.host_shards(0, 8) == (range(0, 1), 1)
    with pytest.raises(ValueError, match="batch_size 6 does not divide over 4 data shards"):
        distributed.host_shards(4, 6)

    def shard(s):
        return data_lib.make_dataset(cfg.data, tok, seq_len=64, batch_size=4, seed=0, process_index=s, process_count=2)

    parts = [shard(s) for s in range(2)]
    both = iter(distributed.ShardBatches({s: ds for s, (ds, _) in enumerate(parts)}))
    stats = distributed.ShardStats([st for _, st in parts])
    alone = [iter(shard(s)[0]) for s in range(2)]
    want = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in (map(next, alone) for _ in range(3))]

    def check(got, expected):
        assert got.keys() == expected.keys()
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k], err_msg=k)

    check(next(both), want[0])
    saved = both.get_state()
    check(next(both), want[1])
    check(next(both), want[2])
    assert stats.batches == 3 and stats.read == parts[0][1].read + parts[1][1].read > 0
    again = iter(distributed.ShardBatches({s: shard(s)[0] for s in range(2)}))
    again.set_state(saved)
    check(next(again), want[1])
    with pytest.raises(ValueError, match="data shards"):
        iter(distributed.ShardBatches({0: shard(0)[0]})).set_state(saved)
