import os

# 8 simulated CPU devices for sharding tests; must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# In CI a missing vLLM environment is a failure, not a skip (./setup.sh test builds .venv-vllm).
if os.environ.get("CI"):
    os.environ.setdefault("JAX_DISTILL_REQUIRE_VLLM", "1")
