"""Multi-host start-up: `jax.distributed.initialize()` when the environment says several hosts run.

Every host runs the same command. JAX auto-detects TPU pods, SLURM and Open MPI; elsewhere (plain GPU
hosts) set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID. A single host with
none of these set runs as one process without a coordinator.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)

_DONE = False


def multi_host_env() -> bool:
    """True when some launcher says this is one of several processes."""
    env = os.environ
    if int(env.get("JAX_NUM_PROCESSES", "1")) > 1:
        return True
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    return bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(force: bool = False) -> tuple[int, int]:
    """Initialise the JAX distributed runtime once if launched multi-host; returns (index, count)."""
    global _DONE
    if not _DONE and (force or multi_host_env()):
        kwargs = {}
        if os.environ.get("JAX_COORDINATOR_ADDRESS"):
            kwargs = dict(
                coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                process_id=int(os.environ["JAX_PROCESS_ID"]),
            )
        jax.distributed.initialize(**kwargs)
        _DONE = True
        log.info("jax.distributed: process %d of %d, %d devices", jax.process_index(), jax.process_count(), jax.device_count())
    return jax.process_index(), jax.process_count()
