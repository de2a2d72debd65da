"""Shared layers: the blocked attention path equals the one-shot reference (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_distill.models import layers as L


@pytest.mark.parametrize("sinks", [False, True])
@pytest.mark.parametrize("block", [5])  # 23 tokens: four full blocks and a padded one
def test_blocked_attention_equals_reference(sinks, block):
    B, T, N, K, H = 2, 23, 6, 2, 8
    keys = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(keys[0], (B, T, N, H))
    k = jax.random.normal(keys[1], (B, T, K, H))
    v = jax.random.normal(keys[2], (B, T, K, H))
    s = jax.random.normal(keys[3], (N,)) if sinks else None
    # two packed examples and left padding in the second row
    segments = jnp.array([[1] * 15 + [2] * 8, [0] * 5 + [1] * 18])
    positions = jnp.array([list(range(15)) + list(range(8)), [0] * 5 + list(range(18))])
    mask = L.attention_mask(positions, segments, positions, segments, sliding_window=9)

    def loss(q, k, v, query_block):
        out = L.dot_product_attention(q, k, v, mask, s, query_block=query_block)
        return jnp.sum(jnp.sin(out) * (segments > 0)[:, :, None, None]), out

    (ref_loss, ref_out), ref_grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v, None)
    (blk_loss, blk_out), blk_grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True), static_argnums=3)(q, k, v, block)
    np.testing.assert_allclose(blk_out, ref_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(blk_grads, ref_grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_long_rows_take_the_blocked_path(monkeypatch):
    """Past CHUNK_ABOVE query x key pairs the default path is blocked, and still exact."""
    monkeypatch.setattr(L, "CHUNK_ABOVE", 64)
    monkeypatch.setattr(L, "QUERY_BLOCK", 5)
    calls = []
    original = L._blocked_attention
    monkeypatch.setattr(L, "_blocked_attention", lambda *a: calls.append(a[-1]) or original(*a))
    B, T, N, H = 1, 12, 2, 4
    q = jax.random.normal(jax.random.key(1), (B, T, N, H))
    pos = jnp.arange(T)[None]
    seg = jnp.ones((B, T), jnp.int32)
    mask = L.attention_mask(pos, seg, pos, seg)
    out = L.dot_product_attention(q, q, q, mask)
    assert calls == [5]
    np.testing.assert_allclose(out, L._attention(q, q, q, mask, None), atol=1e-6)
