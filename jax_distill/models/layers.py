"""Layers shared by every student family, as pure functions over parameter pytrees.

Shape legend used in einsum strings and trailing comments:
  B batch, T query length, S key length (cache slots), D model width, N query heads,
  K key/value heads, G query heads per kv head (N = K*G), H head dim, F MLP width, V vocab, L layers.

Parameters are plain arrays declared once with `params.ParamSpec` (shape, logical axes, initializer); a LoRA
adapter on a projection turns that leaf into `Adapted(base, lora)` and `linear` handles both.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import zlib
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from jax_distill.params import ParamSpec

Array = jax.Array
NEG_INF = -1e30  # finite, so fully masked rows (padding) give zeros instead of NaNs


# ----------------------------------------------------------------------------- parameters


def stacked(spec: ParamSpec, num_layers: int) -> ParamSpec:
    """The same parameter for every layer, stacked on a leading `layers` axis (scanned over)."""
    return dataclasses.replace(spec, shape=(num_layers, *spec.shape), axes=("layers", *spec.axes))


def init_params(specs: Any, key: Array, dtype=jnp.float32) -> Any:
    """Random parameters for a tree of ParamSpecs (tests and from-scratch students)."""
    leaves, treedef = jax.tree.flatten(specs, is_leaf=lambda x: isinstance(x, ParamSpec))
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([s.initialize(k, dtype) for s, k in zip(leaves, keys)])


# ----------------------------------------------------------------------------- LoRA-aware linear


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LoRA:
    """Low-rank update W + (alpha/r) * A @ B. Its own pytree type, so filters are isinstance checks."""

    a: Array  # [..., in, r]
    b: Array  # [..., r, out], zero at start so step 0 is the base model
    scale: float = dataclasses.field(metadata=dict(static=True), default=1.0)
    dropout: float = dataclasses.field(metadata=dict(static=True), default=0.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Adapted:
    """A frozen base weight with a LoRA adapter beside it."""

    base: Array
    lora: LoRA


def linear(x: Array, w: Array | Adapted, bias: Array | None = None, dropout_key: Array | None = None) -> Array:
    """x @ w (+ LoRA) (+ bias); w is [in, out]."""
    y = lora_matmul(lambda inputs, m: inputs @ m, x, w, dropout_key)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y


def lora_matmul(matmul: Callable[[Array, Array], Array], x: Array, w: Array | Adapted,
                dropout_key: Array | None = None) -> Array:
    """matmul(x, w) for a plain or adapted weight: base product + scale * matmul(matmul(dropout(x), a), b).

    The adapter runs on activations, never as a merged weight, so the same rule serves dense projections
    and grouped expert matmuls (moe.py: a per-expert pair a [E, in, r], b [E, r, out]). Operands are cast
    to x's dtype; the low-rank activation too, before its second product.
    """
    if not isinstance(w, Adapted):
        return matmul(x, w.astype(x.dtype))
    lora = w.lora
    y = matmul(x, w.base.astype(x.dtype))
    xa = x
    if dropout_key is not None and lora.dropout > 0.0:
        keep = jax.random.bernoulli(dropout_key, 1.0 - lora.dropout, x.shape)
        xa = jnp.where(keep, x / (1.0 - lora.dropout), 0).astype(x.dtype)
    low = matmul(xa, lora.a.astype(x.dtype)).astype(x.dtype)  # [..., r]
    return y + matmul(low, lora.b.astype(x.dtype)) * jnp.asarray(lora.scale, y.dtype)


def weight(w: Array | Adapted) -> Array:
    """The effective dense weight (LoRA merged); used by export and by non-matmul uses of a weight."""
    if isinstance(w, Adapted):
        delta = (w.lora.a.astype(jnp.float32) @ w.lora.b.astype(jnp.float32)) * w.lora.scale
        return (w.base.astype(jnp.float32) + delta).astype(w.base.dtype)
    return w


# ----------------------------------------------------------------------------- norms and MLP


def rms_norm(x: Array, w: Array, eps: float, zero_centered: bool = False) -> Array:
    """RMSNorm in fp32. `zero_centered` scales by (1 + w) as Qwen3.5 and Gemma store it."""
    dtype = x.dtype
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    scale = w.astype(jnp.float32)
    if zero_centered:
        scale = 1.0 + scale
    return (x * scale).astype(dtype)


def swiglu_mlp(x: Array, p: dict, keys: Callable[[str], Array | None] = lambda name: None) -> Array:
    """down(silu(gate(x)) * up(x)), each projection with its bias where the layer has one (mlp_bias)."""
    gate = linear(x, p["gate_proj"], p.get("gate_bias"), keys("gate_proj"))
    up = linear(x, p["up_proj"], p.get("up_bias"), keys("up_proj"))
    return linear(jax.nn.silu(gate) * up, p["down_proj"], p.get("down_bias"), keys("down_proj"))


# ----------------------------------------------------------------------------- rotary embeddings


@dataclasses.dataclass(frozen=True)
class Rope:
    """Rotary embedding settings, read from an HF config (default, llama3 and yarn scaling)."""

    theta: float
    rotary_dim: int  # leading part of head_dim that rotates (partial RoPE when < head_dim)
    scaling: tuple = ()  # sorted items of HF rope_scaling, hashable so configs stay static

    @classmethod
    def from_hf(cls, hf: dict, head_dim: int) -> "Rope":
        params = dict(hf.get("rope_parameters") or {})
        scaling = dict(hf.get("rope_scaling") or {})
        theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
        partial = hf.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))
        kind = scaling.get("rope_type", scaling.get("type", params.get("rope_type", "default")))
        if kind not in ("default", None):
            scaling = {**{k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}, **scaling}
        else:
            scaling = {}
        rotary_dim = int(head_dim * partial)
        return cls(theta=float(theta), rotary_dim=rotary_dim, scaling=tuple(sorted(scaling.items())))

    def inverse_frequencies(self) -> tuple[Array, float]:
        """Per-pair inverse frequencies and the attention scaling factor (YaRN's mscale, else 1)."""
        dim = self.rotary_dim
        inv = 1.0 / (self.theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
        s = dict(self.scaling)
        kind = s.get("rope_type", s.get("type", "default"))
        if kind == "llama3":
            factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
            old_len = s["original_max_position_embeddings"]
            wavelen = 2 * math.pi / inv
            low_wavelen, high_wavelen = old_len / low, old_len / high
            smooth = (old_len / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * inv / factor + smooth * inv
            inv = jnp.where(wavelen > low_wavelen, inv / factor, inv)
            medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
            inv = jnp.where(medium, smoothed, inv)
            return inv, 1.0
        if kind == "yarn":
            return _yarn(inv, s, self.theta, dim)
        if kind in ("default", None):
            return inv, 1.0
        if kind == "linear":
            return inv / s["factor"], 1.0
        raise ValueError(f"unsupported rope_scaling type {kind!r}")

    def cos_sin(self, positions: Array) -> tuple[Array, Array]:
        """cos, sin of shape [B, T, rotary_dim // 2] (fp32), already times the attention factor."""
        inv, factor = self.inverse_frequencies()
        angles = positions.astype(jnp.float32)[..., None] * inv
        return jnp.cos(angles) * factor, jnp.sin(angles) * factor


def _yarn(inv: Array, s: dict, theta: float, dim: int) -> tuple[Array, float]:
    factor = s["factor"]
    old_len = s["original_max_position_embeddings"]
    beta_fast, beta_slow = s.get("beta_fast", 32.0), s.get("beta_slow", 1.0)

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if s.get("attention_factor") is not None:
        attention_factor = s["attention_factor"]
    elif s.get("mscale") and s.get("mscale_all_dim"):
        attention_factor = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
    else:
        attention_factor = mscale(factor)

    def correction_dim(rotations):
        return (dim * math.log(old_len / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = jnp.clip((jnp.arange(dim // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    inv = (inv / factor) * (1 - extrapolation) + inv * extrapolation
    return inv, float(attention_factor)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate the leading rotary_dim of x [B, T, N, H] (HF's rotate_half layout); the rest passes."""
    rot = cos.shape[-1] * 2
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = jnp.split(x_rot.astype(jnp.float32), 2, axis=-1)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    rotated = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)
    return jnp.concatenate([rotated, x_pass], axis=-1) if x_pass.shape[-1] else rotated


# ----------------------------------------------------------------------------- attention


def attention_mask(
    q_positions: Array, q_segments: Array, k_positions: Array, k_segments: Array, sliding_window: int | None = None
) -> Array:
    """[B, T, S] mask: same example (segment, 0 = padding), causal by position, optional window.

    Positions restart at 0 for every packed example, so causality within a segment is a position
    comparison; the same rule serves training rows, left-padded prompts and KV-cache slots.
    """
    qp, kp = q_positions[:, :, None], k_positions[:, None, :]
    mask = (q_segments[:, :, None] == k_segments[:, None, :]) & (k_segments[:, None, :] != 0) & (kp <= qp)
    if sliding_window is not None:
        mask &= qp - kp < sliding_window
    return mask


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
_ATTENTION_IMPL: contextvars.ContextVar[str] = contextvars.ContextVar("attention_impl", default="xla")
# Above this many query x key pairs the portable path runs query block by query block, so scores never
# take [B, N, T, S] memory at once (a 16k-token row would need 16 GiB per layer in fp32).
CHUNK_ABOVE = 4096 * 4096
QUERY_BLOCK = 1024


@contextlib.contextmanager
def attention_implementation(name: str) -> Iterator[None]:
    """Select the attention kernel while tracing: "xla" (portable einsum, any device; blocked over
    queries for long rows) or "cudnn" (fused flash attention on NVIDIA GPUs; used where it applies:
    bf16/fp16, no sinks, head_dim <= 128; elsewhere the portable path runs)."""
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {name!r}; choose from {ATTENTION_IMPLEMENTATIONS}")
    token = _ATTENTION_IMPL.set(name)
    try:
        yield
    finally:
        _ATTENTION_IMPL.reset(token)


def dot_product_attention(
    q: Array, k: Array, v: Array, mask: Array, sinks: Array | None = None, query_block: int | None = None
) -> Array:
    """Grouped-query attention. q [B,T,N,H], k/v [B,S,K,H], mask [B,T,S] -> [B,T,N,H].

    Softmax in fp32. `sinks` [N] adds one learned logit per head to the normaliser (gpt-oss).
    `query_block` forces the blocked path (default: blocks of QUERY_BLOCK when T*S > CHUNK_ABOVE).
    """
    fused = (
        _ATTENTION_IMPL.get() == "cudnn"
        and sinks is None
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and q.shape[-1] <= 128
    )
    if fused:
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="cudnn")
    t, s = q.shape[1], k.shape[1]
    if query_block is None and t * s > CHUNK_ABOVE:
        query_block = QUERY_BLOCK
    if query_block is None or query_block >= t:
        return _attention(q, k, v, mask, sinks)
    return _blocked_attention(q, k, v, mask, sinks, query_block)


def _attention(q: Array, k: Array, v: Array, mask: Array, sinks: Array | None) -> Array:
    b, t, n, h = q.shape
    kh = k.shape[2]
    q = q.reshape(b, t, kh, n // kh, h)  # [B, T, K, G, H]
    scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) / math.sqrt(h)
    scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)  # [B, K, G, T, S]
    if sinks is not None:
        sink = jnp.broadcast_to(sinks.astype(jnp.float32).reshape(1, kh, n // kh, 1, 1), (*scores.shape[:-1], 1))
        probs = jax.nn.softmax(jnp.concatenate([scores, sink], axis=-1), axis=-1)[..., :-1]
    else:
        probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(mask[:, None, None, :, :], probs, 0.0)
    out = jnp.einsum("bkgts,bskh->btkgh", probs.astype(v.dtype), v)
    return out.reshape(b, t, n, h)


def _blocked_attention(q: Array, k: Array, v: Array, mask: Array, sinks: Array | None, block: int) -> Array:
    """The same attention one query block at a time (rematerialised in the backward pass): exact, with
    score memory [B, N, block, S] instead of [B, N, T, S]."""
    b, t, n, h = q.shape
    blocks = -(-t // block)
    pad = blocks * block - t
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, blocks, block, n, h).swapaxes(0, 1)
    mask = jnp.pad(mask, ((0, 0), (0, pad), (0, 0))).reshape(b, blocks, block, -1).swapaxes(0, 1)
    one_block = jax.checkpoint(lambda qm: _attention(qm[0], k, v, qm[1], sinks))
    out = jax.lax.map(one_block, (q, mask))  # [blocks, B, block, N, H]
    return out.swapaxes(0, 1).reshape(b, blocks * block, n, h)[:, :t]


# ----------------------------------------------------------------------------- KV cache and logits


def cache_write(layer_cache: dict, k: Array, v: Array, index: Array) -> tuple[Array, Array, dict]:
    """Write this call's k/v [B, T, K, H] at slot `index`; returns all slots' k, v and the new layer cache."""
    k_all = jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(layer_cache["k"].dtype), (0, index, 0, 0))
    v_all = jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(layer_cache["v"].dtype), (0, index, 0, 0))
    return k_all.astype(k.dtype), v_all.astype(v.dtype), {"k": k_all, "v": v_all}


def key_slots(cache: dict | None, positions: Array, segment_ids: Array) -> tuple[Array | None, Array, Array]:
    """(write index, positions, segments) of every key slot once this call's tokens are written.

    Without a cache the keys are the tokens themselves; with one, the tokens land at cache["index"].
    """
    if cache is None:
        return None, positions, segment_ids
    index = cache["index"]
    k_positions = jax.lax.dynamic_update_slice(cache["positions"], positions.astype(jnp.int32), (0, index))
    k_segments = jax.lax.dynamic_update_slice(cache["segments"], segment_ids.astype(jnp.int32), (0, index))
    return index, k_positions, k_segments


def unembed(params: dict, cfg: Any, hidden: Array) -> Array:
    """Hidden [B, T, D] -> fp32 logits [B, T, V] (tied embeddings or an lm_head)."""
    w = params["embed"].T if cfg.tie_word_embeddings else weight(params["lm_head"])
    return jnp.einsum("btd,dv->btv", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------- per-layer helpers


def projection_keys(key: Array | None, layer_id: Array) -> Callable[[str], Array | None]:
    """LoRA-dropout keys for one layer: one independent stream per projection name."""
    if key is None:
        return lambda name: None
    layer_key = jax.random.fold_in(key, layer_id)
    return lambda name: jax.random.fold_in(layer_key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs only
}


def remat(block: Callable, policy: str) -> Callable:
    """Wrap a scanned block in activation checkpointing by policy name."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {policy!r}; choose from {sorted(REMAT_POLICIES)}")
    if REMAT_POLICIES[policy] is None:
        return block
    return jax.checkpoint(block, policy=REMAT_POLICIES[policy], prevent_cse=False)
