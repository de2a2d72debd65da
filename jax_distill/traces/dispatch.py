"""Where the chunks of a trace stage (generate, compress) are processed: in this process, or by a pool of
Ray actors that each hold one engine (one vLLM instance with `num_gpus` = its tensor-parallel size).

The stage's loop (store.run_chunks) is the same either way: the driver lists the unfinished chunks and
numbers them, and each chunk is processed and written (records, errors, done marker last: atomically)
by whoever processes it, into the same out_dir: a folder every host sees (NFS) or gs://. So a Ray run
writes the files a single-host run writes, and a rerun of either resumes from either. An actor that
dies (its process killed, its node lost) takes nothing with it but the chunk in flight: that chunk goes
back to the queue and a new actor replaces the dead one, up to `max_actor_deaths` times; an error the
stage itself raises in an actor fails the run as it would here. Without Ray, `--config.shard=i/n` on n
hosts splits the same work by id hash (store.in_shard).

The actors unpickle what processes a chunk (cloudpickle: the stage's config, its sampling parameters, an
`engine` handed to the stage's run()), so every node needs the same jax_distill installed (one container
image, as on KubeRay). An engine is built by each actor on its first chunk (Lazy), never in the driver.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Callable, Iterable, Iterator

from ml_collections import ConfigDict

from jax_distill import checks

log = logging.getLogger(__name__)

KINDS = ("local", "ray")


def default_config() -> ConfigDict:
    """The `dispatch` sub-config of the generate and compress stages."""
    return ConfigDict(dict(
        kind="local",  # local (this process) | ray (a pool of Ray actors, one engine each)
        # Ray cluster to join: "" = $RAY_ADDRESS when set, else a new local cluster for this run;
        # "auto" = the cluster `ray start` runs on this host; "ray://head:10001" = Ray Client
        address="",
        actors=2,  # actors in the pool (each builds the engine once)
        num_cpus=1.0,  # CPUs each actor reserves
        num_gpus=-1.0,  # GPUs each actor reserves; -1 = the engine's vllm.tensor_parallel_size (vllm), else 0
        max_actor_deaths=8,  # actors that may die (their chunk re-queued, a new actor started) before the run fails
    ))


def validate(config, prefix: str = "dispatch") -> None:
    """The dispatch sub-config at `prefix` (checks.ConfigError naming config.<prefix>.<field>)."""
    from jax_distill.cli import check_declared

    check_declared(checks.get(config, prefix), default_config(), f"{prefix} config")
    checks.one_of(config, f"{prefix}.kind", KINDS)
    checks.is_type(config, f"{prefix}.address", str)
    for name, low in (("actors", 1), ("max_actor_deaths", 0)):
        checks.is_type(config, f"{prefix}.{name}", int)
        checks.at_least(config, f"{prefix}.{name}", low)
    checks.is_type(config, f"{prefix}.num_cpus", (int, float))
    checks.positive(config, f"{prefix}.num_cpus")
    checks.is_type(config, f"{prefix}.num_gpus", (int, float))
    gpus = checks.get(config, f"{prefix}.num_gpus")
    checks.need(gpus >= 0 or gpus == -1, f"{prefix}.num_gpus", f"must be >= 0 or -1 (the engine's), got {gpus}")


def gpus_per_actor(cfg: ConfigDict, engine_cfg: ConfigDict | None) -> float:
    if cfg.num_gpus != -1:
        return float(cfg.num_gpus)
    return float(engine_cfg.vllm.tensor_parallel_size) if engine_cfg is not None and engine_cfg.kind == "vllm" else 0.0


def make(cfg: ConfigDict, engine_cfg: ConfigDict | None = None) -> Callable:
    """The `dispatch` argument of store.run_chunks for this config (`engine_cfg`: the engine the stage
    builds, which sizes num_gpus=-1)."""
    if cfg.kind == "local":
        return map
    return RayPool(cfg, gpus_per_actor(cfg, engine_cfg))


class Lazy:
    """A value built on first use, once per process; pickling ships the recipe, never the value (an
    engine holding a model is built where it runs: in each Ray actor, or here)."""

    def __init__(self, build: Callable[[], Any]):
        self.build = build
        self.value = None

    def __call__(self):
        if self.value is None:
            self.value = self.build()
        return self.value

    def __getstate__(self):
        return {"build": self.build, "value": None}


class _Worker:
    """A Ray actor: runs the stage's chunk job (process + write) with the engine it builds on first use."""

    def __init__(self, fn):
        self.fn = fn

    def run(self, job):
        return self.fn(job)


