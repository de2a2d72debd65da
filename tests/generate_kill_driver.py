"""Runs the generate stage's command-line entry point and SIGKILLs itself at a known point: when it is
about to write done marker number N+1 (argv[1] = N), after that chunk's records and errors files are in
place. Started by tests/test_traces.py, so the kill-and-resume test does not depend on timing."""

import os
import signal
import sys

from jax_distill.traces import generate, store

KILL_AT = int(sys.argv.pop(1))
_atomic_write = store.atomic_write
_markers = []


def atomic_write(path: str, data: str) -> None:
    if path.endswith(store.DONE):
        if len(_markers) == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        _markers.append(path)
    _atomic_write(path, data)


store.atomic_write = atomic_write

if __name__ == "__main__":
    from jax_distill.cli import run_stage

    run_stage(generate.run, generate.default_config)
