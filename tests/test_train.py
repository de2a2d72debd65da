"""`python -m jax_distill.train`: mesh equivalence, the run summary, and exact resume after SIGTERM,
kill -9 (local and gs:// on fake-gcs-server), a storage outage during the run and a damaged newest
checkpoint; metrics logged once per step across resumes; non-finite steps (stop, skip); unreachable
storage; the tiny config on its own; the PEFT export through peft; config typos."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from gcs_emulator import FakeGCS
from hf_tiny import tokenizer_dir, write_train_traces
from safetensors.numpy import load_file

from jax_distill import data as data_lib
from jax_distill.cli import load_config
from jax_distill.parallel.sharding import ShardingRules, make_mesh
from jax_distill.training import optim
from jax_distill.training import state as state_lib
from jax_distill.training import student as student_lib

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "train" / "tiny.py")
STEPS, EVERY = 12, 3
SEQ_LEN = 64  # shorter rows than tiny.py's (fit for its built-in traces): faster tests
# Subprocess runs reuse the reference run's compiled programs (same HLO, same executable): fast, and
# results are unaffected.
CACHE_ENV = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("jax_cache"))
    CACHE_ENV["JAX_COMPILATION_CACHE_DIR"] = cache
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (cache, 0.0, -1)):
        jax.config.update(k, v)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    return write_train_traces(tmp_path_factory.mktemp("traces") / "traces.jsonl", n=48)


def _overrides(traces, run_dir, ckpt_dir=None, **extra):
    o = {"data.path": str(traces), "train.tokenizer": str(tokenizer_dir()), "train.run_dir": str(run_dir),
         "train.steps": STEPS, "train.seq_len": SEQ_LEN, "checkpoint.every": EVERY, "meta.teacher": "qwen3.5-397b",
         "meta.variant": "raw"}
    if ckpt_dir:
        o["checkpoint.dir"] = str(ckpt_dir)
    o.update(extra)
    return o


def _command(overrides):
    return [sys.executable, "-m", "jax_distill.train", "--config", TINY] + [f"--config.{k}={v}" for k, v in overrides.items()]


def _launch(overrides, env_extra=None, faults=()):
    """The train command through tests/train_driver.py, which adds `faults` (kill@N, pause@N) as hooks."""
    env = dict(os.environ, **CACHE_ENV, **(env_extra or {}))
    Path(overrides["train.run_dir"]).mkdir(parents=True, exist_ok=True)
    log = open(Path(overrides["train.run_dir"]) / f"log{time.monotonic_ns()}.txt", "w+")
    command = [sys.executable, str(ROOT / "tests" / "train_driver.py"), "--config", TINY]
    command += [f"--config.{k}={v}" for k, v in overrides.items()] + [f"--fault={f}" for f in faults]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log


def _wait_paused(proc, log, run_dir):
    """Until the driver's pause hook holds the run at its step; returns the flag that releases it."""
    flag = Path(run_dir) / "paused"
    while not flag.exists():
        assert proc.poll() is None, _finish(proc, log)[1][-3000:]
        time.sleep(0.05)
    return flag


def _finish(proc, log, timeout=240):
    rc = proc.wait(timeout)
    log.seek(0)
    return rc, log.read()


def _exports(run_dir):
    out = {}
    for name in ("export/hf/model.safetensors", "export/peft/adapter_model.safetensors"):
        out.update({f"{name}:{k}": v for k, v in load_file(str(Path(run_dir) / name)).items()})
    return out


def _assert_same_exports(run_dir, reference):
    got, want = _exports(run_dir), _exports(reference)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)  # bit for bit


@pytest.fixture(scope="module")
def reference(traces, tmp_path_factory):
    """The uninterrupted run (in-process, same config and devices as the subprocess runs)."""
    from jax_distill.train import run

    run_dir = tmp_path_factory.mktemp("reference")
    summary = run(load_config(TINY, _overrides(traces, run_dir)))
    return run_dir, summary


