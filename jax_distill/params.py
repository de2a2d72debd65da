"""The parameter declaration both the models and the sharding rules read.

It sits below both (imports nothing from the package), so `parallel` can read parameter specs without
importing the models that import `parallel`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter: its shape, its logical axis names (for sharding) and how to initialise it."""

    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    init: str = "normal"  # normal | zeros | ones
    scale: float = 0.02
    # The projection's role ("attention", "linear_attention", "mlp", "experts") where LoRA adapts it by
    # default (lora.targets ""); None: not adapted unless lora.targets names it. The family declares it.
    lora_role: str | None = None

    def __post_init__(self):
        if len(self.shape) != len(self.axes):
            raise ValueError(f"ParamSpec shape {self.shape} and axes {self.axes} differ in rank")

    def initialize(self, key: jax.Array, dtype) -> jax.Array:
        if self.init == "zeros":
            return jnp.zeros(self.shape, dtype)
        if self.init == "ones":
            return jnp.ones(self.shape, dtype)
        return (self.scale * jax.random.normal(key, self.shape, jnp.float32)).astype(dtype)
