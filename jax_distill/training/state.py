"""Train state, loss and the jitted train step.

State is one pytree (step, trainable params, optimizer state, RNG key data). In LoRA mode the trainable
params are the `LoRA` leaves only (None elsewhere), so the base never enters the optimizer nor the
checkpoint; the frozen half is a separate, non-donated argument of the step. Gradient accumulation is a
scan over microbatches that sums unnormalised losses and divides once by the batch's loss tokens, so
any accumulation factor gives the same update as one big batch (up to float summation order).
A step whose loss, gradient norm or updated parameters are not finite reports `nonfinite` = 1; with
`skip_nonfinite` its update is dropped inside the step (parameters and optimizer state unchanged).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jax_distill.parallel.sharding import ShardingRules, constrain, use_rules
from jax_distill.training import lora

BATCH_KEYS = ("tokens", "targets", "positions", "segment_ids", "loss_mask")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array  # int32 []
    params: Any  # trainable part of the parameters (None where frozen)
    opt_state: Any
    rng: jax.Array  # uint32 key data (plain array so it checkpoints)
    time_s: jax.Array  # float32 [], training wall time so far (summed over resumes)


def token_losses(
    module, model_cfg, params, batch: dict, *, lora_key=None, remat="none", chunk: int = 0
) -> tuple[jax.Array, jax.Array]:
    """(sum of masked next-token cross-entropy, number of loss tokens) for one batch, in fp32.

    With `chunk` (dividing the sequence length) the vocab projection and cross-entropy run over
    sequence chunks in a rematerialised scan, so fp32 logits [B, chunk, V] exist one chunk at a time
    (a 16k-token row times a 248k vocab would otherwise need 16 GB per sequence)."""
    hidden, _ = module.hidden_states(
        params, model_cfg, batch["tokens"], batch["positions"], batch["segment_ids"], lora_key=lora_key, remat=remat
    )  # [B, T, D]
    targets = batch["targets"].astype(jnp.int32)
    mask = batch["loss_mask"].astype(jnp.float32)

    def piece(h, tgt, m):
        logits = constrain(module.unembed(params, model_cfg, h), ("batch", "seq", "vocab"))  # [B, C, V] fp32
        logz = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
        return jnp.sum((logz - target_logit) * m)

    B, T, _ = hidden.shape
    if not chunk or chunk >= T:
        return piece(hidden, targets, mask), jnp.sum(mask)
    if T % chunk:
        raise ValueError(f"config.train.loss_chunk {chunk} does not divide the sequence length {T}")
    n = T // chunk

    def split(x):  # [B, T, ...] -> [n, B, chunk, ...]
        return x.reshape(B, n, chunk, *x.shape[2:]).swapaxes(0, 1)

    def body(total, xs):
        h, tgt, m = xs
        return total + jax.checkpoint(piece)(constrain(h, ("batch", "seq", "embed")), tgt, m), None

    total, _ = jax.lax.scan(body, jnp.zeros([], jnp.float32), (split(hidden), split(targets), split(mask)))
    return total, jnp.sum(mask)


def loss(module, model_cfg, params, batch: dict, **kwargs) -> jax.Array:
    """sum(loss_mask * xent) / sum(loss_mask): the training objective."""
    total, n = token_losses(module, model_cfg, params, batch, **kwargs)
    return total / jnp.maximum(n, 1.0)


def make_train_step(
    module,
    model_cfg,
    tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    *,
    accum_steps: int = 1,
    remat: str = "none",
    dropout: bool = False,
    rules: ShardingRules | None = None,
    loss_chunk: int = 0,
    skip_nonfinite: bool = False,
) -> Callable:
    """`step(state, frozen, batch) -> (state, metrics)`, pure; wrap it with `jit_train_step`."""

    def grads_of(trainable, frozen, mb, key):
        def f(t):
            return token_losses(module, model_cfg, lora.combine(t, frozen), mb, lora_key=key, remat=remat,
                                chunk=loss_chunk)

        (total, n), g = jax.value_and_grad(f, has_aux=True)(trainable)
        return total, n, g

    def step(state: TrainState, frozen, batch: dict):
        with use_rules(rules):
            key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step) if dropout else None
            if accum_steps == 1:
                total, n, grads = grads_of(state.params, frozen, batch, key)
            else:
                # microbatch j takes rows j, j + A, j + 2A...: every device keeps an equal share
                def split(x):
                    b = x.shape[0]
                    if b % accum_steps:
                        raise ValueError(f"batch {b} does not divide into {accum_steps} microbatches")
                    x = x.reshape(b // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
                    return constrain(x, (None, "batch", "seq"))

                micro = {k: split(batch[k]) for k in BATCH_KEYS}
                zeros = jax.tree.map(jnp.zeros_like, state.params)

                def body(carry, xs):
                    total, n, acc = carry
                    mb, j = xs
                    k = None if key is None else jax.random.fold_in(key, j)
                    t, c, g = grads_of(state.params, frozen, mb, k)
                    return (total + t, n + c, jax.tree.map(jnp.add, acc, g)), None

                init = (jnp.zeros([], jnp.float32), jnp.zeros([], jnp.float32), zeros)
                (total, n, grads), _ = jax.lax.scan(body, init, (micro, jnp.arange(accum_steps)))
            denom = jnp.maximum(n, 1.0)
            grads = jax.tree.map(lambda g: g / denom, grads)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            grad_norm = optax.tree.norm(grads)
            finite = jnp.isfinite(total) & jnp.isfinite(grad_norm) & all_finite(params)
            if skip_nonfinite:
                params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                                 (params, opt_state), (state.params, state.opt_state))
            real = jnp.sum((batch["segment_ids"] != 0).astype(jnp.int32))
            metrics = {
                "loss": total / denom,
                "grad_norm": grad_norm,
                "nonfinite": (~finite).astype(jnp.int32),
                "lr": lr_schedule(state.step),
                "tokens": real,
                "loss_tokens": n.astype(jnp.int32),
                "packing": real.astype(jnp.float32) / batch["segment_ids"].size,
            }
            new = TrainState(state.step + 1, params, opt_state, state.rng, state.time_s)
            return new, metrics

    return step


def all_finite(tree: Any) -> jax.Array:
    """True (a bool []) when no floating leaf of `tree` holds a NaN or an infinity."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


