"""Top-k mixture-of-experts feed-forward (gpt-oss): router, clamped SwiGLU, sorted grouped matmuls.

Tokens are never run through every expert: the T*k (token, expert) assignments are sorted by expert and
each expert multiplies only its contiguous group, so compute and activations scale with k, not with the
number of experts E. Two grouped matmuls do that: `jax.lax.ragged_dot` (native on TPU) and a portable
blocked one (each group padded to whole row blocks, one scanned matmul per block, custom backward).
Expert weights carry a leading `experts` axis for sharding; LoRA adapters on them carry it too and run
as two more grouped matmuls on the same rows (`layers.lora_matmul`), never as a merged [E, in, out] weight. Tests keep a dense all-experts reference
beside these (tests/test_gpt_oss.py).

Shapes: T tokens (batch and sequence flattened), D model width, E experts, k experts per token,
F expert width (the fused gate/up projection is 2F wide, gate and up interleaved as HF stores it).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jax_distill.models import layers as L

Array = jax.Array


def route(x: Array, weight, bias: Array, k: int, dropout_key: Array | None = None) -> tuple[Array, Array]:
    """Top-k on the router logits, then softmax over those k: fp32 weights [T, k], expert ids [T, k]."""
    logits = L.linear(x, weight, bias, dropout_key).astype(jnp.float32)  # [T, E]
    top, expert_ids = jax.lax.top_k(logits, k)
    return jax.nn.softmax(top, axis=-1), expert_ids


def clamped_swiglu(gate_up: Array, alpha: float, limit: float) -> Array:
    """gpt-oss activation on interleaved [..., 2F]: (clip(up) + 1) * g * sigmoid(alpha * g), g = min(gate, limit)."""
    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    gate = jnp.minimum(gate, limit)
    up = jnp.clip(up, -limit, limit)
    return (up + 1) * (gate * jax.nn.sigmoid(gate * alpha))


def experts(
    x: Array, weights: Array, expert_ids: Array, p: dict, alpha: float, limit: float, impl: str | None = None,
    keys: Callable[[str], Array | None] = lambda name: None,
) -> Array:  # fmt: skip
    """Weighted sum of each token's k experts. x [T, D], weights/expert_ids [T, k] -> [T, D].

    p holds gate_up_proj [E, D, 2F], gate_up_bias [E, 2F], down_proj [E, F, D], down_bias [E, D]; either
    projection may be LoRA-adapted (`layers.Adapted` with a [E, in, r], b [E, r, out]): each expert's
    pair runs through the same grouped matmul as its base weight (`layers.lora_matmul`), with LoRA
    dropout keyed by `keys(projection name)`.
    `impl`: "ragged" (lax.ragged_dot: native on TPU; CPU and GPU lower it to a masked dense product
    over all E groups, k times the all-experts cost) or "blocked" (groups padded to row blocks, one
    scanned matmul per block: A + E*block rows in all). Default: ragged on TPU, blocked elsewhere.
    """
    impl = impl or ("ragged" if jax.default_backend() == "tpu" else "blocked")
    if impl not in ("ragged", "blocked"):
        raise ValueError(f"unknown MoE impl {impl!r}; choose 'ragged' or 'blocked'")
    T, k = expert_ids.shape
    gate_up, down = p["gate_up_proj"], p["down_proj"]
    E = (gate_up.base if isinstance(gate_up, L.Adapted) else gate_up).shape[0]
    flat = expert_ids.reshape(-1)  # [A = T*k] assignments
    order = jnp.argsort(flat, stable=True)  # assignments grouped by expert
    sorted_experts = flat[order]
    token = order // k
    group_sizes = jnp.bincount(flat, length=E).astype(jnp.int32)  # [E]
    if impl == "ragged":
        ragged = lambda rows, w: jax.lax.ragged_dot(rows, w, group_sizes, preferred_element_type=jnp.float32)  # noqa: E731
        xs = x[token]  # [A, D]
        h = L.lora_matmul(ragged, xs, gate_up, keys("gate_up_proj"))
        h = h + p["gate_up_bias"].astype(jnp.float32)[sorted_experts]  # [A, 2F]
        a = clamped_swiglu(h, alpha, limit).astype(x.dtype)  # [A, F]
        y = L.lora_matmul(ragged, a, down, keys("down_proj"))
        y = y + p["down_bias"].astype(jnp.float32)[sorted_experts]  # [A, D]
    else:
        row, block_expert, b = _block_layout(sorted_experts, group_sizes, E)
        row_token = jnp.zeros(block_expert.shape[0] * b, jnp.int32).at[row].set(token)  # pad rows read token 0
        blocked = lambda rows, w: grouped_matmul(rows, w, block_expert)  # noqa: E731
        h = L.lora_matmul(blocked, x[row_token], gate_up, keys("gate_up_proj"))  # [R, 2F] fp32
        h = h + jnp.repeat(p["gate_up_bias"].astype(jnp.float32)[block_expert], b, axis=0)
        a = clamped_swiglu(h, alpha, limit).astype(x.dtype)
        y = L.lora_matmul(blocked, a, down, keys("down_proj"))  # [R, D]
        y = y[row] + p["down_bias"].astype(jnp.float32)[sorted_experts]  # [A, D]; pad rows never read
    y = y * weights.reshape(-1)[order][:, None]
    return jnp.zeros((T, x.shape[-1]), jnp.float32).at[token].add(y).astype(x.dtype)


def _block_layout(sorted_experts: Array, group_sizes: Array, num_experts: int, block: int = 512):
    """Rows for the blocked layout: each expert's group starts on a block boundary.

    Returns the padded row of every sorted assignment [A], the expert of every block [NB] and the
    block size; NB = ceil(A / b) + E bounds the blocks any routing can need (static shape). The block
    shrinks to the mean group size for small batches; 512 was fastest at gpt-oss-20b sizes on an H200
    (8192 tokens: 128 -> 98 ms, 256 -> 64 ms, 512 -> 48 ms forward+backward).
    """
    A = sorted_experts.shape[0]
    b = int(min(block, max(8, _next_pow2(A // num_experts))))
    blocks = (group_sizes + b - 1) // b  # [E]
    block_end = jnp.cumsum(blocks)
    group_start = jnp.cumsum(group_sizes) - group_sizes
    rank = jnp.arange(A, dtype=jnp.int32) - group_start[sorted_experts]
    row = (block_end - blocks)[sorted_experts] * b + rank
    nb = -(-A // b) + num_experts
    block_expert = jnp.minimum(jnp.searchsorted(block_end, jnp.arange(nb), side="right"), num_experts - 1)
    return row, block_expert.astype(jnp.int32), b


def _next_pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


@jax.custom_vjp
def grouped_matmul(x: Array, w: Array, block_expert: Array) -> Array:
    """x [NB*b, K] @ w[block_expert[i]] for each row block i -> fp32 [NB*b, N]; w is [E, K, N].

    One scan step per block keeps one expert's weights live at a time. The custom backward
    accumulates d/dw in place per block (plain autodiff of the scan would add a full [E, K, N] zero
    tensor at every step).
    """
    return _block_matmul(x, w, block_expert)


def _block_matmul(x, w, block_expert):
    nb = block_expert.shape[0]
    xb = x.reshape(nb, -1, x.shape[-1])  # [NB, b, K]

    def step(_, inputs):
        xi, e = inputs
        return None, jnp.dot(xi, w[e], preferred_element_type=jnp.float32)

    _, y = jax.lax.scan(step, None, (xb, block_expert))
    return y.reshape(x.shape[0], w.shape[-1])


def _grouped_matmul_fwd(x, w, block_expert):
    return _block_matmul(x, w, block_expert), (x, w, block_expert)


def _grouped_matmul_bwd(res, dy):
    x, w, block_expert = res
    dx = _block_matmul(dy.astype(x.dtype), jnp.swapaxes(w, 1, 2), block_expert).astype(x.dtype)
    nb = block_expert.shape[0]
    xb, dyb = x.reshape(nb, -1, x.shape[-1]), dy.reshape(nb, -1, dy.shape[-1])

    def step(dw, inputs):
        xi, dyi, e = inputs
        update = jnp.dot(xi.T, dyi.astype(xi.dtype), preferred_element_type=jnp.float32)
        return jax.lax.dynamic_update_index_in_dim(dw, dw[e] + update, e, 0), None

    dw, _ = jax.lax.scan(step, jnp.zeros(w.shape, jnp.float32), (xb, dyb, block_expert))
    return dx, dw.astype(w.dtype), None


grouped_matmul.defvjp(_grouped_matmul_fwd, _grouped_matmul_bwd)


def moe_mlp(
    x: Array, p: dict, num_experts_per_token: int, alpha: float, limit: float, impl: str | None = None,
    keys: Callable[[str], Array | None] = lambda name: None,
) -> Array:  # fmt: skip
    """The gpt-oss MLP on x [B, T, D]: route every token, run its experts, combine (LoRA dropout keys
    per projection name from `keys`)."""
    B, T, D = x.shape
    flat = x.reshape(B * T, D)
    weights, expert_ids = route(flat, p["router"], p["router_bias"], num_experts_per_token, keys("router"))
    return experts(flat, weights, expert_ids, p, alpha, limit, impl, keys).reshape(B, T, D)
