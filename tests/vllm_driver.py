"""Runs inside .venv-vllm (started by tests/test_vllm_engine.py): ONE vllm.LLM instance serves every
stage run the spec lists, in order (e.g. generate twice with the same seeds, then compress); results
go to a JSON file. `too_long` adds an over-long prompt beside a short one."""

import json
import sys


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    from jax_distill.cli import load_config
    from jax_distill.engines.vllm_engine import VllmEngine
    from jax_distill.traces import compress, generate

    engine = VllmEngine(spec["model"], reasoning="none", dtype=spec.get("dtype", "float32"),
                        max_model_len=spec.get("max_model_len", 2048), enforce_eager=True,
                        gpu_memory_utilization=spec["gpu_memory_utilization"])
    stages = {"generate": (generate, spec.get("generate_config")), "compress": (compress, spec.get("compress_config"))}
    results = {}
    for name, stage, overrides in spec["runs"]:
        module, config = stages[stage]
        results[name] = module.run(load_config(config, overrides), engine=engine)
    if spec.get("too_long"):
        from jax_distill.engines import SamplingParams

        long = [{"role": "user", "content": "apples " * 3000}]  # over max_model_len: refused alone, batch goes on
        short = [{"role": "user", "content": "What is 2 + 3?"}]
        outs = engine.generate([long, short], SamplingParams(n=1, max_tokens=4, seed=0))
        results["too_long"] = [[c.finish_reason, c.completion_tokens] for row in outs for c in row]
    with open(spec["out"], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":  # vLLM spawns workers: the guard is required
    main(sys.argv[1])
