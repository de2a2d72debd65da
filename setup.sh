#!/usr/bin/env bash
# Creates .venv with jax_distill installed. `./setup.sh test` adds the test extras
# (CPU torch as parity reference, peft, the GCS emulator).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip uv
extras=""
if [ "${1:-}" = "test" ]; then
  # torch through pip first: pip takes the CPU wheel; uv would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q torch==2.13.0
  extras="[test]"
fi
.venv/bin/uv pip install -q --python .venv/bin/python -e ".${extras}"
