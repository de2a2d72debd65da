"""`python -m jax_distill.train --config configs/train/<x>.py [--config.a.b=v]`: distil traces into a student.

Wiring only: mesh -> student (born sharded, LoRA applied) -> Grain batches -> jitted step + hooks that run
every N steps (metrics, the non-finite check, orbax checkpoints, and any a caller adds) -> exports and
train_summary.json. A non-finite step stops the run before anything of it is saved (or, train.nonfinite
= skip, its update is dropped). Rerunning the same command resumes from the newest checkpoint that
restores completely (state, RNG and data position; a damaged newer one is named and set aside), bit for
bit. `run(config, hooks)` is the same in-process.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jax_distill import data as data_lib
from jax_distill import storage
from jax_distill.parallel import distributed
from jax_distill.parallel.sharding import ShardingRules, make_mesh
from jax_distill.training import builtin, checkpoint, export, lora, metrics, optim
from jax_distill.training import config as config_lib
from jax_distill.training import state as state_lib
from jax_distill.training import student as student_lib
from jax_distill.training.state import TrainState

log = logging.getLogger("jax_distill.train")  # not __name__: under python -m it is __main__, below INFO


class Hook(Protocol):
    """Runs after every `every`-th step (0 = never) with the updated state and the step's metrics."""

    every: int

    def __call__(self, step: int, state: TrainState, step_metrics: dict) -> None: ...


class Clock:
    """Training wall time summed over resumes: the restored state's time_s plus this run's time."""

    def __init__(self, state: TrainState, sharding):
        self.before, self.start, self.sharding = float(state.time_s), time.perf_counter(), sharding

    def stamp(self, state: TrainState) -> TrainState:
        seconds = distributed.host0_value(self.before + time.perf_counter() - self.start)  # one value on all hosts
        return dataclasses.replace(state, time_s=jax.device_put(jnp.asarray(seconds, jnp.float32), self.sharding))


@dataclasses.dataclass
class LogMetrics:
    """Every step: metrics.jsonl, TensorBoard and the progress line; keeps the last row for the summary."""

    writer: metrics.MetricsWriter
    every: int = 1
    last: dict = dataclasses.field(default_factory=dict)

    def __call__(self, step, state, step_metrics):
        self.last = self.writer.write(step, jax.device_get(step_metrics))


@dataclasses.dataclass
class SaveCheckpoint:
    """State + data position every checkpoint.every steps before the last; `finish` saves the step the run
    ends at (the last, or the one SIGTERM stopped at) unless it is saved already."""

    ckpt: checkpoint.Checkpointer
    data: Iterator  # the Grain iterator whose position is saved with the state
    clock: Clock
    steps: int
    every: int
    saved: int  # the newest step on storage (the resumed one at the start)

    def __call__(self, step, state, step_metrics):
        if step < self.steps:
            self.ckpt.save(step, self.clock.stamp(state), self.data)
            self.saved = step

    def finish(self, step: int, state: TrainState) -> TrainState:
        """The state with its final time, saved and committed (checkpoint.wait raises otherwise)."""
        state = self.clock.stamp(state)
        if step != self.saved:
            self.ckpt.save(step, state, self.data, force=True)
        self.ckpt.wait()
        return state


class NonFinite(RuntimeError):
    """A non-finite loss, gradient norm or update: the run stops with nothing of it saved or exported."""


