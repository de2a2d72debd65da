"""The vLLM venv (.venv-vllm, built by scripts/setup_vllm.sh) as the tests use it: where its python is,
the environment vLLM runs with, and one bounded run of a driver script in it. vLLM has its own venv, so
every vLLM test runs a driver there in a subprocess."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from hf_tiny import CACHE

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("JAX_DISTILL_VLLM_VENV", ROOT / ".venv-vllm")) / "bin" / "python"
VLLM_ENV = {"VLLM_CACHE_ROOT": str(CACHE / "vllm"), "VLLM_LOGGING_LEVEL": "WARNING",
            "VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB of KV cache: plenty for tiny models


def require() -> None:
    """Skip when .venv-vllm is absent, unless JAX_DISTILL_REQUIRE_VLLM is set (CI): then a missing vLLM fails."""
    if VLLM_PYTHON.exists():
        return
    if os.environ.get("JAX_DISTILL_REQUIRE_VLLM"):
        raise RuntimeError(f"JAX_DISTILL_REQUIRE_VLLM is set but {VLLM_PYTHON} does not exist: run scripts/setup_vllm.sh")
    pytest.skip(f"{VLLM_PYTHON} not found (run scripts/setup_vllm.sh; set JAX_DISTILL_REQUIRE_VLLM=1 to make this "
                "an error)", allow_module_level=True)


def run_driver(script: str, spec: dict, spec_file: Path, timeout_s: float = 900) -> None:
    """tests/<script> in .venv-vllm on `spec` (written to spec_file); its whole process group (vLLM's engine
    process, Ray's workers) is killed past timeout_s. Fails with the output's tail unless it exits 0."""
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(ROOT), **VLLM_ENV)
    proc = subprocess.Popen([str(VLLM_PYTHON), str(ROOT / "tests" / script), str(spec_file)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    assert proc.returncode == 0, out[-6000:]
