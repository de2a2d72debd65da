"""The train command with test faults as hooks: `python tests/train_driver.py --config ... --fault=pause@5
--fault=kill@9`, so fault injection lives in the tests, not in the production loop.

  kill@N   SIGKILL after step N (after its checkpoint save started): a crash with no cleanup
  pause@N  after step N, create <train.run_dir>/paused and wait until the test removes it, so the test
           acts (SIGTERM, storage outage) at a known step
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

from absl import flags

from jax_distill import train
from jax_distill.cli import run_stage
from jax_distill.training.config import default_config

FAULTS = flags.DEFINE_multi_string("fault", [], "kill@N or pause@N (repeatable)")


@dataclasses.dataclass
class Fault:
    kind: str  # kill | pause
    at: int  # the step after which it strikes
    flag: Path  # pause: exists while the run waits
    every: int = 1

    def __call__(self, step, state, step_metrics):
        if step != self.at:
            return
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        self.flag.touch()
        while self.flag.exists():
            time.sleep(0.05)


def parse(spec: str, run_dir: str) -> Fault:
    kind, _, at = spec.partition("@")
    if kind not in ("kill", "pause") or not at.isdigit():
        raise ValueError(f"--fault={spec!r}: expected kill@N or pause@N")
    return Fault(kind, int(at), Path(run_dir) / "paused")


def main(config):
    train.main(config, [parse(spec, config.train.run_dir) for spec in FAULTS.value])


if __name__ == "__main__":
    run_stage(main, default_config)
