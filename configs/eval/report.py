"""The paper's tables and plot from a grid of runs: `python -m jax_distill.report --config
configs/eval/report.py --config.runs='runs/*' --config.output_dir=report` (fields: jax_distill.report.default_config)."""

from ml_collections import ConfigDict

from jax_distill.report import default_config


def get_config() -> ConfigDict:
    return default_config()
