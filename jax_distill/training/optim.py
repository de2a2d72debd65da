"""Optimisers: AdamW with warmup-then-cosine, clipping, and an 8-bit AdamW (block-quantized moments).

The paper trained with 8-bit AdamW (bitsandbytes). `scale_by_adam_8bit` keeps both moments as 8-bit codes
of a dynamic (log-spaced) quantization map with one fp32 absmax per block of 256 values along the last
axis, as bitsandbytes does: 1 byte + 4/256 bytes per moment entry instead of 4 (about 3.9x smaller).
Codes keep the parameter's shape, so they shard exactly like the parameter. Each step dequantizes,
runs the fp32 Adam update and requantizes; tensors smaller than `min_size` stay fp32 (bitsandbytes
does the same for small tensors, where the absmax overhead and the error matter most).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

BLOCK = 256


def schedule(lr: float, total_steps: int, warmup_frac: float, final_frac: float = 0.0) -> optax.Schedule:
    """Linear warmup over `warmup_frac` of the steps, then cosine down to final_frac * lr."""
    warmup = int(round(total_steps * warmup_frac))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=max(warmup, 0),
        decay_steps=max(total_steps, warmup + 1),
        end_value=lr * final_frac,
    )


# ----------------------------------------------------------------------------- 8-bit moments


def dynamic_map(signed: bool) -> np.ndarray:
    """bitsandbytes' dynamic tree quantization map (256 sorted values in [-1, 1] or [0, 1]): a sign,
    a run of exponent bits (powers of ten) and the remaining bits linear, so small values keep
    relative precision."""
    max_exp_bits, total_bits = 7, 8
    non_sign = total_bits - 1
    data: list[float] = []
    additional = 2 ** (non_sign - max_exp_bits) - 1
    for i in range(max_exp_bits):
        n = 2 ** (i + non_sign - max_exp_bits) + 1 if signed else 2 ** (i + non_sign - max_exp_bits + 1) + 1
        bounds = np.linspace(0.1, 1, n, dtype=np.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += (10 ** (-(max_exp_bits - 1) + i) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exp_bits - 1) + i)) * means).tolist()
    if additional > 0:
        bounds = np.linspace(0.1, 1, additional + 1, dtype=np.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += (10 ** (-(max_exp_bits - 1) + i) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exp_bits - 1) + i)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (256 - len(data))
    return np.sort(np.asarray(data, np.float32))


_MAPS = {True: dynamic_map(True), False: dynamic_map(False)}


class Quantized(NamedTuple):
    """A tensor as uint8 indices into a dynamic map plus one fp32 absmax per block of the last axis."""

    codes: jax.Array  # uint8, the tensor's shape
    absmax: jax.Array  # fp32, [..., ceil(last / BLOCK)] (or [ceil(size / BLOCK)] if last < BLOCK)


def _blocks(x: jax.Array) -> jax.Array:
    """[..., n_blocks, BLOCK] view: blocks run along the last axis (so they shard with it) when it is at
    least one block long, else along the flattened tensor; the tail is zero-padded."""
    flat = x.shape[-1] < BLOCK
    v = x.reshape(1, -1) if flat else x
    last = v.shape[-1]
    pad = (-last) % BLOCK
    v = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, pad)])
    v = v.reshape(*v.shape[:-1], (last + pad) // BLOCK, BLOCK)
    return v[0] if flat else v


def _unblock(v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    if shape[-1] < BLOCK:
        n = int(np.prod(shape))
        return v.reshape(-1)[:n].reshape(shape)
    return v.reshape(*shape[:-1], -1)[..., : shape[-1]]


def quantize(x: jax.Array, signed: bool) -> Quantized:
    code = jnp.asarray(_MAPS[signed])
    xb = _blocks(x.astype(jnp.float32))
    absmax = jnp.max(jnp.abs(xb), axis=-1)
    normed = xb / jnp.where(absmax == 0, 1.0, absmax)[..., None]
    mid = (code[1:] + code[:-1]) / 2  # nearest code via its midpoints
    idx = jnp.searchsorted(mid, normed).astype(jnp.uint8)
    return Quantized(_unblock(idx, x.shape), absmax)


def dequantize(q: Quantized, signed: bool) -> jax.Array:
    code = jnp.asarray(_MAPS[signed])
    vb = _blocks(code[q.codes.astype(jnp.int32)])
    return _unblock(vb * q.absmax[..., None], q.codes.shape)


class Adam8bitState(NamedTuple):
    count: jax.Array
    mu: Any  # tree of Quantized (or fp32 arrays for small tensors)
    nu: Any


def scale_by_adam_8bit(b1=0.9, b2=0.999, eps=1e-8, min_size: int = 4096) -> optax.GradientTransformation:
    """Adam's moment scaling with 8-bit block-quantized moments (drop-in for optax.scale_by_adam)."""

    def small(p) -> bool:
        return p.size < min_size

    def init(params):
        def zeros(p, signed):
            z = jnp.zeros(p.shape, jnp.float32)
            return z if small(p) else quantize(z, signed)

        return Adam8bitState(
            jnp.zeros([], jnp.int32), jax.tree.map(lambda p: zeros(p, True), params), jax.tree.map(lambda p: zeros(p, False), params)
        )

    def update(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        is_q = lambda x: isinstance(x, Quantized)

        def one(g, m, v):
            m32 = dequantize(m, True) if is_q(m) else m
            v32 = dequantize(v, False) if is_q(v) else v
            g = g.astype(jnp.float32)
            m32 = b1 * m32 + (1 - b1) * g
            v32 = b2 * v32 + (1 - b2) * g * g
            m_hat = m32 / (1 - b1 ** count.astype(jnp.float32))
            v_hat = v32 / (1 - b2 ** count.astype(jnp.float32))
            u = m_hat / (jnp.sqrt(v_hat) + eps)
            m_new = quantize(m32, True) if is_q(m) else m32
            v_new = quantize(v32, False) if is_q(v) else v32
            return u, m_new, v_new

        flat_g, treedef = jax.tree.flatten(updates)
        flat_m = treedef.flatten_up_to(state.mu)
        flat_v = treedef.flatten_up_to(state.nu)
        out = [one(g, m, v) for g, m, v in zip(flat_g, flat_m, flat_v)]
        new_updates = treedef.unflatten([o[0] for o in out])
        mu = treedef.unflatten([o[1] for o in out])
        nu = treedef.unflatten([o[2] for o in out])
        return new_updates, Adam8bitState(count, mu, nu)

    return optax.GradientTransformation(init, update)


# ----------------------------------------------------------------------------- the optimiser


def make(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """From config.optim: name (adamw | adamw_8bit), lr, warmup_frac, final_lr_frac, b1, b2, eps,
    weight_decay, clip_norm (0 = off)."""
    lr = schedule(cfg.lr, total_steps, cfg.warmup_frac, cfg.final_lr_frac)
    if cfg.name == "adamw":
        adam = optax.scale_by_adam(cfg.b1, cfg.b2, cfg.eps)
    elif cfg.name == "adamw_8bit":
        adam = scale_by_adam_8bit(cfg.b1, cfg.b2, cfg.eps, cfg.min_8bit_size)
    else:
        raise ValueError(f"config.optim.name: unknown optimizer {cfg.name!r}; choose adamw or adamw_8bit")
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts += [adam, optax.add_decayed_weights(cfg.weight_decay), optax.scale_by_learning_rate(lr)]
    return optax.chain(*parts), lr


def state_bytes(opt_state) -> int:
    """Bytes held by an optimizer state (for the 8-bit memory claim and the run summary)."""
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(opt_state))
