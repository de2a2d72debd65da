"""Rerun one stage from the config the experiment runner wrote beside its output:
`python -m jax_distill.train --config configs/from_json.py:runs/demo/runs/.../train_config.json`."""

import json

from ml_collections import ConfigDict


def get_config(path: str) -> ConfigDict:
    with open(path) as f:
        return ConfigDict(json.load(f))