def test_run_summary_and_outputs(reference):
    run_dir, summary = reference
    assert json.loads((run_dir / "train_summary.json").read_text()) == summary
    assert json.loads((run_dir / "train_config.json").read_text())["train"]["run_dir"] == str(run_dir)
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "packing", "tokens", "loss_tokens"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert summary["teacher"] == "qwen3.5-397b" and summary["variant"] == "raw" and summary["method"] == "lora"
    assert summary["steps"] == STEPS and summary["final_loss"] == rows[-1]["loss"]
    assert summary["train_tokens"] == sum(r["tokens"] for r in rows)
    assert summary["loss_tokens"] == sum(r["loss_tokens"] for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert os.path.isdir(summary["export_hf"]) and os.path.isdir(summary["export_peft"])
    assert all(os.path.isabs(summary[k]) for k in ("export_hf", "export_peft", "checkpoint_dir"))
    assert summary["student"] == "random-llama" and summary["seed"] == 0  # the label of what was loaded
    assert [os.path.isabs(p) for p in summary["data_path"]] == [True]
    assert list((run_dir / "tensorboard").iterdir())
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [6, 9, 12]  # every 3, keep the last 3
    # LoRA-only checkpoint: no base weight is stored
    state_dir = run_dir / "checkpoints" / "12" / "state"
    meta = json.loads((state_dir / "_METADATA").read_text())
    names = list(meta["tree_metadata"]) if "tree_metadata" in meta else list(meta)
    params = [n for n in names if "params" in n]
    assert params and all(".lora." in n for n in params), params


def _batches(traces, n):
    tok = __import__("transformers").AutoTokenizer.from_pretrained(tokenizer_dir())
    cfg = load_config(TINY, {"data.path": str(traces), "train.run_dir": "x", "train.tokenizer": "x", "train.seq_len": SEQ_LEN})
    ds, _ = data_lib.make_dataset(cfg.data, tok, seq_len=cfg.train.seq_len, batch_size=cfg.train.batch_size, seed=0)
    it = iter(ds)
    return cfg, [next(it) for _ in range(n)]


def _losses(cfg, batches, mesh, method, remat="none"):
    rules = ShardingRules(mesh)
    stu = student_lib.load(cfg.model, method, cfg.lora, rules, seed=0)
    trainable, frozen = stu.split(stu.model.params)
    train_sh, frozen_sh = stu.split(stu.shardings)
    tx, sched = optim.make(cfg.optim, len(batches))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    opt_sh = state_lib.opt_state_shardings(jax.eval_shape(tx.init, trainable), train_sh, mesh)
    state_sh = state_lib.TrainState(rep, train_sh, opt_sh, rep, rep)
    st = jax.device_put(state_lib.TrainState(jnp.zeros([], jnp.int32), trainable, tx.init(trainable),
                                             jax.random.key_data(jax.random.key(0)), jnp.zeros([], jnp.float32)), state_sh)
    batch_sh = rules.sharding(("batch", "seq"), batches[0]["tokens"].shape)
    step = state_lib.jit_train_step(
        state_lib.make_train_step(stu.model.module, stu.model.config, tx, sched, accum_steps=cfg.train.grad_accum,
                                  remat=remat, dropout=method == "lora", rules=rules, loss_chunk=cfg.train.loss_chunk),
        state_sh, frozen_sh, batch_sh, mesh)
    losses = []
    for b in batches:
        b = {k: jax.device_put(b[k], batch_sh) for k in state_lib.BATCH_KEYS}
        st, m = step(st, frozen, b)
        losses.append(float(m["loss"]))
    return np.array(losses)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_meshes_match_single_device(traces, method):
    cfg, batches = _batches(traces, 5)
    cfg.unlock()
    cfg.optim.name = "adamw_8bit" if method == "lora" else "adamw"
    cfg.optim.min_8bit_size = 0
    one = _losses(cfg, batches, make_mesh(1, 1, 1, devices=jax.devices()[:1]), method)
    assert one[-1] < one[0]
    meshes = (((8, 1, 1), "none"), ((2, 4, 1), "dots"), ((2, 2, 2), "full"))
    if method == "lora":  # LoRA + dropout + 8-bit moments: the fsdp mesh (the others are covered by "full")
        meshes = meshes[1:2]
    for sizes, remat in meshes:
        got = _losses(cfg, batches, make_mesh(*sizes), method, remat)
        np.testing.assert_allclose(got[0], one[0], rtol=1e-5, err_msg=str(sizes))
        np.testing.assert_allclose(got, one, rtol=1e-4, err_msg=str(sizes))
    if method == "lora":  # bf16 compute (fp32 master weights) tracks the fp32 run
        cfg.model.compute_dtype = "bfloat16"
        bf16 = _losses(cfg, batches, make_mesh(1, 1, 1, devices=jax.devices()[:1]), method)
        assert not np.array_equal(bf16, one)  # really computed in bf16
        np.testing.assert_allclose(bf16, one, rtol=2e-2)


def test_chunked_loss_matches_whole_row(traces):
    cfg, batches = _batches(traces, 1)
    rules = ShardingRules(make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    stu = student_lib.load(cfg.model, "full", cfg.lora, rules, seed=0)
    batch = {k: jnp.asarray(v) for k, v in batches[0].items()}

    def f(params, chunk):
        total, n = state_lib.token_losses(stu.model.module, stu.model.config, params, batch, chunk=chunk)
        return total / n

    whole, g_whole = jax.jit(jax.value_and_grad(lambda p: f(p, 0)))(stu.model.params)
    chunked, g_chunked = jax.jit(jax.value_and_grad(lambda p: f(p, 16)))(stu.model.params)
    np.testing.assert_allclose(float(chunked), float(whole), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_chunked), jax.tree.leaves(g_whole)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def test_grad_accumulation_matches_one_batch(traces):
    cfg, batches = _batches(traces, 3)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    cfg.unlock()
    cfg.lora.dropout = 0.0  # dropout keys differ per microbatch by design
    one = _losses(cfg, batches, mesh, "lora")
    cfg.train.grad_accum = 4
    accum = _losses(cfg, batches, mesh, "lora")
    np.testing.assert_allclose(accum, one, rtol=1e-5)


@pytest.fixture
def rng():
    """Fault steps are drawn from a printed seed (TEST_TRAIN_SEED reruns a failing draw)."""
    seed = int(os.environ.get("TEST_TRAIN_SEED", "0"))
    print(f"fault steps drawn with TEST_TRAIN_SEED={seed}")
    return random.Random(seed)


def test_sigterm_then_kill9_resume_exactly(traces, reference, tmp_path, rng):
    ref_dir, _ = reference
    k1 = rng.randint(1, STEPS - 4)
    k2 = rng.randint(k1 + 1, STEPS - 1)
    o = _overrides(traces, tmp_path / "run")
    proc, log = _launch(o, faults=[f"pause@{k1}"])
    flag = _wait_paused(proc, log, o["train.run_dir"])
    proc.send_signal(signal.SIGTERM)  # preemption notice, then let the step loop continue
    flag.unlink()
    rc, out = _finish(proc, log)
    assert rc == 143, out[-3000:]
    assert f"SIGTERM: saved step {k1}" in out
    proc, log = _launch(o, faults=[f"kill@{k2}"])
    rc, out = _finish(proc, log)
    assert rc == -signal.SIGKILL, (k1, k2, out[-3000:])
    assert f"resumed from step {k1}" in out
    proc, log = _launch(o)
    rc, out = _finish(proc, log)
    assert rc == 0, (k1, k2, out[-3000:])
    assert "resumed from step" in out
    _assert_same_exports(o["train.run_dir"], ref_dir)


@pytest.fixture
def gcs(tmp_path):
    server = FakeGCS(tmp_path / "gcs").start()
    yield server
    server.stop()


def _wait_for_step(proc, log, metrics: Path, step: int, timeout: float = 240) -> None:
    """Until metrics.jsonl has `step`'s row: the metrics hook runs before the checkpoint hook, so that
    step's save is about to start or running."""
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and any(json.loads(line)["step"] == step for line in metrics.read_text().splitlines())):
        assert proc.poll() is None, _finish(proc, log)[1][-3000:]
        assert time.monotonic() < deadline, f"no step {step} after {timeout}s"
        time.sleep(0.05)


def test_gcs_outage_then_kill9_resume_exactly(traces, reference, gcs, tmp_path, rng):
    """Checkpoints on gs:// (fake-gcs-server): the run is paused just before a save, the emulator goes
    down, the step's save starts against the dead endpoint and storage comes back while it retries; the
    save commits and the run goes on, until it is killed -9 at a random later step; rerunning the same
    command gives the uninterrupted result bit for bit."""
    ref_dir, _ = reference
    k = rng.randint(EVERY * 2 + 1, STEPS - 1)
    o = _overrides(traces, tmp_path / "run", f"gs://{gcs.bucket}/runs/outage")
    proc, log = _launch(o, gcs.env, faults=[f"pause@{EVERY * 2 - 1}", f"kill@{k}"])
    flag = _wait_paused(proc, log, o["train.run_dir"])
    gcs.stop()
    flag.unlink()  # the next step saves while storage is down
    _wait_for_step(proc, log, tmp_path / "run" / "metrics.jsonl", EVERY * 2)  # its save starts while storage is down
    gcs.start()
    rc, out = _finish(proc, log)
    assert rc == -signal.SIGKILL, (k, rc, out[-3000:])
    steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert steps[-1] == k, out[-3000:]  # got through the outage, on to the kill
    rc, out = _finish(*_launch(o, gcs.env))
    assert rc == 0, (k, out[-3000:])
    assert "resumed from step" in out
    _assert_same_exports(o["train.run_dir"], ref_dir)


def test_paper_configs_validate(traces, tmp_path):
    from jax_distill.training.config import validate

    paper = ROOT / "configs" / "train" / "paper.py"
    students = ("qwen3.5-0.8b", "qwen3.5-9b", "llama-3.1-8b", "gpt-oss-20b")
    for f in [f"{paper}:{student},{method}" for student in students for method in ("lora", "full")]:
        cfg = load_config(f, {"train.run_dir": str(tmp_path), "model.path": str(tmp_path), "data.path": str(traces)})
        validate(cfg)
        assert cfg.optim.name == "adamw_8bit" and cfg.optim.warmup_frac == 0.1 and cfg.data.num_epochs == 1
        if cfg.method == "lora":
            assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.optim.lr) == (64, 32.0, 0.05, 1e-4), f
        else:
            assert cfg.optim.lr == 2e-5, f


