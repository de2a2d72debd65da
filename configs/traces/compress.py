"""Stage 2 (compress): `python -m jax_distill.traces.compress --config configs/traces/compress.py`.

Default: the extractive baseline over runs/traces/raw. Preset `compress.py:vllm` compresses with an
instruction model through offline vLLM (the paper used Llama-3.3-70B-Instruct and Ministral-3-14B);
one compressor per output directory. Fields: jax_distill/traces/compress.py default_config(); engine
fields: jax_distill/engines/__init__.py.
"""

from ml_collections import ConfigDict

from jax_distill.traces.compress import default_config


def get_config(preset: str = "extractive") -> ConfigDict:
    cfg = default_config()
    if preset == "vllm":
        cfg.out_dir = "runs/traces/compressed-llama"
        cfg.compressor.kind = "engine"
        cfg.compressor.engine.kind = "vllm"
        cfg.compressor.engine.model = "/path/to/Llama-3.3-70B-Instruct"
        cfg.compressor.engine.vllm.tensor_parallel_size = 4
    elif preset != "extractive":
        raise ValueError(f"unknown preset {preset!r} (extractive, vllm)")
    return cfg