class RayPool:
    """`pool(fn, jobs)` yields fn(job) for every job, in the order they finish, from `cfg.actors` Ray
    actors; a job whose actor died is run again by a new actor."""

    def __init__(self, cfg: ConfigDict, num_gpus: float):
        self.cfg, self.num_gpus = cfg, num_gpus

    def __call__(self, fn: Callable, jobs: Iterable) -> Iterator:
        import ray

        started = not ray.is_initialized()
        if started:  # joins cfg.address (or $RAY_ADDRESS), else starts a cluster for this run alone
            ray.init(address=self.cfg.address or None, include_dashboard=False)
        actors = []
        try:
            yield from self._run(ray, fn, collections.deque(jobs), actors)
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            if started:
                ray.shutdown()

    def _run(self, ray, fn, queue: collections.deque, actors: list) -> Iterator:
        cluster = ray.cluster_resources()
        gpus_from = " = -1: the engine's tensor_parallel_size" if self.cfg.num_gpus == -1 else ""
        for resource, field, want in (("CPU", "num_cpus", self.cfg.num_cpus), ("GPU", "num_gpus" + gpus_from, self.num_gpus)):
            if want > cluster.get(resource, 0):  # such an actor would wait for its resources forever
                raise RuntimeError(f"dispatch: an actor reserves {want:g} {resource} (dispatch.{field}) but the Ray cluster "
                                   f"has {cluster.get(resource, 0):g}: set dispatch.num_cpus / num_gpus (0 GPUs on CPU "
                                   f"hosts) or add nodes first")
        worker = ray.remote(_Worker).options(num_cpus=self.cfg.num_cpus, num_gpus=self.num_gpus, max_restarts=0,
                                             max_task_retries=0)

        def new_actor():
            actors.append(worker.remote(fn))
            return actors[-1]

        idle = [new_actor() for _ in range(min(self.cfg.actors, len(queue)))]
        running: dict = {}  # the future of a job -> (actor, job)
        deaths = 0
        log.info("dispatch: %d chunk(s) on %d Ray actor(s) (num_cpus %g, num_gpus %g each)", len(queue), len(idle),
                 self.cfg.num_cpus, self.num_gpus)
        while queue or running:
            while queue and idle:
                actor, job = idle.pop(), queue.popleft()
                running[actor.run.remote(job)] = (actor, job)
            (future,), _ = ray.wait(list(running), num_returns=1)
            actor, job = running.pop(future)
            try:
                result = ray.get(future)
            except ray.exceptions.RayActorError as e:  # its process or node is gone: the chunk goes back
                if e.actor_init_failed:  # the same in every new actor: no retry
                    raise RuntimeError(f"dispatch: a Ray actor could not be created: {e}") from None
                deaths += 1
                ray.kill(actor, no_restart=True)
                actors.remove(actor)
                if deaths > self.cfg.max_actor_deaths:
                    raise RuntimeError(f"dispatch: {deaths} Ray actors died (max_actor_deaths "
                                       f"{self.cfg.max_actor_deaths}); the last: {e}") from None
                log.warning("dispatch: a Ray actor died (%s); its chunk is queued again and a new actor started "
                            "(%d of max_actor_deaths %d)", type(e).__name__, deaths, self.cfg.max_actor_deaths)
                queue.appendleft(job)
                idle.append(new_actor())
                continue
            except ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() from None  # the stage's own error, as in a local run
            idle.append(actor)
            yield result
