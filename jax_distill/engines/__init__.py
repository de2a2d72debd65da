"""Text generation backends behind one interface (engines/base.py); `make_engine(config)` builds one.

Kinds: procedural (stand-in teacher, no model), vllm (offline vllm.LLM, run inside .venv-vllm), openai
(client of a running OpenAI-compatible server, e.g. vLLM's), jax (the project's JAX sampler).
"""

from __future__ import annotations

from jax_distill.engines.base import Completion, Engine, Messages, SamplingParams, request_seed

__all__ = ["Completion", "Engine", "Messages", "SamplingParams", "request_seed", "make_engine"]


def make_engine(cfg):
    """An Engine from an `engine` sub-config (fields documented in configs/traces/generate.py)."""
    kind = cfg.kind
    if kind == "procedural":
        from jax_distill.engines.procedural import ProceduralTeacher

        return ProceduralTeacher.from_config(cfg)
    if kind == "vllm":
        from jax_distill.engines.vllm_engine import VllmEngine

        return VllmEngine.from_config(cfg)
    if kind == "openai":
        from jax_distill.engines.vllm_engine import OpenAIEngine

        return OpenAIEngine.from_config(cfg)
    if kind == "jax":
        from jax_distill.engines import jax_engine

        return jax_engine.from_config(cfg)
    raise ValueError(f"engine.kind must be procedural|vllm|openai|jax, got {kind!r}")


def default_config():
    """The `engine` sub-config shared by the generate and compress stages, every field documented."""
    from ml_collections import ConfigDict

    return ConfigDict(dict(
        kind="procedural",          # procedural | vllm | openai | jax
        model="",                   # HF folder (vllm, jax) or served model name (openai)
        tokenizer="",               # tokenizer folder ("" = the model's; procedural: "" = word counts)
        reasoning="think",          # how outputs mark reasoning: think (Qwen, R1) | harmony (gpt-oss) | none
        chat_template_kwargs="{}",  # JSON passed to the chat template, e.g. {"enable_thinking": true} (Qwen3)
                                    # or {"reasoning_effort": "high"} (gpt-oss)
        tensor_parallel_size=1,     # vllm: GPUs per model
        dtype="auto",               # vllm: weights/compute dtype
        max_model_len=0,            # vllm: context length (0 = the model's)
        gpu_memory_utilization=0.9, # vllm
        enforce_eager=False,        # vllm: True on CPU (no graph capture; much faster start)
        batch_size=256,             # requests handed to the engine at once (vllm/jax batch internally)
        base_url="",                # openai: e.g. http://host:8000/v1
        api_key_env="OPENAI_API_KEY",  # openai: environment variable holding the key ("" = none)
        request_timeout_s=600.0,    # openai: per HTTP request
        concurrency=8,              # openai: requests in flight
        procedural=dict(
            wrong_rate=0.2,         # share of samples with an uncorrected arithmetic slip
            detour_rate=0.5,        # share of samples with a corrected detour
            verbosity=1,            # 0-2: hesitations and commentary per step
            seed=0,
        ),
    ))
