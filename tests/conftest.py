import os

# 8 simulated CPU devices for sharding tests; must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# In CI a missing vLLM environment is a failure, not a skip (./setup.sh test builds .venv-vllm).
if os.environ.get("CI"):
    os.environ.setdefault("JAX_DISTILL_REQUIRE_VLLM", "1")


import pytest  # noqa: E402  (after the environment above)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as an HF folder (converted once from the registry's GGUF), or a skip."""
    import hf_tiny

    try:
        return hf_tiny.smollm2_dir()
    except FileNotFoundError as e:
        pytest.skip(f"SmolLM2 weights unavailable: {e}")
