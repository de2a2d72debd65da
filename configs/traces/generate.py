"""Stage 1 (generate): `python -m jax_distill.traces.generate --config configs/traces/generate.py`.

Default: the procedural stand-in teacher on built-in arithmetic problems (runs anywhere in seconds).
Presets: `generate.py:qwen3_vllm` (Qwen3 thinking teacher via offline vLLM, run inside .venv-vllm),
`generate.py:gptoss_vllm` (gpt-oss, reasoning effort high). Sub-config fields are documented where they
are defined: problems -> jax_distill/problems/sources.py, engine -> jax_distill/engines/__init__.py.
"""

from ml_collections import ConfigDict

from jax_distill.engines import default_config as engine_config
from jax_distill.problems.sources import default_config as problems_config
from jax_distill.sampling_params import sampling_config


def get_config(preset: str = "procedural") -> ConfigDict:
    cfg = ConfigDict()
    cfg.out_dir = "runs/traces/raw"          # stage output directory (chunks, errors, summary.json)
    cfg.split = "train"                      # which problems get traces: train | eval | all
    cfg.problems = problems_config()
    cfg.engine = engine_config()
    cfg.sampling = sampling_config(n=4, temperature=0.6, top_p=0.95, max_tokens=4096)  # n = K samples per question
    cfg.prompt = ConfigDict(dict(
        system="",                           # optional system turn
        template="{question}\n\nPlease reason step by step, and put your final answer within \\boxed{}.",
    ))
    cfg.keep = "all_correct"                 # all_correct | first_correct | all (unverified: keep any answer)
    cfg.verify_timeout_s = 5.0               # per answer check (math-verify); timeouts count as unverified
    cfg.chunk_size = 64                      # problems per atomically written chunk (unit of resume)
    cfg.shard = "0/1"                        # "i/n": this host's share of the problems (by id hash)
    cfg.student_tokenizer = ""               # HF tokenizer folder: count trace tokens as the student sees them

    if preset == "qwen3_vllm":
        cfg.engine.kind = "vllm"
        cfg.engine.model = "/path/to/Qwen3-teacher"
        cfg.engine.chat_template_kwargs = '{"enable_thinking": true}'
        cfg.sampling.max_tokens = 32768
    elif preset == "gptoss_vllm":
        cfg.engine.kind = "vllm"
        cfg.engine.model = "/path/to/gpt-oss-120b"
        cfg.engine.reasoning = "harmony"
        cfg.engine.chat_template_kwargs = '{"reasoning_effort": "high"}'
        cfg.sampling.temperature = 1.0       # gpt-oss model card defaults
        cfg.sampling.top_p = 1.0
        cfg.sampling.max_tokens = 32768
    elif preset != "procedural":
        raise ValueError(f"unknown preset {preset!r} (procedural, qwen3_vllm, gptoss_vllm)")
    return cfg
