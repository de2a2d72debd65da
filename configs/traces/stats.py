"""Statistics of any trace directory: `python -m jax_distill.traces.stats --config configs/traces/stats.py
--config.path=runs/traces/raw` prints records, mean chars and student tokens per dataset and variant,
and the compression table (mean rho) when the directory holds compressed records."""

from ml_collections import ConfigDict

from jax_distill.traces.stats import default_config


def get_config() -> ConfigDict:
    return default_config()
