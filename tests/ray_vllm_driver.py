"""Runs inside .venv-vllm (started by tests/test_ray_dispatch.py): the generate stage with the vLLM CPU
engine on a local Ray cluster (one actor, which builds its own vllm.LLM from the config), then the same
config in this process without Ray; the summaries go to a JSON file for the test to compare the folders."""

import json
import os
import shutil
import sys
import tempfile


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    import ray

    from jax_distill.cli import load_config
    from jax_distill.traces import generate

    results = {}
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    try:
        ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, object_store_memory=80 * 2**20,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
        results["ray"] = generate.run(load_config(spec["config"], {**spec["overrides"], "out_dir": spec["ray_out"],
                                                                   "dispatch.kind": "ray", "dispatch.actors": 1}))
    finally:
        ray.shutdown()  # the actor and its vLLM engine are gone before this process loads its own
        shutil.rmtree(temp, ignore_errors=True)
    results["local"] = generate.run(load_config(spec["config"], {**spec["overrides"], "out_dir": spec["local_out"]}))
    with open(spec["out"], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":  # vLLM spawns workers: the guard is required
    main(sys.argv[1])
