"""Runs the generate stage's command-line entry point and stops it at a known point: when it is about to
write done marker number N+1, after that chunk's records and errors files are in place.
  generate_driver.py kill N ...          SIGKILLs itself there
  generate_driver.py pause N DIR ...     touches DIR/paused there and waits for DIR/go, then goes on
(the remaining arguments are the stage's flags). Started by the tests, so what they check does not
depend on timing."""

import os
import signal
import sys
import time

from jax_distill.traces import generate, store

ACTION, AT = sys.argv.pop(1), int(sys.argv.pop(1))
FLAGS = sys.argv.pop(1) if ACTION == "pause" else ""
_atomic_write = store.atomic_write
_markers = []


def stop() -> None:
    if ACTION == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    open(os.path.join(FLAGS, "paused"), "w").close()
    while not os.path.exists(os.path.join(FLAGS, "go")):
        time.sleep(0.01)


def atomic_write(path: str, data: str) -> None:
    if path.endswith(store.DONE):
        if len(_markers) == AT:
            stop()
        _markers.append(path)
    _atomic_write(path, data)


store.atomic_write = atomic_write

if __name__ == "__main__":
    from jax_distill.cli import run_stage

    run_stage(generate.run, generate.default_config)
