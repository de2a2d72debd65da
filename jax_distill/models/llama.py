"""Llama 3.x (and, with q/k norms, Qwen3): a dense decoder on the shared layers.

Layers are stacked on a leading axis and run under `lax.scan` (one compiled block, whatever the depth).
The same forward serves training (packed rows with segment ids), prefill and one-token decode (a KV cache
with one slot per position); see `attention_mask` for the one masking rule behind all three.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jax_distill.models import layers as L
from jax_distill.models.hf_io import HFTensor
from jax_distill.parallel.sharding import constrain
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
        head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=head_dim,
            rope=L.Rope.from_hf(hf, head_dim),
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
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            attention_bias=self.attention_bias,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope.theta,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
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
    D, F, H = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    NH, KH = cfg.num_heads * H, cfg.num_kv_heads * H
    layer = {
        "input_norm": ParamSpec((D,), ("norm",), "ones"),
        "q_proj": ParamSpec((D, NH), ("embed", "heads")),
        "k_proj": ParamSpec((D, KH), ("embed", "kv_heads")),
        "v_proj": ParamSpec((D, KH), ("embed", "kv_heads")),
        "o_proj": ParamSpec((NH, D), ("heads", "embed")),
        "post_norm": ParamSpec((D,), ("norm",), "ones"),
        "gate_proj": ParamSpec((D, F), ("embed", "mlp")),
        "up_proj": ParamSpec((D, F), ("embed", "mlp")),
        "down_proj": ParamSpec((F, D), ("mlp", "embed")),
    }
    if cfg.attention_bias:
        layer |= {
            "q_bias": ParamSpec((NH,), ("heads",), "zeros"),
            "k_bias": ParamSpec((KH,), ("kv_heads",), "zeros"),
            "v_bias": ParamSpec((KH,), ("kv_heads",), "zeros"),
            "o_bias": ParamSpec((D,), ("embed",), "zeros"),
        }
    if cfg.mlp_bias:
        layer |= {
            "gate_bias": ParamSpec((F,), ("mlp",), "zeros"),
            "up_bias": ParamSpec((F,), ("mlp",), "zeros"),
            "down_bias": ParamSpec((D,), ("embed",), "zeros"),
        }
    if cfg.qk_norm:
        layer |= {"q_norm": ParamSpec((H,), ("norm",), "ones"), "k_norm": ParamSpec((H,), ("norm",), "ones")}
    specs = {
        "embed": ParamSpec((cfg.vocab_size, D), ("vocab", "embed")),
        "layers": {name: L.stacked(s, cfg.num_layers) for name, s in layer.items()},
        "final_norm": ParamSpec((D,), ("norm",), "ones"),
    }
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = ParamSpec((D, cfg.vocab_size), ("embed", "vocab"))
    return specs


def weight_map(cfg: Config) -> dict[tuple[str, ...], HFTensor]:
    """Our parameter path -> HF tensor; `{i}` is the layer index of stacked parameters."""
    prefix = "model.layers.{i}."
    table = {
        "input_norm": "input_layernorm.weight",
        "post_norm": "post_attention_layernorm.weight",
        "q_norm": "self_attn.q_norm.weight",
        "k_norm": "self_attn.k_norm.weight",
        **{f"{p}_proj": f"self_attn.{p}_proj.weight" for p in "qkvo"},
        **{f"{p}_bias": f"self_attn.{p}_proj.bias" for p in "qkvo"},
        **{f"{p}_proj": f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")},
        **{f"{p}_bias": f"mlp.{p}_proj.bias" for p in ("gate", "up", "down")},
    }
    specs = param_specs(cfg)
    out = {
        ("embed",): HFTensor("model.embed_tokens.weight"),
        ("final_norm",): HFTensor("model.norm.weight"),
    }
    if "lm_head" in specs:
        out[("lm_head",)] = HFTensor("lm_head.weight", transpose=True)
    for name, spec in specs["layers"].items():
        out[("layers", name)] = HFTensor(prefix + table[name], transpose=len(spec.shape) == 3, layered=True)
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


def attention_block(
    x: Array,
    p: dict,
    cfg: Config,
    cos_sin: tuple[Array, Array],
    mask: Array,
    layer_cache: dict | None,
    cache_index: Array | None,
    keys,
) -> tuple[Array, dict | None]:
    """Self-attention on x [B, T, D]; with a cache, new k/v are written at cache_index first."""
    B, T, _ = x.shape
    bias = (lambda n: p.get(n)) if cfg.attention_bias else (lambda n: None)
    q = L.linear(x, p["q_proj"], bias("q_bias"), keys("q_proj")).reshape(B, T, cfg.num_heads, cfg.head_dim)
    k = L.linear(x, p["k_proj"], bias("k_bias"), keys("k_proj")).reshape(B, T, cfg.num_kv_heads, cfg.head_dim)
    v = L.linear(x, p["v_proj"], bias("v_bias"), keys("v_proj")).reshape(B, T, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
        q = L.rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
        k = L.rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    q, k = L.apply_rope(q, *cos_sin), L.apply_rope(k, *cos_sin)
    if layer_cache is not None:
        k, v, layer_cache = L.cache_write(layer_cache, k, v, cache_index)
    out = L.dot_product_attention(q, k, v, mask)  # [B, T, N, H]
    out = L.linear(out.reshape(B, T, -1), p["o_proj"], bias("o_bias"), keys("o_proj"))
    return out, layer_cache


def _mlp(x: Array, p: dict, cfg: Config, keys) -> Array:
    if not cfg.mlp_bias:
        return L.swiglu_mlp(x, p, keys)
    gate = L.linear(x, p["gate_proj"], p["gate_bias"], keys("gate_proj"))
    up = L.linear(x, p["up_proj"], p["up_bias"], keys("up_proj"))
    return L.linear(jax.nn.silu(gate) * up, p["down_proj"], p["down_bias"], keys("down_proj"))


def hidden_states(
    params: dict,
    cfg: Config,
    tokens: Array,
    positions: Array,
    segment_ids: Array,
    cache: dict | None = None,
    *,
    lora_key: Array | None = None,
    remat: str = "none",
) -> tuple[Array, dict | None]:
    """tokens/positions/segment_ids [B, T] -> final-normed hidden [B, T, D] (and the updated cache)."""
    dtype = jnp.dtype(cfg.dtype)
    x = params["embed"].astype(dtype)[tokens]  # [B, T, D]
    x = constrain(x, ("batch", "seq", "embed"))
    cos_sin = cfg.rope.cos_sin(positions)
    index, k_positions, k_segments = L.key_slots(cache, positions, segment_ids)
    mask = L.attention_mask(positions, segment_ids, k_positions, k_segments)

    def block(x, scanned):
        p, layer_cache, layer_id = scanned
        keys = L.projection_keys(lora_key, layer_id)
        h = L.rms_norm(x, p["input_norm"], cfg.rms_norm_eps)
        attn, layer_cache = attention_block(h, p, cfg, cos_sin, mask, layer_cache, index, keys)
        x = x + attn
        h = L.rms_norm(x, p["post_norm"], cfg.rms_norm_eps)
        x = x + _mlp(h, p, cfg, keys)
        return constrain(x, ("batch", "seq", "embed")), layer_cache

    layer_caches = None if cache is None else {"k": cache["k"], "v": cache["v"]}
    x, layer_caches = jax.lax.scan(
        L.remat(block, remat), x, (params["layers"], layer_caches, jnp.arange(cfg.num_layers))
    )
    x = L.rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    if cache is not None:
        T = tokens.shape[1]
        cache = {**layer_caches, "positions": k_positions, "segments": k_segments, "index": index + T}
    return x, cache


unembed = L.unembed


def forward(params, cfg, tokens, positions, segment_ids, cache=None, **kwargs) -> tuple[Array, dict | None]:
    hidden, cache = hidden_states(params, cfg, tokens, positions, segment_ids, cache, **kwargs)
    return unembed(params, cfg, hidden), cache