@dataclasses.dataclass
class CheckFinite:
    """Every step, before the checkpoint hook: a step the train step flagged `nonfinite` raises NonFinite
    (naming the step and the last checkpoint), or in skip mode (the step dropped its update) is counted,
    raising once more than `max_skipped` were."""

    mode: str  # config.train.nonfinite: stop | skip
    max_skipped: int
    save: SaveCheckpoint  # the last checkpoint, for the message
    every: int = 1
    skipped: int = 0

    def __call__(self, step, state, step_metrics):
        m = jax.device_get(step_metrics)
        if not m["nonfinite"]:
            return
        bad = [f"{name} {m[key]}" for name, key in (("loss", "loss"), ("gradient norm", "grad_norm"))
               if not np.isfinite(m[key])]
        what = f"step {step}: non-finite {', '.join(bad) or 'updated parameters'}"
        if self.mode == "skip":
            self.skipped += 1
            log.warning("%s: update skipped (%d so far)", what, self.skipped)
            if self.skipped <= self.max_skipped:
                return
            what += f"; {self.skipped} updates skipped, more than train.max_skipped_steps={self.max_skipped}"
        last = f"step {self.save.saved} in {self.save.ckpt.directory}" if self.save.saved else "none saved yet"
        raise NonFinite(f"{what}. Stopped: nothing after the last finite checkpoint is saved or exported. "
                        f"Last finite checkpoint: {last}")


def train_loop(step_fn: Callable, state: TrainState, frozen, batches: Iterator[dict], steps: int,
               hooks: Sequence[Hook], stop: Callable[[], bool]) -> tuple[TrainState, int]:
    """Steps until `steps`, the data's end or `stop()`; each hook after every `hook.every`-th step."""
    step = int(state.step)
    while step < steps and not stop():
        batch = next(batches, None)
        if batch is None:
            log.warning("data ran out after %d of %d steps", step, steps)
            break
        state, step_metrics = step_fn(state, frozen, batch)
        step += 1
        for hook in hooks:
            if hook.every and step % hook.every == 0:
                hook(step, state, step_metrics)
    return state, step


