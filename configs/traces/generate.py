"""Stage 1 (generate): `python -m jax_distill.traces.generate --config configs/traces/generate.py`.

Default: the procedural stand-in teacher on built-in arithmetic problems (runs anywhere in seconds).
Presets: `generate.py:qwen3_vllm` (Qwen3 thinking teacher via offline vLLM, run inside .venv-vllm),
`generate.py:gptoss_vllm` (gpt-oss, reasoning effort high; `gptoss_vllm,effort=low|medium` the same teacher
at a lower effort: harmony's `Reasoning:` line of the system turn, the `effort` baseline). Fields: jax_distill/traces/generate.py
default_config(); its sub-configs are documented where they are defined: problems ->
jax_distill/problems/sources.py, engine -> jax_distill/engines/__init__.py.
"""

from ml_collections import ConfigDict

from jax_distill.traces.generate import default_config


EFFORTS = ("low", "medium", "high")  # gpt-oss reasoning_effort values


def get_config(preset: str = "procedural") -> ConfigDict:
    cfg = default_config()
    preset, _, option = preset.partition(",")
    effort = option.removeprefix("effort=") if option else "high"
    if (option and not option.startswith("effort=")) or effort not in EFFORTS or (option and preset != "gptoss_vllm"):
        raise ValueError(f"preset option {option!r}: only gptoss_vllm takes one, effort=low|medium|high")
    if preset == "qwen3_vllm":
        cfg.engine.kind = "vllm"
        cfg.engine.model = "/path/to/Qwen3-teacher"
        cfg.engine.chat_template_kwargs = '{"enable_thinking": true}'
        cfg.sampling.max_tokens = 32768
    elif preset == "gptoss_vllm":
        cfg.engine.kind = "vllm"
        cfg.engine.model = "/path/to/gpt-oss-120b"
        cfg.engine.reasoning = "harmony"
        cfg.engine.chat_template_kwargs = f'{{"reasoning_effort": "{effort}"}}'
        cfg.sampling.temperature = 1.0       # gpt-oss model card defaults
        cfg.sampling.top_p = 1.0
        cfg.sampling.max_tokens = 32768
    elif preset != "procedural":
        raise ValueError(f"unknown preset {preset!r} (procedural, qwen3_vllm, gptoss_vllm)")
    return cfg
