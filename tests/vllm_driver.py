"""Runs inside .venv-vllm (started by tests/test_vllm_engine.py): ONE vllm.LLM instance, built from the
spec's engine config, serves every stage run the spec lists, in order (e.g. generate twice with the
same seeds, then compress); results go to a JSON file. `too_long` adds an over-long prompt beside a
short one. A run whose overrides set dispatch.kind=ray goes through a local Ray cluster started here
instead: its one actor builds its own engine from the same config, and the cluster is shut down (actor
and engine gone) before this process builds its engine, so one vLLM runs at a time. Leaves no process."""

import json
import os
import shutil
import sys
import tempfile


def on_local_ray_cluster(run):
    """run() on a Ray cluster of this host alone (1 CPU, a temporary directory), shut down after."""
    import ray

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    # the raylet gives its dashboard agent (a Python process) 15 s to start: too little on a loaded 2-core host
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    try:
        ray.init(num_cpus=1, _temp_dir=temp, include_dashboard=False, object_store_memory=80 * 2**20,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
        return run()
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    from jax_distill import engines
    from jax_distill.cli import load_config
    from jax_distill.traces import compress, generate

    stages = {"generate": (generate, spec.get("generate_config")), "compress": (compress, spec.get("compress_config"))}
    results = {}
    runs = spec["runs"]
    for name, stage, overrides in runs:
        if overrides.get("dispatch.kind") == "ray":
            module, config = stages[stage]
            results[name] = on_local_ray_cluster(lambda: module.run(load_config(config, overrides)))
    # this process's engine runs in it (no EngineCore and worker processes to spawn: ~20 s less to start);
    # the Ray actor above and the server test keep vLLM's default multiprocess engine
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    engine = engines.make_engine(load_config(spec["generate_config"], spec["engine"]).engine)
    for name, stage, overrides in runs:
        if name not in results:
            module, config = stages[stage]
            results[name] = module.run(load_config(config, overrides), engine=engine)
    if spec.get("too_long"):
        long = [{"role": "user", "content": "apples " * 3000}]  # over max_model_len: refused alone, batch goes on
        short = [{"role": "user", "content": "What is 2 + 3?"}]
        outs = engine.generate([long, short], engines.SamplingParams(n=1, max_tokens=4, seed=0))
        results["too_long"] = [[c.finish_reason, c.completion_tokens] for row in outs for c in row]
    with open(spec["out"], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":  # vLLM spawns workers: the guard is required
    main(sys.argv[1])
