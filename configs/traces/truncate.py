"""Ablation inputs (truncate): `python -m jax_distill.traces.truncate --config configs/traces/truncate.py`.

Writes length-matched truncations of the raw traces (per example, in student tokens, to the length of
the same example's compressed trace) and answer-only records into one directory. Fields:
jax_distill/traces/truncate.py default_config().
"""

from ml_collections import ConfigDict

from jax_distill.traces.truncate import default_config


def get_config() -> ConfigDict:
    return default_config()
