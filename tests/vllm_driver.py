"""Runs inside .venv-vllm (started by tests/test_vllm_engine.py): ONE vllm.LLM instance serves the
generate stage twice (same seeds: same records) and the compress stage; results go to a JSON file."""

import json
import sys


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    from jax_distill.cli import load_config
    from jax_distill.engines.vllm_engine import VllmEngine
    from jax_distill.traces import compress, generate

    engine = VllmEngine(spec["model"], reasoning="none", dtype="float32", max_model_len=2048, enforce_eager=True,
                        gpu_memory_utilization=spec["gpu_memory_utilization"])
    results = {}
    for name in ("generate_a", "generate_b"):
        results[name] = generate.run(load_config(spec["generate_config"], spec[name]), engine=engine)
    results["compress"] = compress.run(load_config(spec["compress_config"], spec["compress"]), engine=engine)
    from jax_distill.engines import SamplingParams

    long = [{"role": "user", "content": "apples " * 3000}]  # over max_model_len: refused alone, batch goes on
    short = [{"role": "user", "content": "What is 2 + 3?"}]
    outs = engine.generate([long, short], SamplingParams(n=1, max_tokens=4, seed=0))
    results["too_long"] = [[c.finish_reason, c.completion_tokens] for row in outs for c in row]
    with open(spec["out"], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":  # vLLM spawns workers: the guard is required
    main(sys.argv[1])
