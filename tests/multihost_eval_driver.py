"""The evaluate command plus --writes=<file>: every file the stage writes (storage.write_atomic, its one way
to write) noted there as "<JAX_PROCESS_ID> <path>", one per line, so a test sees which host wrote what.

  python tests/multihost_eval_driver.py --config configs/eval/default.py --writes=out/writes.txt
"""

from __future__ import annotations

import os

from absl import flags

from jax_distill import evaluate, storage
from jax_distill.cli import run_stage

WRITES = flags.DEFINE_string("writes", "", "append '<JAX_PROCESS_ID> <path>' for every file written to this file")


def main(config):
    if WRITES.value:
        out = open(WRITES.value, "a", buffering=1)
        original = storage.write_atomic

        def noted(path, data):
            out.write(f"{os.environ.get('JAX_PROCESS_ID', '0')} {path}\n")
            original(path, data)

        storage.write_atomic = noted
    evaluate.run(config)


if __name__ == "__main__":
    run_stage(main, evaluate.default_config)
