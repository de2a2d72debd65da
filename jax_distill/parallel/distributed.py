"""Multi-host start-up (`jax.distributed.initialize()` when the environment says several hosts run) and
the few host-level agreements the train loop needs.

Every host runs the same command. JAX auto-detects TPU pods, SLURM and Open MPI; elsewhere (plain GPU
hosts, or several processes on one machine) set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and
JAX_PROCESS_ID. A single host with none of these set runs as one process without a coordinator.

A host that dies (kill -9, a lost VM) must not leave the others waiting forever in a collective: the
coordination service declares a host dead after JAX_DISTILL_HEARTBEAT_TIMEOUT_S without heartbeats and
every other host then exits with an error naming the dead task; JAX_DISTILL_INIT_TIMEOUT_S bounds the
wait for all hosts to connect at start, JAX_DISTILL_SHUTDOWN_TIMEOUT_S the wait for all to finish.
Rerunning the command on every host resumes from the last complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)

_DONE = False
# seconds; jax's own defaults (100 s heartbeat, 300 s start-up and shutdown) unless set
TIMEOUT_ENV = {
    "heartbeat_timeout_seconds": ("JAX_DISTILL_HEARTBEAT_TIMEOUT_S", 100),
    "initialization_timeout": ("JAX_DISTILL_INIT_TIMEOUT_S", 300),
    "shutdown_timeout_seconds": ("JAX_DISTILL_SHUTDOWN_TIMEOUT_S", 300),
}


def multi_host_env() -> bool:
    """True when some launcher says this is one of several processes, or names a coordinator (one
    process then runs with the distributed runtime too: its collectives, gloo on CPU, as on many)."""
    env = os.environ
    if int(env.get("JAX_NUM_PROCESSES", "1")) > 1 or env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    return bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))


def timeouts() -> dict[str, int]:
    """jax.distributed.initialize's timeout arguments from the environment (see the module docstring)."""
    out = {}
    for arg, (name, default) in TIMEOUT_ENV.items():
        raw = os.environ.get(name, str(default))
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"{name}={raw!r}: expected a whole number of seconds >= 1")
        out[arg] = int(raw)
    return out


def initialize(force: bool = False) -> tuple[int, int]:
    """Initialise the JAX distributed runtime once if launched multi-host; returns (index, count).
    Call it before anything asks jax about devices or processes (that starts a one-process backend)."""
    global _DONE
    if not _DONE and (force or multi_host_env()):
        kwargs = timeouts()
        if os.environ.get("JAX_COORDINATOR_ADDRESS"):
            missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in os.environ]
            if missing:
                raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} not")
            kwargs.update(
                coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                process_id=int(os.environ["JAX_PROCESS_ID"]),
            )
        jax.distributed.initialize(**kwargs)
        _DONE = True
        log.info("jax.distributed: process %d of %d, %d devices (%d local)", jax.process_index(),
                 jax.process_count(), jax.device_count(), jax.local_device_count())
    return jax.process_index(), jax.process_count()


def any_host(flag: bool) -> bool:
    """True when `flag` is set on any host (every host gets the same answer)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def host_min(value: int) -> int:
    """The smallest of every host's `value`."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.min(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def host0_value(value: float) -> float:
    """Host 0's `value` on every host: for numbers that must agree everywhere (a replicated array
    built from them) although each host measures its own (wall time)."""
    if jax.process_count() == 1:
        return float(value)
    from jax.experimental import multihost_utils

    return float(multihost_utils.broadcast_one_to_all(np.asarray(value, np.float32)))


def host0_json(value: Any) -> Any:
    """Host 0's `value` (anything json.dumps takes) on every host: for decisions that must agree everywhere
    (which saved parts to reuse, a random seed) although only host 0 reads the files or draws."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    blob = json.dumps(value).encode() if jax.process_index() == 0 else b""
    size = int(multihost_utils.broadcast_one_to_all(np.asarray(len(blob), np.int64)))
    data = np.zeros(size, np.uint8)
    if blob:
        data[:] = np.frombuffer(blob, np.uint8)
    return json.loads(bytes(multihost_utils.broadcast_one_to_all(data)))


def barrier(name: str) -> None:
    """Every host waits here until all arrive (a dead host ends the wait through the heartbeat)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------- this host's data


def host_shards(shards: int, batch_size: int) -> tuple[range, int]:
    """(the data shards this host reads, the number of shards): `shards` (0 = one per host) split into
    equal runs, host i taking the i-th. Each shard fills batch_size / shards rows of every batch, so the
    global batches depend on the number of shards, not of hosts."""
    hosts, index = jax.process_count(), jax.process_index()
    shards = shards or hosts
    if shards % hosts:
        raise ValueError(f"config.train.data_shards={shards} does not divide over {hosts} hosts")
    if batch_size % shards:
        raise ValueError(f"config.train.batch_size {batch_size} does not divide over {shards} data shards "
                         f"(config.train.data_shards, 0 = one per host)")
    per_host = shards // hosts
    return range(index * per_host, (index + 1) * per_host), shards


class ShardBatches:
    """Batches of several data shards side by side (rows of shard a, then of shard b...): this host's rows
    of every global batch when it reads more than one shard. Ends when any shard ends."""

    def __init__(self, datasets: dict[int, Any]):
        self.datasets = datasets  # shard index -> grain IterDataset

    def __iter__(self) -> "ShardBatchesIterator":
        return ShardBatchesIterator({s: iter(d) for s, d in self.datasets.items()})


class ShardBatchesIterator:
    """Checkpointable like a grain iterator: its state is each shard's, by shard index."""

    def __init__(self, iterators: dict[int, Any]):
        self.iterators = iterators

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self.iterators.values()]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> dict:
        return {"shards": {str(s): it.get_state() for s, it in self.iterators.items()}}

    def set_state(self, state: dict) -> None:
        saved = sorted(state.get("shards", {}), key=int) if isinstance(state, dict) else []
        if saved != [str(s) for s in self.iterators]:
            raise ValueError(f"the saved data position is of data shards {saved or 'one per host'}, this host reads "
                             f"{list(self.iterators)}: config.train.data_shards or the number of hosts changed")
        for s, it in self.iterators.items():
            it.set_state(state["shards"][str(s)])

    def start_prefetch(self) -> None:
        for it in self.iterators.values():
            it.start_prefetch()


class ShardStats:
    """The DataStats of several shards as one, summed when read (the shards' own stats change as their
    iterators advance and restore)."""

    def __init__(self, parts: list):
        self.parts = parts

    def __getattr__(self, name: str):
        return getattr(merge_stats(self.parts), name)


def merge_stats(parts: list):
    """One DataStats of shards read side by side: counts summed (by reason too; batches are side by side,
    so as many as each shard's), the first bad locations of each reason concatenated, up to as many as one
    shard keeps."""
    from jax_distill.data import pipeline

    out = pipeline.DataStats(parts[0].files)
    for p in parts:
        for f in dataclasses.fields(out):
            mine, theirs = getattr(out, f.name), getattr(p, f.name)
            if f.name == "files":
                continue
            if f.name == "batches":  # the shards' batches go out side by side: as many as each one's
                out.batches = p.batches if p is parts[0] else min(out.batches, p.batches)
            elif f.name == "first":
                for reason, where in theirs.items():
                    mine[reason] = (mine.get(reason, []) + where)[: pipeline.FIRST_FEW]
            elif isinstance(mine, dict):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0) + v
            else:
                setattr(out, f.name, mine + theirs)
    return out
