"""Text generation backends behind one interface (engines/base.py); `make_engine(config)` builds one.

Kinds: procedural (stand-in teacher, no model), vllm (offline vllm.LLM, run inside .venv-vllm), openai
(client of a running OpenAI-compatible server, e.g. vLLM's), jax (the project's JAX sampler).
"""

from __future__ import annotations

from jax_distill.engines.base import Completion, Engine, Messages, SamplingParams, request_seed

__all__ = ["Completion", "Engine", "Messages", "SamplingParams", "request_seed", "make_engine"]


def make_engine(cfg):
    """An Engine from an `engine` sub-config (default_config below), validated first."""
    validate({"engine": cfg})
    if cfg.kind == "procedural":
        from jax_distill.engines.procedural import ProceduralTeacher

        return ProceduralTeacher.from_config(cfg)
    if cfg.kind == "vllm":
        from jax_distill.engines.vllm_engine import VllmEngine

        return VllmEngine.from_config(cfg)
    if cfg.kind == "openai":
        from jax_distill.engines.vllm_engine import OpenAIEngine

        return OpenAIEngine.from_config(cfg)
    from jax_distill.engines import jax_engine

    return jax_engine.from_config(cfg)


KINDS = ("procedural", "vllm", "openai", "jax")


def default_config():
    """The `engine` sub-config of the generate and compress stages: what every backend shares, then one
    sub-config per backend (only the chosen kind's is read)."""
    from ml_collections import ConfigDict

    return ConfigDict(dict(
        kind="procedural",          # procedural | vllm | openai | jax
        model="",                   # HF folder (vllm, jax) or served model name (openai)
        tokenizer="",               # tokenizer folder ("" = the model's; procedural: "" = word counts)
        reasoning="think",          # how outputs mark reasoning: think (Qwen, R1) | harmony (gpt-oss) | none
        chat_template_kwargs="{}",  # JSON passed to the chat template, e.g. {"enable_thinking": true} (Qwen3)
                                    # or {"reasoning_effort": "high"} (gpt-oss)
        batch_size=256,             # requests handed to the engine at once (vllm/jax batch internally)
        vllm=dict(
            tensor_parallel_size=1,     # GPUs per model
            dtype="auto",               # weights/compute dtype
            max_model_len=0,            # context length (0 = the model's)
            gpu_memory_utilization=0.9, # on CPU: the share of host memory vLLM reserves
            enforce_eager=False,        # True on CPU (no graph capture; much faster start)
        ),
        openai=dict(
            base_url="",                # e.g. http://host:8000/v1
            api_key_env="OPENAI_API_KEY",  # environment variable holding the key ("" = none)
            request_timeout_s=600.0,    # per HTTP request
            startup_timeout_s=600.0,    # wait this long for the server to list engine.model (0 = no wait)
            concurrency=8,              # requests in flight
        ),
        jax=dict(
            dtype="auto",               # float32 | bfloat16 | float16 | auto (bfloat16 on accelerators, float32 on CPU)
            compute_dtype="",           # activations; "" = dtype
            mesh=dict(data=-1, fsdp=1, tensor=1),  # device mesh; -1 = all remaining devices
        ),
        procedural=dict(
            wrong_rate=0.2,         # share of samples with an uncorrected arithmetic slip
            detour_rate=0.5,        # share of samples with a corrected detour
            verbosity=1,            # 0-2: hesitations and commentary per step
            seed=0,
        ),
    ))


def validate(config, prefix: str = "engine") -> None:
    """Every field of the engine sub-config at `prefix` of a stage config (checks.ConfigError naming
    config.<prefix>.<field>): the shared fields and the chosen backend's sub-config."""
    from jax_distill import checks
    from jax_distill.cli import check_declared
    from jax_distill.engines.reasoning import STYLES

    cfg = checks.get(config, prefix)
    check_declared(cfg, default_config(), f"{prefix} config")
    field = lambda name: f"{prefix}.{name}"  # noqa: E731
    checks.one_of(config, field("kind"), KINDS)
    checks.one_of(config, field("reasoning"), STYLES)
    for name in ("model", "tokenizer"):
        checks.is_type(config, field(name), str)
    checks.json_object(cfg.chat_template_kwargs, field("chat_template_kwargs"))
    checks.is_type(config, field("batch_size"), int)
    checks.at_least(config, field("batch_size"), 1)
    if cfg.kind in ("vllm", "jax"):
        checks.need(bool(cfg.model), field("model"), f"must name the model folder for kind={cfg.kind}")
    if cfg.kind == "vllm":
        for name, low in (("tensor_parallel_size", 1), ("max_model_len", 0)):
            checks.is_type(config, field(f"vllm.{name}"), int)
            checks.at_least(config, field(f"vllm.{name}"), low)
        checks.positive(config, field("vllm.gpu_memory_utilization"))
        checks.in_range(config, field("vllm.gpu_memory_utilization"), 0.0, 1.0, closed=True)
        checks.is_type(config, field("vllm.enforce_eager"), bool)
    if cfg.kind == "openai":
        checks.need(bool(cfg.openai.base_url), field("openai.base_url"),
                    "is required for kind=openai (e.g. http://host:8000/v1)")
        checks.is_type(config, field("openai.api_key_env"), str)
        checks.positive(config, field("openai.request_timeout_s"))
        checks.at_least(config, field("openai.startup_timeout_s"), 0)
        checks.is_type(config, field("openai.concurrency"), int)
        checks.at_least(config, field("openai.concurrency"), 1)
    if cfg.kind == "jax":
        from jax_distill.engines.jax_engine import validate_placement

        validate_placement(config, field("jax"))
    if cfg.kind == "procedural":
        for name in ("wrong_rate", "detour_rate"):
            checks.in_range(config, field(f"procedural.{name}"), 0.0, 1.0, closed=True)
        checks.one_of(config, field("procedural.verbosity"), (0, 1, 2))
        checks.is_type(config, field("procedural.seed"), int)
