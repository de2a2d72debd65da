"""Gated delta rule (Gated DeltaNet, as in Qwen3.5) in two forms with one maths, plus its causal conv.

Per head, with state S [Dk, Dv] (fp32) and per-token decay g <= 0 (log space), rate beta in (0, 1):
    S_t = exp(g_t) S_{t-1}
    S_t = S_t + k_t (beta_t (v_t - S_t^T k_t))^T        (delta rule: write only what S cannot predict)
    o_t = S_t^T q_t
`recurrent_gated_delta_rule` runs this token by token (the decode step, and the naive reference);
`chunk_gated_delta_rule` runs it chunk by chunk (training and prefill): inside a chunk the updates are
condensed with a unit-lower-triangular solve (the "UT transform"), and a `lax.scan` over chunks carries S,
so memory grows with the chunk size, not with the sequence. Both are differentiable.

Packed rows and padding. Every token carries a *run id*: consecutive tokens of the same segment share a
run, a segment change starts a new one (`segment_runs`). State and conv taps never cross a run boundary:
at the first token of a run the carried state counts as zero, and the conv ignores taps from other runs.
The caller also zeroes padding tokens' inputs (segment 0), as transformers does
(`apply_mask_to_padding_states`); for left- or right-padded rows that gives exactly transformers'
outputs on real tokens, and for packed rows it gives each example the result it has alone.

Shapes: B batch, T tokens, N value heads (q/k already repeated to N), Dk/Dv key/value head dims,
C conv channels, W conv width, Q chunk length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
PRECISION = jax.lax.Precision.HIGHEST  # the state is an fp32 accumulator: no bf16 passes on TPU/GPU


def l2norm(x: Array, eps: float = 1e-6) -> Array:
    """x / sqrt(sum x^2 + eps) over the last axis (FLA's and transformers' form)."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def segment_runs(history_segments: Array, segments: Array) -> Array:
    """Run ids [B, W-1+T] over the conv history's segments [B, W-1] then the new tokens' [B, T].

    A run is a maximal stretch of equal segment ids; ids count up from 0 along the row.
    """
    full = jnp.concatenate([history_segments, segments], axis=1).astype(jnp.int32)
    starts = (full[:, 1:] != full[:, :-1]).astype(jnp.int32)
    return jnp.concatenate([jnp.zeros_like(full[:, :1]), jnp.cumsum(starts, axis=1)], axis=1)


def causal_conv(x: Array, w: Array, history: Array, runs: Array) -> tuple[Array, Array]:
    """Depthwise causal conv + silu within runs. x [B,T,C], w [W,C], history [B,W-1,C], runs [B,W-1+T].

    Returns (y [B,T,C], new history = the last W-1 inputs). Tap j of output t reads input t-(W-1)+j,
    as torch's conv1d with left padding W-1 (transformers' `causal_conv1d_fn`/`_update`).
    """
    W = w.shape[0]
    T = x.shape[1]
    full = jnp.concatenate([history.astype(x.dtype), x], axis=1)  # [B, W-1+T, C]
    own = runs[:, W - 1 :]  # [B, T]
    y = jnp.zeros(x.shape, jnp.float32)
    for j in range(W):
        same = (runs[:, j : j + T] == own)[..., None]
        y = y + jnp.where(same, full[:, j : j + T].astype(jnp.float32), 0.0) * w[j].astype(jnp.float32)
    return jax.nn.silu(y).astype(x.dtype), full[:, T:]


def recurrent_gated_delta_rule(
    q: Array, k: Array, v: Array, g: Array, beta: Array, runs: Array, state: Array, state_run: Array
) -> tuple[Array, Array]:
    """Token-by-token gated delta rule. q,k [B,T,N,Dk], v [B,T,N,Dv], g/beta [B,T,N], runs [B,T],
    state [B,N,Dk,Dv] (belongs to run `state_run` [B]) -> (o [B,T,N,Dv] fp32, final state fp32)."""
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731

    def step(carry, xs):
        S, prev = carry
        qt, kt, vt, gt, bt, rt = xs  # [B,N,Dk], [B,N,Dk], [B,N,Dv], [B,N], [B,N], [B]
        keep = jnp.where((rt == prev)[:, None], jnp.exp(gt), 0.0)  # [B, N]
        S = S * keep[..., None, None]
        predicted = jnp.einsum("bnk,bnkv->bnv", kt, S, precision=PRECISION)
        S = S + kt[..., :, None] * ((vt - predicted) * bt[..., None])[..., None, :]
        return (S, rt), jnp.einsum("bnk,bnkv->bnv", qt, S, precision=PRECISION)

    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (f32(q), f32(k), f32(v), f32(g), f32(beta), runs))  # time first
    (state, _), out = jax.lax.scan(step, (f32(state), state_run), xs)
    return jnp.moveaxis(out, 0, 1), state


