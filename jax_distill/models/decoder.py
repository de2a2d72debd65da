"""The decoder stack every family runs: token embedding, what all layers of a call share, the layers, the
final norm and the cache bookkeeping. A family supplies only its layers (and, from here, takes the
config fields, parameters and attention they have in common).

Every layer is the same pre-norm residual layer (HF's input_layernorm / post_attention_layernorm) around
the family's token mixer and MLP; layers of one kind are stacked on a leading axis and run under
`lax.scan`, so a layer kind compiles once whatever the depth. Llama and gpt-oss have one kind in one stack
(`uniform_layers`); Qwen3.5 runs its own schedule of two kinds, each run of same-kind layers a
`scan_layers`.

The cache keeps one slot per position: `index` is where this call's T tokens go, and the `positions` and
`segments` of every slot feed the one masking rule (`layers.attention_mask`), so training rows (no
cache), prefill of left-padded prompts and one-token decode run through the same code.

Shapes: B batch, T query length, S key slots (T without a cache), D model width, L layers.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jax_distill.models import layers as L
from jax_distill.parallel.sharding import constrain
from jax_distill.params import ParamSpec

Array = jax.Array
# (x, ctx, cache or None) -> (x, the cache entries the layers updated, or None without a cache)
Layers = Callable[[Array, dict, "dict | None"], "tuple[Array, dict | None]"]
# (h, p, cfg, ctx, layer_cache, keys) -> (output, updated layer cache)
Mixer = Callable[..., "tuple[Array, dict | None]"]
Mlp = Callable[[Array, dict, Callable], Array]  # (h, p, keys) -> output


# ----------------------------------------------------------------------------- config


def widths_from_hf(hf: dict) -> dict:
    """The widths every decoder config has, from HF config.json names (kv heads and head_dim defaulted as
    transformers does)."""
    heads = hf["num_attention_heads"]
    return dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
    )


def hf_fields(cfg: Any) -> dict:
    """The config.json fields every family writes alike: the widths, depth, norm, embedding and token ids."""
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
    )


# ----------------------------------------------------------------------------- parameters


def stack_specs(cfg: Any, layer_stacks: dict[str, tuple[dict, int]], norm_init: str = "ones") -> dict:
    """The parameters of the stack: token embedding, each group of stacked layers (group name -> (one
    layer's specs, how many)), final norm, and an lm_head unless the embedding is tied."""
    D = cfg.hidden_size
    specs = {
        "embed": ParamSpec((cfg.vocab_size, D), ("vocab", "embed")),
        **{group: {name: L.stacked(s, n) for name, s in layer.items()} for group, (layer, n) in layer_stacks.items()},
        "final_norm": ParamSpec((D,), ("norm",), norm_init),
    }
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = ParamSpec((D, cfg.vocab_size), ("embed", "vocab"))
    return specs


def attention_specs(cfg: Any, bias: bool, qk_norm: bool = False) -> dict:
    """One layer's parameters of `self_attention`: q/k/v/o projections (and their biases, q/k norms)."""
    D, H = cfg.hidden_size, cfg.head_dim
    NH, KH = cfg.num_heads * H, cfg.num_kv_heads * H
    specs = {
        "q_proj": ParamSpec((D, NH), ("embed", "heads"), lora_role="attention"),
        "k_proj": ParamSpec((D, KH), ("embed", "kv_heads"), lora_role="attention"),
        "v_proj": ParamSpec((D, KH), ("embed", "kv_heads"), lora_role="attention"),
        "o_proj": ParamSpec((NH, D), ("heads", "embed"), lora_role="attention"),
    }
    if bias:
        specs |= {
            "q_bias": ParamSpec((NH,), ("heads",), "zeros"),
            "k_bias": ParamSpec((KH,), ("kv_heads",), "zeros"),
            "v_bias": ParamSpec((KH,), ("kv_heads",), "zeros"),
            "o_bias": ParamSpec((D,), ("embed",), "zeros"),
        }
    if qk_norm:
        specs |= {"q_norm": ParamSpec((H,), ("norm",), "ones"), "k_norm": ParamSpec((H,), ("norm",), "ones")}
    return specs


def mlp_specs(cfg: Any) -> dict:
    """One layer's SwiGLU MLP projections (`layers.swiglu_mlp`), LoRA targets by default."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    return {
        "gate_proj": ParamSpec((D, F), ("embed", "mlp"), lora_role="mlp"),
        "up_proj": ParamSpec((D, F), ("embed", "mlp"), lora_role="mlp"),
        "down_proj": ParamSpec((F, D), ("mlp", "embed"), lora_role="mlp"),
    }


# ----------------------------------------------------------------------------- forward


def hidden_states(
    params: dict, cfg: Any, tokens: Array, positions: Array, segment_ids: Array, cache: dict | None, layers: Layers,
    *, sliding_window: int | None = None, zero_centered: bool = False,
) -> tuple[Array, dict | None]:  # fmt: skip
    """tokens/positions/segment_ids [B, T] -> final-normed hidden [B, T, D] (and the updated cache).

    `ctx`, what every layer of the call sees: `cos_sin` (RoPE angles), `mask` [B, T, S] (and
    `sliding_mask` with `sliding_window`), `index` (the cache slot of the first new token; None without
    a cache) and `segments` [B, T]. `zero_centered`: the final norm scales by 1 + w (Qwen3.5).
    """
    x = params["embed"].astype(jnp.dtype(cfg.dtype))[tokens]  # [B, T, D]
    x = constrain(x, ("batch", "seq", "embed"))
    segment_ids = segment_ids.astype(jnp.int32)
    index, k_positions, k_segments = L.key_slots(cache, positions, segment_ids)
    ctx = {
        "cos_sin": cfg.rope.cos_sin(positions),
        "mask": L.attention_mask(positions, segment_ids, k_positions, k_segments),
        "index": index,
        "segments": segment_ids,
    }
    if sliding_window is not None:
        ctx["sliding_mask"] = L.attention_mask(positions, segment_ids, k_positions, k_segments, sliding_window)
    x, updated = layers(x, ctx, cache)
    x = L.rms_norm(x, params["final_norm"], cfg.rms_norm_eps, zero_centered)
    if cache is not None:
        T = tokens.shape[1]
        cache = {**cache, **updated, "positions": k_positions, "segments": k_segments, "index": index + T}
    return x, cache


def uniform_layers(
    mixer: Mixer, mlp: Mlp, params: dict, cfg: Any, *, lora_key: Array | None, remat: str, per_layer: dict | None = None
) -> Layers:
    """The layers of a family with one layer kind: one stack `params["layers"]`, a KV cache per layer."""

    def layers(x: Array, ctx: dict, cache: dict | None) -> tuple[Array, dict | None]:
        kv = None if cache is None else {"k": cache["k"], "v": cache["v"]}
        ids = jnp.arange(cfg.num_layers)
        return scan_layers(
            mixer, mlp, x, cfg, ctx, params["layers"], kv, ids, lora_key=lora_key, remat=remat, per_layer=per_layer
        )

    return layers


def scan_layers(
    mixer: Mixer, mlp: Mlp, x: Array, cfg: Any, ctx: dict, stacked: dict, layer_caches: dict | None, layer_ids: Array,
    *, lora_key: Array | None, remat: str, per_layer: dict | None = None, zero_centered: bool = False,
) -> tuple[Array, dict | None]:  # fmt: skip
    """Run x + mixer(norm(x)), then + mlp(norm(x)), over layers stacked on axis 0 (params and caches).

    Each layer gets its own LoRA-dropout keys (from its HF index in `layer_ids`) and its slice of
    `per_layer` ([L] arrays merged into ctx, e.g. gpt-oss's sliding flag); its output is pinned to the
    activation sharding. `zero_centered`: the norms scale by 1 + w (Qwen3.5).
    """

    def layer(x, scanned):
        p, layer_cache, layer_id, own = scanned
        layer_ctx = ctx if own is None else {**ctx, **own}
        keys = L.projection_keys(lora_key, layer_id)
        h = L.rms_norm(x, p["input_norm"], cfg.rms_norm_eps, zero_centered)
        mixed, layer_cache = mixer(h, p, cfg, layer_ctx, layer_cache, keys)
        x = x + mixed
        h = L.rms_norm(x, p["post_norm"], cfg.rms_norm_eps, zero_centered)
        x = x + mlp(h, p, keys)
        return constrain(x, ("batch", "seq", "embed")), layer_cache

    return jax.lax.scan(L.remat(layer, remat), x, (stacked, layer_caches, layer_ids, per_layer))


def self_attention(
    x: Array, p: dict, cfg: Any, ctx: dict, layer_cache: dict | None, keys: Callable
) -> tuple[Array, dict | None]:
    """Grouped-query self-attention on normed x [B, T, D] (Llama, Qwen3, gpt-oss); with a cache, the new
    k/v are written at ctx["index"] first.

    Optional parts apply where the layer has their parameters: projection biases (`q_bias`...), RMSNorm
    of q and k over head_dim (`q_norm`, `k_norm`: Qwen3) and one sink logit per head (`sinks`: gpt-oss).
    """
    B, T, _ = x.shape
    q = L.linear(x, p["q_proj"], p.get("q_bias"), keys("q_proj")).reshape(B, T, cfg.num_heads, cfg.head_dim)
    k = L.linear(x, p["k_proj"], p.get("k_bias"), keys("k_proj")).reshape(B, T, cfg.num_kv_heads, cfg.head_dim)
    v = L.linear(x, p["v_proj"], p.get("v_bias"), keys("v_proj")).reshape(B, T, cfg.num_kv_heads, cfg.head_dim)
    if "q_norm" in p:
        q = L.rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
        k = L.rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    q, k = L.apply_rope(q, *ctx["cos_sin"]), L.apply_rope(k, *ctx["cos_sin"])
    if layer_cache is not None:
        k, v, layer_cache = L.cache_write(layer_cache, k, v, ctx["index"])
    out = L.dot_product_attention(q, k, v, ctx["mask"], sinks=p.get("sinks"))  # [B, T, N, H]
    out = L.linear(out.reshape(B, T, -1), p["o_proj"], p.get("o_bias"), keys("o_proj"))
    return out, layer_cache
