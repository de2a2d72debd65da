"""Top-k mixture-of-experts feed-forward (gpt-oss): router, clamped SwiGLU, sorted grouped matmuls.

Tokens are never run through every expert: the T*k (token, expert) assignments are sorted by expert and
each expert multiplies only its contiguous group (`jax.lax.ragged_dot`), so compute and activations scale
with k, not with the number of experts E. Expert weights carry a leading `experts` axis for sharding.
Tests keep a dense all-experts reference beside this (tests/test_gpt_oss.py).

Shapes: T tokens (batch and sequence flattened), D model width, E experts, k experts per token,
F expert width (the fused gate/up projection is 2F wide, gate and up interleaved as HF stores it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_distill.models import layers as L

Array = jax.Array


def route(x: Array, weight, bias: Array, k: int) -> tuple[Array, Array]:
    """Top-k on the router logits, then softmax over those k: fp32 weights [T, k], expert ids [T, k]."""
    logits = L.linear(x, weight, bias).astype(jnp.float32)  # [T, E]
    top, expert_ids = jax.lax.top_k(logits, k)
    return jax.nn.softmax(top, axis=-1), expert_ids


def clamped_swiglu(gate_up: Array, alpha: float, limit: float) -> Array:
    """gpt-oss activation on interleaved [..., 2F]: (clip(up) + 1) * g * sigmoid(alpha * g), g = min(gate, limit)."""
    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    gate = jnp.minimum(gate, limit)
    up = jnp.clip(up, -limit, limit)
    return (up + 1) * (gate * jax.nn.sigmoid(gate * alpha))


def experts(x: Array, weights: Array, expert_ids: Array, p: dict, alpha: float, limit: float) -> Array:
    """Weighted sum of each token's k experts. x [T, D], weights/expert_ids [T, k] -> [T, D].

    p holds gate_up_proj [E, D, 2F], gate_up_bias [E, 2F], down_proj [E, F, D], down_bias [E, D].
    """
    T, k = expert_ids.shape
    gate_up, down = L.weight(p["gate_up_proj"]), L.weight(p["down_proj"])
    E = gate_up.shape[0]
    flat = expert_ids.reshape(-1)  # [T*k]
    order = jnp.argsort(flat, stable=True)  # assignments grouped by expert
    sorted_experts = flat[order]
    token = order // k
    group_sizes = jnp.bincount(flat, length=E).astype(jnp.int32)  # [E]
    xs = x[token]  # [T*k, D]
    h = jax.lax.ragged_dot(xs, gate_up.astype(x.dtype), group_sizes, preferred_element_type=jnp.float32)
    h = h + p["gate_up_bias"].astype(jnp.float32)[sorted_experts]  # [T*k, 2F]
    a = clamped_swiglu(h, alpha, limit).astype(x.dtype)  # [T*k, F]
    y = jax.lax.ragged_dot(a, down.astype(x.dtype), group_sizes, preferred_element_type=jnp.float32)
    y = (y + p["down_bias"].astype(jnp.float32)[sorted_experts]) * weights.reshape(-1)[order][:, None]
    return jnp.zeros((T, x.shape[-1]), jnp.float32).at[token].add(y).astype(x.dtype)


def moe_mlp(x: Array, p: dict, num_experts_per_token: int, alpha: float, limit: float) -> Array:
    """The gpt-oss MLP on x [B, T, D]: route every token, run its experts, combine."""
    B, T, D = x.shape
    flat = x.reshape(B * T, D)
    weights, expert_ids = route(flat, p["router"], p["router_bias"], num_experts_per_token)
    return experts(flat, weights, expert_ids, p, alpha, limit).reshape(B, T, D)