def test_config_typo_names_the_field(tmp_path):
    proc = subprocess.run(_command({"optim.lrr": 1e-3}), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "unknown config field 'optim.lrr'" in proc.stderr and 'Did you mean "lr"' in proc.stderr
    with pytest.raises(KeyError, match="train.stepz"):
        load_config(TINY, {"train.stepz": 3})
    cfg = load_config(TINY, {"method": "qlora", "train.run_dir": str(tmp_path)})
    from jax_distill.train import run

    with pytest.raises(ValueError, match="config.method"):
        run(cfg)


def test_validate_names_each_bad_field(traces, tmp_path):
    from jax_distill.checks import ConfigError
    from jax_distill.training.config import validate

    good = {"data.path": str(traces), "train.tokenizer": str(tokenizer_dir()), "train.run_dir": str(tmp_path)}
    validate(load_config(TINY, good))
    bad = {"optim.lr": 0.0, "optim.warmup_frac": 1.0, "optim.final_lr_frac": 1.5, "optim.b2": 1.0, "optim.eps": 0.0,
           "optim.weight_decay": -0.1, "train.grad_accum": 3, "train.loss_chunk": 7, "train.log_every": 0,
           "checkpoint.every": -1, "checkpoint.keep": 0, "export.dtype": "int8", "lora.rank": 0, "lora.alpha": 0.0,
           "lora.dropout": 1.0, "lora.targets": "(", "model.remat": "some", "mesh.fsdp": 0,
           "train.tokenizer": str(tmp_path / "missing"), "model.path": "meta-llama/Llama-3.1-8B", "data.pack": "greedy"}
    for field, value in bad.items():
        with pytest.raises(ConfigError, match=f"config.{field}:"):
            validate(load_config(TINY, {**good, field: value}))
    with pytest.raises(ValueError, match="llama-3.1-8b"):
        load_config(str(ROOT / "configs" / "train" / "paper.py") + ":llama-3.1-8b,qlora")


def test_skipped_nonfinite_update_leaves_the_state_unchanged(traces):
    """Inside the jitted step: an update that is not finite is dropped (params and optimizer state as
    they were, the step counted) in skip mode, and flagged either way."""
    cfg, batches = _batches(traces, 1)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    stu = student_lib.load(cfg.model, "full", cfg.lora, ShardingRules(mesh), seed=0)
    trainable, frozen = stu.split(stu.model.params)
    tx = optax.sgd(float("inf"))  # every update is inf or nan
    state = state_lib.TrainState(jnp.zeros([], jnp.int32), trainable, tx.init(trainable),
                                 jax.random.key_data(jax.random.key(0)), jnp.zeros([], jnp.float32))
    batch = {k: jnp.asarray(v) for k, v in batches[0].items()}
    for skip in (True, False):
        step = jax.jit(state_lib.make_train_step(stu.model.module, stu.model.config, tx, lambda s: 0.0,
                                                 skip_nonfinite=skip))
        new, m = step(state, frozen, batch)
        assert int(m["nonfinite"]) == 1 and int(new.step) == 1 and np.isfinite(float(m["loss"]))
        same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params))]
        assert all(same) if skip else not any(same)