def chunk_gated_delta_rule(
    q: Array,
    k: Array,
    v: Array,
    g: Array,
    beta: Array,
    runs: Array,
    state: Array,
    state_run: Array,
    chunk_size: int = 64,
) -> tuple[Array, Array]:
    """The same maths as `recurrent_gated_delta_rule`, a chunk of `chunk_size` tokens at a time.

    The tail is padded to a whole chunk with k = v = beta = 0, g = 0 and the last run id, which leaves
    the state untouched (transformers pads the same way).
    """
    B, T, N, Dk = q.shape
    Dv = v.shape[-1]
    Q = chunk_size
    pad = (-T) % Q
    nc = (T + pad) // Q
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731

    def chunks(a, edge=False):
        widths = [(0, 0)] * a.ndim
        widths[1] = (0, pad)
        a = jnp.pad(a, widths, mode="edge" if edge else "constant") if pad else a
        return jnp.moveaxis(a.reshape(B, nc, Q, *a.shape[2:]), 1, 0)  # [nc, B, Q, ...]

    xs = (chunks(f32(q)), chunks(f32(k)), chunks(f32(v)), chunks(f32(g)), chunks(f32(beta)), chunks(runs, edge=True))
    causal = jnp.tril(jnp.ones((Q, Q), bool))  # [i, j]: j <= i
    strict = jnp.tril(jnp.ones((Q, Q), bool), -1)

    def body(carry, xs):
        S, prev = carry  # [B,N,Dk,Dv], [B]
        qc, kc, vc, gc, bc, rc = xs  # [B,Q,N,Dk] [B,Q,N,Dk] [B,Q,N,Dv] [B,Q,N] [B,Q,N] [B,Q]
        qc, kc, vc = (jnp.swapaxes(a, 1, 2) for a in (qc, kc, vc))  # [B,N,Q,.]
        gc, bc = jnp.swapaxes(gc, 1, 2), jnp.swapaxes(bc, 1, 2)  # [B,N,Q]
        cum = jnp.cumsum(gc, axis=-1)  # log decay from the chunk start to i (inclusive)
        same = (rc[:, :, None] == rc[:, None, :]) & causal  # [B,Q,Q]: j <= i in the same run
        same = same[:, None]  # [B,1,Q,Q]
        carries = (rc == prev[:, None])[:, None, :]  # [B,1,Q]: i still in the run of the carried state
        diff = cum[..., :, None] - cum[..., None, :]  # [B,N,Q,Q]
        decay = jnp.where(same, jnp.exp(jnp.where(same, diff, 0.0)), 0.0)  # exp(cum_i - cum_j), masked
        from_start = jnp.where(carries, jnp.exp(cum), 0.0)  # [B,N,Q]: decay applied to the carried state

        kk = jnp.einsum("bnik,bnjk->bnij", kc, kc, precision=PRECISION)
        a = jnp.where(strict, kk * decay * bc[..., :, None], 0.0)  # strictly lower: the UT system
        rhs = jnp.concatenate([vc * bc[..., None], kc * (bc * from_start)[..., None]], axis=-1)
        sol = jax.lax.linalg.triangular_solve(a, rhs, left_side=True, lower=True, unit_diagonal=True)
        u, w = sol[..., :Dv], sol[..., Dv:]  # new values; decayed keys that read the old state
        v_new = u - jnp.einsum("bnik,bnkv->bniv", w, S, precision=PRECISION)  # [B,N,Q,Dv]

        qk = jnp.einsum("bnik,bnjk->bnij", qc, kc, precision=PRECISION) * decay
        out = jnp.einsum("bnik,bnkv->bniv", qc * from_start[..., None], S, precision=PRECISION)
        out = out + jnp.einsum("bnij,bnjv->bniv", qk, v_new, precision=PRECISION)

        to_end = decay[..., -1, :]  # [B,N,Q]: exp(cum_last - cum_j) for j in the last token's run
        S = S * from_start[..., -1][..., None, None]
        S = S + jnp.einsum("bnjk,bnjv->bnkv", kc * to_end[..., None], v_new, precision=PRECISION)
        return (S, rc[:, -1]), jnp.swapaxes(out, 1, 2)  # out [B,Q,N,Dv]

    (state, _), out = jax.lax.scan(body, (f32(state), state_run), xs)
    out = jnp.moveaxis(out, 0, 1).reshape(B, nc * Q, N, Dv)[:, :T]
    return out, state
