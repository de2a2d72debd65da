"""Trace stages on a Ray cluster (traces/dispatch.py): a local Ray cluster started here (2 CPUs, a temporary
directory, shut down at the end), generate and compress on 2 CPU actors write the same records, files and
done markers as a run in this process; an actor SIGKILLed mid-run (as by the OOM killer or a lost node)
costs only its chunk, which another actor redoes: the full set, no id twice. The vLLM engine on a Ray
actor is tested in tests/test_vllm_engine.py, beside the offline run it must equal (one vLLM driver)."""

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from jax_distill import engines  # noqa: E402
from jax_distill.cli import load_config  # noqa: E402
from jax_distill.traces import compress, generate, store  # noqa: E402
from stage_folders import contents  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GEN = {"problems.synthetic.num": 400, "sampling.n": 2, "chunk_size": 24}  # 354 train problems, 15 chunks
RAY = {"dispatch.kind": "ray", "dispatch.actors": 2, "dispatch.num_cpus": 0.5}


@pytest.fixture(scope="module")
def cluster():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # DiesOnce travels to the actors by value
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    options = dict(num_cpus=2, _temp_dir=temp, include_dashboard=False, object_store_memory=80 * 2**20,
                   log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    # the raylet gives its dashboard agent (a Python process) 15 s to start: too little on a loaded 2-core host
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    try:
        ray.init(**options)
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def gen_cfg(out, **overrides):
    return load_config(str(ROOT / "configs/traces/generate.py"), {"out_dir": str(out), **GEN, **overrides})


def ids_of(out):
    ids = [r["id"] for r in store.read_records(str(out))]
    return ids, Counter(ids)


class DiesOnce:
    """The procedural teacher, but the actor process SIGKILLs itself the first time it is asked `victim`
    (a flag file makes it once per test, across actors)."""

    def __init__(self, victim: str, flag: str):
        self.inner = engines.make_engine(engines.default_config())
        self.name, self.model, self.victim, self.flag = self.inner.name, self.inner.model, victim, flag

    def generate(self, requests, params):
        if any(self.victim in m[-1]["content"] for m in requests) and not os.path.exists(self.flag):
            Path(self.flag).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.generate(requests, params)


def test_generate_and_compress_on_ray_actors_equal_a_local_run(cluster, tmp_path):
    local = generate.run(gen_cfg(tmp_path / "local"))
    remote = generate.run(gen_cfg(tmp_path / "ray", **RAY))
    assert remote["problems_in_shard"] == local["problems_in_shard"] > 300
    assert remote["this_run"]["generated"] == 2 * remote["problems_in_shard"]
    assert remote["balanced"] and remote["total"] == local["total"]
    assert contents(tmp_path / "ray") == contents(tmp_path / "local")  # same files, records, done markers
    assert not list((tmp_path / "ray").glob("*.tmp*"))

    comp = {"compressor.kind": "extractive", "chunk_size": 40}
    for name, extra in (("local", {}), ("ray", RAY)):
        compress.run(load_config(str(ROOT / "configs/traces/compress.py"),
                                 {"in_dir": str(tmp_path / name), "out_dir": str(tmp_path / f"comp_{name}"), **comp, **extra}))
    assert contents(tmp_path / "comp_ray") == contents(tmp_path / "comp_local")
    assert len(ids_of(tmp_path / "comp_ray")[0]) > 100


def test_killed_actor_costs_only_its_chunk(cluster, tmp_path, caplog):
    reference = generate.run(gen_cfg(tmp_path / "local"))
    problems = sorted(json.loads(p.read_text())["ids"][0] for p in (tmp_path / "local").glob("*.done.json"))
    victim = next(r["question"] for r in store.read_records(str(tmp_path / "local")) if r["problem_id"] == problems[5])
    engine = DiesOnce(victim, str(tmp_path / "died"))
    with caplog.at_level(logging.WARNING, logger="jax_distill.traces.dispatch"):
        summary = generate.run(gen_cfg(tmp_path / "ray", **RAY), engine=engine)
    assert (tmp_path / "died").exists()
    assert any("a Ray actor died" in r.getMessage() for r in caplog.records)
    ids, counts = ids_of(tmp_path / "ray")
    assert not [i for i, n in counts.items() if n > 1]  # no duplicates
    assert sorted(ids) == sorted(ids_of(tmp_path / "local")[0])  # the full set
    assert summary["balanced"] and summary["total"] == reference["total"]
    assert contents(tmp_path / "ray") == contents(tmp_path / "local")


def test_actor_deaths_past_the_limit_fail_the_run(cluster, tmp_path):
    class DiesAlways(DiesOnce):
        def generate(self, requests, params):
            os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(RuntimeError, match=r"2 Ray actors died \(max_actor_deaths 1\)"):
        generate.run(gen_cfg(tmp_path / "out", **{**RAY, "dispatch.actors": 1, "dispatch.max_actor_deaths": 1,
                                                        "problems.synthetic.num": 40}),
                     engine=DiesAlways("", ""))
    assert not list((tmp_path / "out").glob("*.done.json"))


def test_an_actor_the_cluster_cannot_place_fails_at_once(cluster, tmp_path):
    """A vLLM engine on a CPU-only cluster: num_gpus -1 asks for its tensor_parallel_size (1) GPU, which no
    node has; Ray would keep such an actor pending forever, the stage fails at once naming the field."""
    overrides = {**RAY, "problems.synthetic.num": 10, "engine.kind": "vllm", "engine.model": str(tmp_path)}
    with pytest.raises(RuntimeError, match=r"reserves 1 GPU \(dispatch.num_gpus = -1: the engine's tensor_parallel_size\)"
                                           r" but the Ray cluster has 0"):
        generate.run(gen_cfg(tmp_path / "out", **overrides))