def test_nonfinite_loss_stops_naming_the_step_and_the_last_checkpoint(traces, tmp_path):
    """lr=1e30 diverges: the command fails naming the step and the last (finite) checkpoint; no later
    checkpoint and no export is written."""
    o = _overrides(traces, tmp_path / "run", **{"optim.lr": 1e30})
    proc = subprocess.run(_command(o), cwd=ROOT, env=dict(os.environ, **CACHE_ENV), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    found = re.search(r"FATAL step (\d+): non-finite .*Last finite checkpoint: (step (\d+) in (\S+)|none saved yet)",
                      proc.stderr)
    assert found, proc.stderr[-3000:]
    bad = int(found.group(1))
    saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert all(s < bad for s in saved)
    if saved:
        assert int(found.group(3)) == saved[-1] and found.group(4) == str(tmp_path / "run" / "checkpoints")
    assert not (tmp_path / "run" / "export").exists() and not (tmp_path / "run" / "train_summary.json").exists()


def test_nonfinite_skip_mode_counts_and_fails_past_the_limit(traces, tmp_path):
    from jax_distill.train import NonFinite, run

    diverging = {"optim.lr": 1e30, "train.nonfinite": "skip"}
    summary = run(load_config(TINY, _overrides(traces, tmp_path / "a", **diverging, **{"train.max_skipped_steps": STEPS})))
    assert summary["status"] == "complete" and 0 < summary["skipped_steps"] < STEPS
    assert all(np.isfinite(v).all() for v in _exports(tmp_path / "a").values())
    with pytest.raises(NonFinite, match=r"3 updates skipped, more than train.max_skipped_steps=2"):
        run(load_config(TINY, _overrides(traces, tmp_path / "b", **diverging, **{"train.max_skipped_steps": 2})))
    assert not (tmp_path / "b" / "export").exists()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan_params(state_dir: Path) -> None:
    """Rewrite a saved state with one parameter array all NaN (as a flipped exponent byte would leave it)."""
    import shutil

    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    tree = ckptr.restore(state_dir)
    key = sorted(k for k in tree if k.startswith("params."))[0]
    tree[key] = np.full(tree[key].shape, np.nan, tree[key].dtype)
    shutil.rmtree(state_dir)
    ckptr.save(state_dir, tree)
    ckptr.wait_until_finished()


# damage done to the newest checkpoint step (12 of 6, 9, 12) -> the file the rerun must name
DAMAGE = {
    "truncated_array_file": (lambda s: _truncate(max((s / "state" / "d").iterdir(), key=lambda p: p.stat().st_size)),
                             "state/d/"),
    "deleted_state": (lambda s: __import__("shutil").rmtree(s / "state"), "state (missing)"),
    "empty_metadata": (lambda s: (s / "state" / "_METADATA").write_bytes(b""), "state/_METADATA"),
    "truncated_iterator_state": (lambda s: _truncate(s / "data" / "process_0-of-1.json"), "data/process_0-of-1.json"),
    "nonfinite_parameters": (lambda s: _nan_params(s / "state"), "state: non-finite values in params."),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_step(traces, reference, tmp_path, kind, caplog, capsys):
    """The newest checkpoint is damaged (the rest intact): the rerun names the step and the file, renames
    the step <step>.damaged, resumes from the previous step at once (no retries) and ends bit for bit
    where the uninterrupted run ended."""
    import shutil

    from jax_distill.train import run

    ref_dir, _ = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir, ignore=shutil.ignore_patterns("export", "train_summary.json"))
    ckpt = run_dir / "checkpoints"
    damage, file = DAMAGE[kind]
    damage(ckpt / str(STEPS))
    start = time.monotonic()
    summary = run(load_config(TINY, _overrides(traces, run_dir)))
    out = caplog.text + capsys.readouterr().err
    assert f"checkpoint step {STEPS} is damaged: {ckpt / str(STEPS)}/{file}" in out, out[-3000:]
    assert f"resumed from step {STEPS - EVERY} in {ckpt}" in out
    assert (ckpt / f"{STEPS}.damaged").is_dir() and summary["status"] == "complete"
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [6, 9, 12]
    assert time.monotonic() - start < 120
    _assert_same_exports(run_dir, ref_dir)


def _tensorboard_losses(folder: Path) -> dict[int, float]:
    """train/loss by step as TensorBoard plots it: a SessionLog START at step s (tensorboardX's
    purge_step) drops the earlier files' events from step s on."""
    import struct

    from tensorboardX.proto.event_pb2 import Event, SessionLog

    losses: dict[int, float] = {}
    for f in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            if event.session_log.status == SessionLog.START:
                losses = {s: v for s, v in losses.items() if s < event.step}
            losses.update({event.step: v.simple_value for v in event.summary.value if v.tag == "train/loss"})
    return losses


def test_kill9_after_a_checkpoint_logs_every_step_once(traces, reference, tmp_path):
    """Killed at step 8 (checkpoint 6): the resumed run re-runs 7 and 8, and metrics.jsonl and the
    TensorBoard loss hold steps 1..12 once each, with the uninterrupted run's losses."""
    ref_dir, _ = reference
    o = _overrides(traces, tmp_path / "run")
    proc, log = _launch(o, faults=["pause@7", "kill@8"])
    flag = _wait_paused(proc, log, o["train.run_dir"])
    while not (tmp_path / "run" / "checkpoints" / "6").is_dir():  # step 6's async save committed
        time.sleep(0.05)
    flag.unlink()
    rc, out = _finish(proc, log)
    assert rc == -signal.SIGKILL, out[-3000:]
    rc, out = _finish(*_launch(o))
    assert rc == 0 and "resumed from step 6" in out, out[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    want = [json.loads(line) for line in open(ref_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == [r["loss"] for r in want]
    tb = _tensorboard_losses(tmp_path / "run" / "tensorboard")
    assert sorted(tb) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([tb[s] for s in sorted(tb)], [r["loss"] for r in want], rtol=1e-6)


def test_unreachable_gcs_checkpoint_dir_fails_within_the_probe_timeout(traces, tmp_path):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    o = _overrides(traces, tmp_path / "run", "gs://bucket-x/runs/ckpt")
    env = dict(os.environ, STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}", JAX_DISTILL_STORAGE_TIMEOUT_S="3",
               FSSPEC_GCS_TOKEN="anon", GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
    start = time.monotonic()
    proc = subprocess.run(_command(o), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert time.monotonic() - start < 60  # interpreter and imports included; the probe itself gives up at 3 s
    fatal = [line for line in proc.stderr.splitlines() if line.startswith("FATAL")]
    assert len(fatal) == 1 and fatal[0].startswith("FATAL gs://bucket-x/runs/ckpt: storage unreachable"), proc.stderr
    assert f"127.0.0.1:{port}" in fatal[0] and "JAX_DISTILL_STORAGE_TIMEOUT_S" in fatal[0]


def test_tiny_config_trains_on_its_own(tmp_path):
    """The design card's command and nothing else: built-in traces and tokenizer, the run directory from
    the config's name (relative to the working directory), the summary and the config beside it."""
    proc = subprocess.run([sys.executable, "-m", "jax_distill.train", "--config", TINY], cwd=tmp_path,
                          env=dict(os.environ, **CACHE_ENV), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train.run_dir: runs/train/tiny (from meta.name)" in proc.stderr
    run_dir = tmp_path / "runs" / "train" / "tiny"
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 30 and summary["final_loss"] is not None
    assert summary["data"]["used"] > 0 and summary["data"]["skipped_total"] == 0  # every built-in trace fits
    config = json.loads((run_dir / "train_config.json").read_text())
    assert config["train"]["run_dir"] == "runs/train/tiny" and config["data"]["path"] == ["runs/train/tiny/builtin/traces"]
    assert config["train"]["tokenizer"] == "runs/train/tiny/builtin/tokenizer"
    assert (run_dir / "export" / "hf" / "model.safetensors").exists()


def test_peft_export_loads_with_peft_on_the_base_it_names(reference):
    """The random-init student's base is exported beside the adapter and named by absolute path:
    peft.AutoPeftModelForCausalLM loads the PEFT folder alone, with the merged export's logits."""
    import peft
    import torch
    import transformers

    run_dir, summary = reference
    adapter = json.loads((Path(summary["export_peft"]) / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(run_dir / "export" / "base")
    with_adapter = peft.AutoPeftModelForCausalLM.from_pretrained(summary["export_peft"]).eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(summary["export_hf"]).eval()
    tokens = torch.tensor(np.random.default_rng(0).integers(0, 512, size=(2, 19)))
    with torch.no_grad():
        got, want = with_adapter(tokens).logits.numpy(), merged(tokens).logits.numpy()
    base = transformers.AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"]).eval()
    with torch.no_grad():
        assert not np.allclose(base(tokens).logits.numpy(), want, rtol=1e-4, atol=1e-5)  # the adapter matters
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
