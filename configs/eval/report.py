"""The paper's tables and plot from a grid of runs: `python -m jax_distill.report --config
configs/eval/report.py --config.runs='runs/*' --config.output_dir=report` (see jax_distill/report.py)."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.runs = ""  # comma-separated globs of run directories (or of a grid root to search below)
    c.output_dir = ""  # main_table.{md,csv}, ood_table.{md,csv}, accuracy_vs_length_<student>.png, report.json
    c.baseline = "raw"  # the variant every relative column compares against
    return c
