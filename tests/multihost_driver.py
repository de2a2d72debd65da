"""tests/train_driver.py (the train command with --fault=kill@N / pause@N hooks) plus --ids=<file>: the
record index of every example this host's data pipeline hands on, one per line, so a test sees which
records each host read.

  python tests/multihost_driver.py --config configs/train/tiny.py --ids=run/ids.0 --fault=kill@7
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_driver  # noqa: E402  (defines --fault)
from absl import flags  # noqa: E402

from jax_distill.cli import run_stage  # noqa: E402
from jax_distill.data import pipeline  # noqa: E402
from jax_distill.training.config import default_config  # noqa: E402

IDS = flags.DEFINE_string("ids", "", "append the index of every example read to this file")


def record_ids(path: str) -> None:
    """Every example stream the pipeline builds from now on writes its examples' indices to `path`."""
    out = open(path, "a", buffering=1)
    original = pipeline.example_dataset

    def note(example: dict) -> dict:
        out.write(f"{example['index']}\n")
        return example

    def recording(*args, **kwargs):
        examples, stats = original(*args, **kwargs)
        return examples.map(note), stats

    pipeline.example_dataset = recording


def main(config):
    if IDS.value:
        record_ids(IDS.value)
    train_driver.main(config)


if __name__ == "__main__":
    run_stage(main, default_config)
