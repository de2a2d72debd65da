"""`python -m jax_distill.train --config configs/train/<x>.py [--config.a.b=v]`: distil traces into a student.

Wiring only: mesh -> student (born sharded, LoRA applied) -> Grain batches -> jitted step -> orbax
checkpoints -> exports and train_summary.json. Rerunning the same command resumes from the latest
complete checkpoint (state, RNG and data position), bit for bit. `run(config)` is the same in-process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jax_distill import data as data_lib
from jax_distill.parallel import distributed
from jax_distill.parallel.sharding import ShardingRules, make_mesh
from jax_distill.training import checkpoint, export, lora, metrics, optim
from jax_distill.training import config as config_lib
from jax_distill.training import state as state_lib
from jax_distill.training import student as student_lib

log = logging.getLogger(__name__)


def _fault(step: int) -> None:
    """Test hook: JAX_DISTILL_FAULT="kill@N" sends SIGKILL to this process after step N (a crash with no
    cleanup, possibly mid-checkpoint); "pause@N" waits after step N until <JAX_DISTILL_FAULT_DIR>/paused
    is removed; several comma-separated faults apply in turn."""
    for spec in filter(None, os.environ.get("JAX_DISTILL_FAULT", "").split(",")):
        kind, _, at = spec.partition("@")
        if int(at) != step:
            continue
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "pause":
            flag = os.path.join(os.environ["JAX_DISTILL_FAULT_DIR"], "paused")
            open(flag, "w").close()
            while os.path.exists(flag):
                time.sleep(0.05)


def total_steps(config: ConfigDict, tokenizer, local_batch: int) -> int:
    """train.steps, or one pass over the data times data.num_epochs (the fewest batches of any host)."""
    if config.train.steps > 0:
        return config.train.steps
    kwargs = dict(seq_len=config.train.seq_len, batch_size=local_batch, seed=config.train.seed,
                  process_index=jax.process_index(), process_count=jax.process_count())
    n, _ = data_lib.count_batches(config.data, tokenizer, **kwargs)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        n = int(np.min(multihost_utils.process_allgather(np.asarray(n))))
    return n * max(config.data.num_epochs, 1)


def run(config: ConfigDict) -> dict:
    """Train (or resume) one student; returns the summary also written to <run_dir>/train_summary.json."""
    config_lib.validate(config)
    distributed.initialize()
    c, t = config, config.train
    mesh = make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    rules = ShardingRules(mesh)
    stu = student_lib.load(c.model, c.method, c.lora, rules, t.seed)
    module, model_cfg = stu.model.module, stu.model.config
    trainable, frozen = stu.split(stu.model.params)
    train_sh, frozen_sh = stu.split(stu.shardings)

    from transformers import AutoTokenizer

    tok_dir = student_lib.tokenizer_path(c.model.path, t.tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if t.batch_size % jax.process_count():
        raise ValueError(f"config.train.batch_size {t.batch_size} does not divide over {jax.process_count()} hosts")
    local_batch = t.batch_size // jax.process_count()
    steps = total_steps(c, tokenizer, local_batch)
    dataset, stats = data_lib.make_dataset(c.data, tokenizer, seq_len=t.seq_len, batch_size=local_batch, seed=t.seed,
                                           process_index=jax.process_index(), process_count=jax.process_count())
    iterator = iter(dataset)

    tx, schedule = optim.make(c.optim, steps)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    opt_sh = state_lib.opt_state_shardings(jax.eval_shape(tx.init, trainable), train_sh, mesh)
    state_sh = state_lib.TrainState(replicated, train_sh, opt_sh, replicated, replicated)
    state = jax.jit(lambda p: state_lib.TrainState(jnp.zeros([], jnp.int32), p, tx.init(p),
                                                   jax.random.key_data(jax.random.key(t.seed)), jnp.zeros([], jnp.float32)),
                    out_shardings=state_sh)(trainable)

    ckpt = checkpoint.Checkpointer(c.checkpoint.dir or os.path.join(t.run_dir, "checkpoints"), c.checkpoint.every,
                                   c.checkpoint.keep, c.checkpoint.async_save)
    latest = ckpt.latest_step()
    if latest is not None:
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh)
        state = ckpt.restore(latest, abstract, iterator)
        print(f"resumed from step {latest} in {ckpt.directory}", file=sys.stderr, flush=True)

    step_fn = state_lib.jit_train_step(
        state_lib.make_train_step(module, model_cfg, tx, schedule, accum_steps=t.grad_accum, remat=c.model.remat,
                                  dropout=stu.lora is not None and stu.lora.dropout > 0, rules=rules,
                                  loss_chunk=t.loss_chunk),
        state_sh, frozen_sh, rules.sharding(("batch", "seq"), (t.batch_size, t.seq_len)), mesh,
    )
    batch_sh = rules.sharding(("batch", "seq"), (t.batch_size, t.seq_len))
    n_train, n_frozen = lora.count(trainable), lora.count(frozen)
    writer = metrics.MetricsWriter(
        t.run_dir, steps,
        metrics.flops_per_token(n_frozen, n_train, model_cfg.num_layers, model_cfg.hidden_size, t.seq_len),
        metrics.peak_flops(t.peak_flops), t.log_every,
    )
    preempted = []
    previous = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
    step = saved = int(state.step)
    elapsed0, start = float(state.time_s), time.perf_counter()
    row = {}
    try:
        while step < steps and not _any_host(preempted):
            try:
                local = next(iterator)
            except StopIteration:
                log.warning("data ran out after %d of %d steps", step, steps)
                break
            batch = {k: jax.make_array_from_process_local_data(batch_sh, local[k], (t.batch_size, t.seq_len))
                     for k in state_lib.BATCH_KEYS}
            state, m = step_fn(state, frozen, batch)
            step += 1
            row = writer.write(step, jax.device_get(m))
            if c.checkpoint.every and step % c.checkpoint.every == 0 and step < steps:
                state = _with_time(state, elapsed0 + time.perf_counter() - start, replicated)
                ckpt.save(step, state, iterator)
                saved = step
            _fault(step)
        state = _with_time(state, elapsed0 + time.perf_counter() - start, replicated)
        if saved != step:
            ckpt.save(step, state, iterator, force=True)
        ckpt.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        writer.close()
        ckpt.close()
    if step < steps and _any_host(preempted):
        print(f"SIGTERM: saved step {step} to {ckpt.directory}; rerun the same command to resume", file=sys.stderr)
        return {"status": "preempted", "steps": step}

    if not row:  # resumed at the end: the last logged loss
        row = _last_row(os.path.join(t.run_dir, "metrics.jsonl"), step)
    params = lora.combine(state.params, frozen)
    paths = {}
    if c.export.hf or (stu.lora and c.export.peft):
        model = dataclasses.replace(stu.model, params=params)
        out = c.export.dir or os.path.join(t.run_dir, "export")
        paths = export.export(model, out, tokenizer_from=tok_dir, dtype=jnp.dtype(c.export.dtype),
                              lora_cfg=stu.lora if c.export.peft else None, base_model=c.model.path)
        if not c.export.hf:
            paths.pop("hf", None)
    totals = _global_sums(stats.real_tokens, stats.loss_tokens)
    summary = {
        "status": "complete" if step >= steps else "data_exhausted",
        "teacher": c.meta.teacher,
        "student": c.meta.student or os.path.basename(c.model.path.rstrip("/")) or f"random-{stu.model.family}",
        "method": c.method,
        "variant": c.meta.variant,
        "name": c.meta.name,
        "train_tokens": totals[0],
        "loss_tokens": totals[1],
        "train_time_s": float(state.time_s),
        "steps": step,
        "final_loss": row.get("loss"),
        "trainable_params": n_train,
        "optimizer_state_bytes": optim.state_bytes(state.opt_state),
        "packing_efficiency": stats.packing_efficiency,
        "data": stats.as_dict(),
        "export_hf": paths.get("hf"),
        "export_peft": paths.get("peft"),
        "checkpoint_dir": ckpt.directory,
    }
    if jax.process_index() == 0:
        with open(os.path.join(t.run_dir, "train_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    print(stats.summary(), file=sys.stderr)
    return summary


def _any_host(flag: list) -> bool:
    """SIGTERM seen on any host: all hosts stop at the same step (and save together)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def _with_time(state, seconds: float, sharding):
    return dataclasses.replace(state, time_s=jax.device_put(jnp.asarray(seconds, jnp.float32), sharding))


def _last_row(path: str, step: int) -> dict:
    rows = {}
    if os.path.exists(path):
        for line in open(path):
            r = json.loads(line)
            rows[r["step"]] = r
    return rows.get(step, {})


def _global_sums(*values: int) -> list[int]:
    if jax.process_count() == 1:
        return [int(v) for v in values]
    from jax.experimental import multihost_utils

    return [int(x) for x in np.sum(multihost_utils.process_allgather(np.asarray(values, np.int64)), axis=0)]


def main(config: ConfigDict) -> None:
    from absl import flags
    from absl import logging as absl_logging

    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; --verbosity=0 brings it back
        absl_logging.set_verbosity(absl_logging.WARNING)
    summary = run(config)
    if summary.get("status") == "preempted":
        sys.exit(143)


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    run_stage(main)
