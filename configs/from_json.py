"""Rerun one stage from the config the experiment runner wrote beside its output:
`python -m jax_distill.train --config configs/from_json.py:runs/demo/runs/.../train_config.json`."""

import json

from ml_collections import ConfigDict


def _tuples(value):
    """JSON has no tuples: lists become the tuples the stage configs declare (lists are tuples there)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def get_config(path: str) -> ConfigDict:
    with open(path) as f:
        return ConfigDict(_tuples(json.load(f)))
