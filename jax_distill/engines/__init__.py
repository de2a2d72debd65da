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
