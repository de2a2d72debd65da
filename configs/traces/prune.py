"""Student-scored pruning: `python -m jax_distill.traces.prune --config configs/traces/prune.py
--config.scorer.model=<student folder>`.

Default: prune_steps at the extractive compressor's budget (each raw trace cut, step by step, to the
length of its extractive twin in the student's tokens). Preset `prune.py:tokens` prunes tokens
(TokenSkip-style); `--config.budget=ratio:0.5` keeps half of each trace instead. Fields:
jax_distill/traces/prune.py default_config(); `chat.*` must match the student's training `data.*`
template fields.
"""

from ml_collections import ConfigDict

from jax_distill.traces.prune import default_config


def get_config(preset: str = "steps") -> ConfigDict:
    cfg = default_config()
    if preset == "tokens":
        cfg.mode = "tokens"
        cfg.out_dir = "runs/traces/prune-tokens-extractive"
    elif preset != "steps":
        raise ValueError(f"unknown preset {preset!r} (steps, tokens)")
    return cfg