# ----------------------------------------------------------------------------- shardings


def _keys(path) -> tuple[str, ...]:
    return tuple(lora.path_str([k]) for k in path)


def _replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def opt_state_shardings(abstract_opt, param_shardings, mesh) -> Any:
    """Shard optimizer-state leaves like the parameter they shadow (found by key-path suffix); a
    quantized moment's codes like the parameter, its per-block absmax like the parameter minus the
    last axis; everything else (counts, scalars) replicated."""
    table = {}
    for path, s in jax.tree_util.tree_flatten_with_path(param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0]:
        table[_keys(path)] = s

    def pick(path, leaf):
        keys = _keys(path)
        for end in (len(keys), len(keys) - 1):
            for start in range(end):
                s = table.get(keys[start:end])
                if s is None:
                    continue
                spec = tuple(s.spec) + (None,) * (leaf.ndim - len(s.spec))
                if end == len(keys) or keys[-1] == "codes":
                    if len(spec) == leaf.ndim:
                        return s
                if keys[-1] == "absmax" and leaf.ndim >= 1:
                    return NamedSharding(mesh, PartitionSpec(*spec[: leaf.ndim - 1], None))
        return _replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, abstract_opt)


def jit_train_step(step_fn, state_shardings, frozen_shardings, batch_sharding, mesh) -> Callable:
    """jit with explicit in/out shardings; the state is donated (updated in place)."""
    batch_sh = {k: batch_sharding for k in BATCH_KEYS}
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, frozen_shardings, batch_sh),
        out_shardings=(state_shardings, _replicated(mesh)),
        donate_argnums=(0,),
    )
