"""Optimiser: schedule shape, 8-bit moment quantization, 8-bit AdamW vs fp32 AdamW, memory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from jax_distill.training import optim


def _optim_cfg(name, lr=1e-2, min_size=0):
    return ConfigDict(dict(name=name, lr=lr, warmup_frac=0.1, final_lr_frac=0.0, b1=0.9, b2=0.999, eps=1e-8,
                           weight_decay=0.0, clip_norm=1.0, min_8bit_size=min_size))


def test_warmup_then_cosine():
    s = optim.schedule(1.0, 100, 0.1)
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0)
    assert float(s(55)) == pytest.approx(0.5, abs=1e-6)  # half-way through the cosine
    assert float(s(100)) == pytest.approx(0.0, abs=1e-7)
    values = [float(s(i)) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_dynamic_map_and_blockwise_quantization():
    for signed in (True, False):
        code = optim.dynamic_map(signed)
        assert code.shape == (256,) and np.all(np.diff(code) >= 0) and code[-1] == 1.0
        assert (-1.0 <= code.min() < -0.95) if signed else (code.min() == 0.0)
    x = jax.random.normal(jax.random.key(0), (3, 700)) * jnp.logspace(-4, 1, 700)  # wide dynamic range
    q = optim.quantize(x, True)
    assert q.codes.dtype == jnp.uint8 and q.codes.shape == x.shape and q.absmax.shape == (3, 3)
    back = optim.dequantize(q, True)
    blocks = np.pad(np.abs(np.asarray(x)), ((0, 0), (0, 68))).reshape(3, 3, 256).max(-1)
    err = np.abs(np.asarray(back - x)).reshape(3, -1)
    bound = np.repeat(blocks, 256, axis=1)[:, :700]
    assert np.all(err <= 0.05 * bound)  # dynamic map: worst-case step ~ 1/16 of the block absmax near 1
    small = np.abs(np.asarray(x)) < 1e-3 * bound
    assert np.median(err[small] / np.abs(np.asarray(x))[small]) < 0.1  # small values keep relative precision
    nu = jnp.abs(x) ** 2
    assert np.allclose(optim.dequantize(optim.quantize(nu, False), False), nu, rtol=0.3, atol=1e-6 * float(nu.max()))  # few codes per decade far below absmax


def _regression_run(name, steps=100):
    """A small MLP regression task, returns (losses, params)."""
    key = jax.random.key(1)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    X = jax.random.normal(k1, (256, 32))
    W_true = jax.random.normal(k2, (32, 8))
    Y = jnp.tanh(X @ W_true) + 0.1 * jax.random.normal(k1, (256, 8))  # noise: the loss plateaus near 0.01
    params = {"w1": 0.1 * jax.random.normal(k3, (32, 256)), "w2": 0.1 * jax.random.normal(k4, (256, 8))}
    tx, _ = optim.make(_optim_cfg(name), steps)
    state = tx.init(params)

    def loss_fn(p):
        return jnp.mean((jnp.tanh(X @ p["w1"]) @ p["w2"] - Y) ** 2)

    def step(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    (params, state), losses = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))((params, state))
    return np.array(losses), params, state


def test_adamw_8bit_tracks_fp32_adamw_and_is_4x_smaller():
    l32, p32, s32 = _regression_run("adamw")
    l8, p8, s8 = _regression_run("adamw_8bit")
    assert l32[-1] < 0.2 * l32[0]  # the task is actually learnt
    assert np.max(np.abs(l8 - l32) / l32) < 0.05  # the whole loss curve within 5%
    rel = np.linalg.norm(p8["w1"] - p32["w1"]) / np.linalg.norm(p32["w1"] - 0)
    assert rel < 0.05
    ratio = optim.state_bytes(s32) / optim.state_bytes(s8)
    assert 3.8 < ratio < 4.01, ratio


def test_small_tensors_stay_fp32_and_unknown_optimizer_fails():
    tx = optim.scale_by_adam_8bit(min_size=4096)
    state = tx.init({"small": jnp.zeros((8, 8)), "big": jnp.zeros((64, 128))})
    assert state.mu["small"].dtype == jnp.float32
    assert isinstance(state.mu["big"], optim.Quantized)
    with pytest.raises(ValueError, match="config.optim.name"):
        optim.make(_optim_cfg("sgd8"), 10)
