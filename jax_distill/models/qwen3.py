"""Qwen3 (dense): the Llama decoder with RMSNorm on q and k over head_dim."""

from __future__ import annotations

import dataclasses

from jax_distill.models import llama
from jax_distill.models.llama import forward, hidden_states, init_cache, param_specs, unembed, weight_map  # noqa: F401


@dataclasses.dataclass(frozen=True)
class Config(llama.Config):
    qk_norm: bool = True
    rms_norm_eps: float = 1e-6
    architecture: str = "Qwen3ForCausalLM"
    model_type: str = "qwen3"

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> "Config":
        return super().from_hf(hf, **{"qk_norm": True, **overrides})
