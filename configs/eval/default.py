"""Evaluate one student: `python -m jax_distill.evaluate --config configs/eval/default.py
--config.checkpoint=runs/x/export --config.output_dir=runs/x/eval` (fields: jax_distill.evaluate.default_config)."""

from ml_collections import ConfigDict

from jax_distill.evaluate import default_config


def get_config() -> ConfigDict:
    return default_config()
