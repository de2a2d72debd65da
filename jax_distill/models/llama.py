"""Llama 3.x (and, with q/k norms, Qwen3): a dense decoder on the shared layers.

Each layer is GQA self-attention and a SwiGLU MLP (biases where the config has them), run by the shared
decoder stack (decoder.py): one forward for training rows, prefill and one-token decode.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jax_distill.models import decoder, hf_io
from jax_distill.models import layers as L
from jax_distill.models.hf_io import HFTensor
from jax_distill.params import ParamSpec

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope: L.Rope
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    bos_token_id: int | None = None
    eos_token_id: Any = None
    max_position_embeddings: int = 8192
    architecture: str = "LlamaForCausalLM"
    model_type: str = "llama"
    dtype: str = "float32"  # compute dtype; parameters keep their own (fp32 master weights in training)

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> "Config":
        widths = decoder.widths_from_hf(hf)
        fields = dict(
            **widths,
            num_layers=hf["num_hidden_layers"],
            rope=L.Rope.from_hf(hf, widths["head_dim"]),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            attention_bias=hf.get("attention_bias", False),
            mlp_bias=hf.get("mlp_bias", False),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            max_position_embeddings=hf.get("max_position_embeddings", 8192),
            architecture=(hf.get("architectures") or [cls.architecture])[0],
            model_type=hf.get("model_type", cls.model_type),
        )
        return cls(**{**fields, **overrides})

    def to_hf(self) -> dict:
        hf = dict(
            architectures=[self.architecture],
            model_type=self.model_type,
            **decoder.hf_fields(self),
            attention_bias=self.attention_bias,
            rope_theta=self.rope.theta,
        )
        if self.model_type == "llama":
            hf["mlp_bias"] = self.mlp_bias
        scaling = dict(self.rope.scaling)
        hf["rope_parameters"] = {"rope_theta": self.rope.theta, "rope_type": "default", **scaling}
        if scaling:
            hf["rope_scaling"] = scaling
        return hf


# ----------------------------------------------------------------------------- parameters


def param_specs(cfg: Config) -> dict:
    D, F = cfg.hidden_size, cfg.intermediate_size
    layer = {
        "input_norm": ParamSpec((D,), ("norm",), "ones"),
        **decoder.attention_specs(cfg, cfg.attention_bias, cfg.qk_norm),
        "post_norm": ParamSpec((D,), ("norm",), "ones"),
        **decoder.mlp_specs(cfg),
    }
    if cfg.mlp_bias:
        layer |= {
            "gate_bias": ParamSpec((F,), ("mlp",), "zeros"),
            "up_bias": ParamSpec((F,), ("mlp",), "zeros"),
            "down_bias": ParamSpec((D,), ("embed",), "zeros"),
        }
    return decoder.stack_specs(cfg, {"layers": (layer, cfg.num_layers)})


def weight_map(cfg: Config) -> dict[tuple[str, ...], HFTensor]:
    """Our parameter path -> HF tensor; `{i}` is the layer index of stacked parameters."""
    table = {  # our name -> (HF name, transposed: HF stores a projection [out, in])
        "input_norm": ("input_layernorm.weight", False),
        "post_norm": ("post_attention_layernorm.weight", False),
        "q_norm": ("self_attn.q_norm.weight", False),
        "k_norm": ("self_attn.k_norm.weight", False),
        **{f"{p}_proj": (f"self_attn.{p}_proj.weight", True) for p in "qkvo"},
        **{f"{p}_bias": (f"self_attn.{p}_proj.bias", False) for p in "qkvo"},
        **{f"{p}_proj": (f"mlp.{p}_proj.weight", True) for p in ("gate", "up", "down")},
        **{f"{p}_bias": (f"mlp.{p}_proj.bias", False) for p in ("gate", "up", "down")},
    }
    specs = param_specs(cfg)
    out = hf_io.stack_tensors(specs)
    for name in specs["layers"]:
        key, transpose = table[name]
        out[("layers", name)] = HFTensor("model.layers.{i}." + key, transpose, layered=True)
    return out


# ----------------------------------------------------------------------------- forward


def init_cache(cfg: Config, batch: int, max_len: int, dtype=jnp.float32) -> dict:
    """Empty KV cache: one slot per position; slots with segment 0 are empty."""
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "positions": jnp.zeros((batch, max_len), jnp.int32),
        "segments": jnp.zeros((batch, max_len), jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }


def hidden_states(params, cfg, tokens, positions, segment_ids, cache=None, *, lora_key=None, remat="none"):
    """tokens/positions/segment_ids [B, T] -> final-normed hidden [B, T, D] (and the updated cache)."""
    layers = decoder.uniform_layers(decoder.self_attention, L.swiglu_mlp, params, cfg, lora_key=lora_key, remat=remat)
    return decoder.hidden_states(params, cfg, tokens, positions, segment_ids, cache, layers)


unembed = L.unembed


def forward(params, cfg, tokens, positions, segment_ids, cache=None, **kwargs) -> tuple[Array, dict | None]:
    hidden, cache = hidden_states(params, cfg, tokens, positions, segment_ids, cache, **kwargs)
    return unembed(params, cfg, hidden), cache