def run(config: ConfigDict, hooks: Sequence[Hook] = ()) -> dict:
    """Train (or resume) one student; `hooks` run after the built-in ones (metrics, checkpoint). Returns the
    summary also written to <run_dir>/train_summary.json (beside train_config.json, the config it ran),
    or {"status": "preempted"} after SIGTERM."""
    config_lib.validate(config)
    distributed.initialize()  # before anything asks jax about processes or devices
    c = _derived(config)
    t = c.train
    _probe_storage(c)
    if builtin.wanted(c):  # host 0 makes the built-in data, the others read it
        builtin.prepare(c, make=jax.process_index() == 0)
    _write_config(c)
    mesh = make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    rules = ShardingRules(mesh)
    stu = student_lib.load(c.model, c.method, c.lora, rules, t.seed)
    trainable, frozen = stu.split(stu.model.params)
    tok_dir = student_lib.tokenizer_path(c.model.path, t.tokenizer)
    tokenizer = _tokenizer(tok_dir)
    shards, n_shards = distributed.host_shards(t.data_shards, t.batch_size)
    steps, rows = total_steps(c, tokenizer, shards, n_shards)
    if t.fit_rows:
        t.batch_size = fitted_rows(c, rows, n_shards, rules.shards("batch"))
    dataset, stats = _host_dataset(c.data, tokenizer, t, shards, n_shards)
    iterator = iter(dataset)
    tx, schedule = optim.make(c.optim, steps)
    state, state_sh = _initial_state(stu, trainable, tx, mesh, t.seed)
    ckpt = checkpoint.Checkpointer(c.checkpoint.dir or os.path.join(t.run_dir, "checkpoints"), c.checkpoint.every,
                                   c.checkpoint.keep, c.checkpoint.async_save)
    state = _resume(ckpt, state, state_sh, iterator)
    batch_sh = rules.sharding(("batch", "seq"), (t.batch_size, t.seq_len))
    step_fn = state_lib.jit_train_step(
        state_lib.make_train_step(stu.model.module, stu.model.config, tx, schedule, accum_steps=t.grad_accum,
                                  remat=c.model.remat, dropout=stu.lora is not None and stu.lora.dropout > 0,
                                  rules=rules, loss_chunk=t.loss_chunk, skip_nonfinite=t.nonfinite == "skip"),
        state_sh, stu.split(stu.shardings)[1], batch_sh, mesh,
    )
    writer = _metrics_writer(t, stu, trainable, frozen, steps, int(state.step))
    logged = LogMetrics(writer)
    save = SaveCheckpoint(ckpt, iterator, Clock(state, state_sh.step), steps, c.checkpoint.every, int(state.step))
    finite = CheckFinite(t.nonfinite, t.max_skipped_steps, save)
    try:
        with _sigterm() as preempted:
            state, step = train_loop(step_fn, state, frozen, _global_batches(iterator, batch_sh, t), steps,
                                     [logged, finite, save, *hooks], stop=lambda: distributed.any_host(bool(preempted)))
            state = save.finish(step, state)
    finally:
        writer.close()
        ckpt.close()
    if step < steps and distributed.any_host(bool(preempted)):
        print(f"SIGTERM: saved step {step} to {ckpt.directory}; rerun the same command to resume", file=sys.stderr)
        return {"status": "preempted", "steps": step}
    last_row = logged.last or _last_row(os.path.join(t.run_dir, "metrics.jsonl"), step)  # resumed at the end
    paths = _export(c, stu, lora.combine(state.params, frozen), tok_dir)
    summary = _summary(c, stu, state, step, steps, last_row, stats, paths, ckpt.directory, lora.count(trainable),
                       finite.skipped)
    if jax.process_index() == 0:
        with open(os.path.join(t.run_dir, "train_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    print(stats.summary(), file=sys.stderr)
    return summary


def total_steps(config: ConfigDict, tokenizer, shards: range, n_shards: int) -> tuple[int, int]:
    """(steps, rows): train.steps, or one pass over the data times data.num_epochs (the fewest batches of
    any shard); rows, under train.fit_rows, the most rows with examples in any batch of any shard over
    every epoch (each epoch has its own order, so its own groups), else 0."""
    t = config.train
    if t.steps > 0:
        return t.steps, 0
    kwargs = dict(seq_len=t.seq_len, batch_size=t.batch_size // n_shards, seed=t.seed, process_count=n_shards)
    epochs = max(config.data.num_epochs, 1) if t.fit_rows else 1
    counts = [data_lib.count_batches(config.data, tokenizer, epochs=epochs, process_index=s, **kwargs)
              for s in shards]
    n = distributed.host_min(min(n for n, _ in counts)) * (max(config.data.num_epochs, 1) // epochs)
    rows = -distributed.host_min(-max(stats.max_rows for _, stats in counts)) if t.fit_rows else 0
    return n, rows


def fitted_rows(config: ConfigDict, shard_rows: int, n_shards: int, batch_devices: int) -> int:
    """train.fit_rows: the fewest global rows per step that hold every step's examples (`shard_rows` per
    data shard), rounded up so the shards, grad_accum and the mesh's batch devices divide them, and never
    more than train.batch_size. The loss is a mean over loss tokens, so padding rows only cost compute:
    the same updates, a smaller step (what a shorter variant's training saves under budget=examples)."""
    t = config.train
    multiple = math.lcm(t.grad_accum, batch_devices)
    per_shard = multiple // math.gcd(multiple, n_shards)  # n_shards * r must divide by `multiple`
    rows = min(n_shards * -(-max(shard_rows, 1) // per_shard) * per_shard, t.batch_size)
    print(f"train.fit_rows: {rows} rows per step (of batch_size {t.batch_size}) hold every step's "
          f"{config.data.examples_per_step} examples", file=sys.stderr, flush=True)
    return rows


def _host_dataset(data: ConfigDict, tokenizer, t: ConfigDict, shards: range, n_shards: int):
    """(batches, DataStats) of this host's rows of every global batch: its data shards' side by side."""
    parts = {s: data_lib.make_dataset(data, tokenizer, seq_len=t.seq_len, batch_size=t.batch_size // n_shards,
                                      seed=t.seed, process_index=s, process_count=n_shards) for s in shards}
    if len(parts) == 1:  # the pipeline's own iterator (and checkpointed state, as one-shard runs always had)
        return parts[shards[0]]
    return (distributed.ShardBatches({s: ds for s, (ds, _) in parts.items()}),
            distributed.ShardStats([stats for _, stats in parts.values()]))


def _derived(config: ConfigDict) -> ConfigDict:
    """A copy of `config` with the run directory filled in (runs/train/<meta.name> when unset) and the
    data pipeline told how many examples each step takes (train.budget=examples; 0 = rows filled by tokens)."""
    c = copy.deepcopy(config)
    if not c.train.run_dir:
        c.train.run_dir = config_lib.run_dir(c)
        print(f"train.run_dir: {c.train.run_dir} (from meta.name)", file=sys.stderr, flush=True)
    c.data.examples_per_step = config_lib.examples_per_step(c)
    return c


def _write_config(c: ConfigDict) -> None:
    """<run_dir>/train_config.json: the whole config this run trains with (configs/from_json.py reruns it)."""
    if jax.process_index() == 0:
        os.makedirs(c.train.run_dir, exist_ok=True)
        path = os.path.join(c.train.run_dir, "train_config.json")
        with open(path + ".tmp", "w") as f:
            f.write(c.to_json_best_effort(indent=2))
        os.replace(path + ".tmp", path)


def _probe_storage(c: ConfigDict) -> None:
    """Every gs:// path the run reads or writes answers, or StorageUnreachable names it within
    JAX_DISTILL_STORAGE_TIMEOUT_S (a later failure to restore a checkpoint is then damage, not an outage)."""
    for path in (*c.data.path, c.model.path, c.train.tokenizer, c.checkpoint.dir, c.export.dir):
        storage.probe(path)


def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _initial_state(stu: student_lib.Student, trainable, tx, mesh, seed: int) -> tuple[TrainState, TrainState]:
    """Step 0's state, born sharded, and the tree of its shardings."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    train_sh = stu.split(stu.shardings)[0]
    opt_sh = state_lib.opt_state_shardings(jax.eval_shape(tx.init, trainable), train_sh, mesh)
    state_sh = TrainState(replicated, train_sh, opt_sh, replicated, replicated)

    def init(params):
        key = jax.random.key_data(jax.random.key(seed))
        return TrainState(jnp.zeros([], jnp.int32), params, tx.init(params), key, jnp.zeros([], jnp.float32))

    return jax.jit(init, out_shardings=state_sh)(trainable), state_sh


def _resume(ckpt: checkpoint.Checkpointer, state: TrainState, state_sh: TrainState, iterator) -> TrainState:
    """The newest checkpoint that restores completely (damaged newer ones set aside), the iterator moved
    to its position; else `state` with the iterator at the start."""
    if ckpt.latest_step() is None:
        return state
    start = iterator.get_state()
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh)
    found = ckpt.restore_newest(abstract, iterator)
    if found is None:
        iterator.set_state(start)
        print(f"no checkpoint in {ckpt.directory} restores (all set aside as damaged): training from step 0",
              file=sys.stderr, flush=True)
        return state
    step, state = found
    print(f"resumed from step {step} in {ckpt.directory}", file=sys.stderr, flush=True)
    return state


def _global_batches(iterator, sharding, t: ConfigDict) -> Iterator[dict]:
    """This host's batches as global arrays [batch_size, seq_len] on the mesh; they end on every host when
    one host's data ends (the others would wait for it in the step's collectives)."""
    shape = (t.batch_size, t.seq_len)
    while not distributed.any_host((local := next(iterator, None)) is None):
        yield {k: jax.make_array_from_process_local_data(sharding, local[k], shape) for k in state_lib.BATCH_KEYS}


def _metrics_writer(t: ConfigDict, stu: student_lib.Student, trainable, frozen, steps: int,
                    resumed_step: int) -> metrics.MetricsWriter:
    cfg = stu.model.config
    flops = metrics.flops_per_token(lora.count(frozen), lora.count(trainable), cfg.num_layers, cfg.hidden_size,
                                    t.seq_len)
    return metrics.MetricsWriter(t.run_dir, steps, flops, metrics.peak_flops(t.peak_flops), t.log_every, resumed_step)


@contextlib.contextmanager
def _sigterm() -> Iterator[list]:
    """A list that SIGTERM (a preemption notice) appends to while the block runs."""
    seen: list = []
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.append(True))
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)


def _export(c: ConfigDict, stu: student_lib.Student, params, tok_dir: str) -> dict[str, str]:
    """export.hf (merged) and, in LoRA mode, export.peft folders; their paths by kind."""
    if not (c.export.hf or (stu.lora and c.export.peft)):
        return {}
    model = dataclasses.replace(stu.model, params=params)
    paths = export.export(model, _absolute(c.export.dir or os.path.join(c.train.run_dir, "export")),
                          tokenizer_from=tok_dir, dtype=jnp.dtype(c.export.dtype),
                          lora_cfg=stu.lora if c.export.peft else None,
                          base_model=_absolute(c.model.path) if c.model.path else "")
    if not c.export.hf:
        paths.pop("hf", None)
    return paths


def _summary(c: ConfigDict, stu: student_lib.Student, state: TrainState, step: int, steps: int, last_row: dict,
             stats: data_lib.DataStats, paths: dict, checkpoint_dir: str, n_trainable: int, skipped: int) -> dict:
    train_tokens, loss_tokens, examples = _global_sums(stats.real_tokens, stats.loss_tokens, stats.examples)
    return {
        "status": "complete" if step >= steps else "data_exhausted",
        "teacher": c.meta.teacher,
        "student": c.meta.student or os.path.basename(c.model.path.rstrip("/")) or f"random-{stu.model.family}",
        "method": c.method,
        "variant": c.meta.variant,
        "name": c.meta.name,
        "train_tokens": train_tokens,
        "loss_tokens": loss_tokens,
        "train_time_s": float(state.time_s),
        "seed": c.train.seed,
        "data_path": [_absolute(p) for p in c.data.path],
        "steps": step,
        # the update budget (training/config.py) and what each optimizer step held, measured
        "budget": c.train.budget,
        "optimizer_steps": step,
        "examples": examples,
        "examples_per_step": examples / step if step else None,
        "rows_per_step": c.train.batch_size,  # train.fit_rows: the fewest rows holding every step's examples
        "tokens_per_step": train_tokens / step if step else None,
        "final_loss": last_row.get("loss"),
        "skipped_steps": skipped,  # train.nonfinite=skip: updates dropped in this run of the command
        "trainable_params": n_trainable,
        "params": lora.param_counts(stu.specs, lora_mode=stu.lora is not None),  # total, trainable, by role
        "optimizer_state_bytes": optim.state_bytes(state.opt_state),
        "packing_efficiency": stats.packing_efficiency,
        "data": stats.as_dict(),
        "export_hf": _absolute(paths["hf"]) if paths.get("hf") else None,
        "export_peft": _absolute(paths["peft"]) if paths.get("peft") else None,
        "checkpoint_dir": checkpoint_dir,
    }


def _absolute(path: str) -> str:
    """A local path made absolute (the summary is read from other directories); gs:// unchanged."""
    return path if "://" in str(path) else os.path.abspath(path)


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


def main(config: ConfigDict, hooks: Sequence[Hook] = ()) -> None:
    from absl import flags
    from absl import logging as absl_logging

    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; --verbosity=0 brings it back
        absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        summary = run(config, hooks)
    except (NonFinite, storage.StorageUnreachable) as e:
        print(f"FATAL {e}", file=sys.stderr)
        sys.exit(1)
    if summary.get("status") == "preempted":
        sys.exit(143)


if __name__ == "__main__":
    from jax_distill.cli import run_stage

    run_stage(main, config_lib.default_config)
