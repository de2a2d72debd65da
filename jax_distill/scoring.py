"""Log-likelihood of continuations, as lm-evaluation-harness computes it, for any student family.

A request is a (context, continuation) pair of strings. The harness's token split: trailing context
spaces move to the continuation; continuation tokens = tokens(context + continuation) minus
tokens(context); an empty context becomes the EOS token; no BOS is added. A request longer than
max_length + 1 tokens loses context from the left. The score is the summed log-probability of the
continuation tokens, plus whether greedy decoding would have produced every one of them.

Batches are shaped as the sampler's (batching.py): requests sorted longest first, left-padded to a
power-of-two length, rows a power of two per batch shard; the continuation targets are right-aligned
with the inputs, so one forward pass scores the last C columns of every row.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_distill.batching import Static, batch_rows, bucket, left_pad, put_batch
from jax_distill.models import Model
from jax_distill.models.hf_io import host_array
from jax_distill.parallel.sharding import ShardingRules, use_rules


def harness_split(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids exactly as lm-evaluation-harness splits them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    if context == "":
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("empty context needs an EOS token to condition on; the tokenizer has none")
        return [eos], encode(continuation)
    whole, ctx = encode(context + continuation), encode(context)
    return ctx, whole[len(ctx) :]


@functools.partial(jax.jit, static_argnames=("module", "cfg", "rules"))
def _score(params, tokens, positions, segments, targets, target_mask, *, module, cfg, rules):
    """Left-padded inputs [B, T]; continuation targets [B, C] right-aligned with the inputs' last C
    columns -> (log-prob of each target [B, C], 0 on padding; each target is the greedy token [B, C])."""
    cfg, rules = cfg.value, rules.value
    C = targets.shape[1]
    with use_rules(rules):
        hidden, _ = module.hidden_states(params, cfg, tokens, positions, segments)
        logits = module.unembed(params, cfg, hidden[:, -C:])  # [B, C, V] fp32
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    greedy = (jnp.argmax(logits, axis=-1) == targets) | ~target_mask
    return jnp.where(target_mask, picked, 0.0), greedy


def token_logprobs(
    model: Model,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 16,
    max_length: int = 2048,
    rules: ShardingRules | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per (context ids, continuation ids): the log-probability of each continuation token given the
    context and the continuation before it [C], and whether each is the greedy token [C], in order.
    A pair longer than max_length + 1 tokens loses context from the left (never continuation).
    rules: the mesh the model's parameters live on; rows are split over its batch axes."""
    encoded = []  # (model input, continuation tokens) per pair
    for ctx, cont in pairs:
        cont = list(cont)
        if not cont:
            raise ValueError("token_logprobs: empty continuation")
        if len(cont) > max_length:
            raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length={max_length}")
        whole = (list(ctx) + cont)[-(max_length + 1) :]
        encoded.append((whole[:-1], cont))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out: list = [None] * len(encoded)
    static = dict(module=model.module, cfg=Static(model.config), rules=Static(rules))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        B = batch_rows(len(idx), rules)
        T = bucket(max(len(encoded[i][0]) for i in idx))
        C = min(T, bucket(max(len(encoded[i][1]) for i in idx), minimum=4))
        tokens, positions, segments = left_pad([encoded[i][0] for i in idx], T, B)
        targets, _, target_segments = left_pad([encoded[i][1] for i in idx], C, B)
        arrays = (tokens, positions, segments, targets, target_segments == 1)
        logp, greedy = _score(model.params, *(put_batch(a, rules) for a in arrays), **static)
        logp, greedy = host_array(logp), host_array(greedy)  # rows may span several hosts
        for row, i in enumerate(idx):
            n = len(encoded[i][1])
            out[i] = (logp[row, C - n :], greedy[row, C - n :])
    return out


def loglikelihood(
    model: Model,
    tokenizer,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 16,
    max_length: int = 2048,
    rules: ShardingRules | None = None,
) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), continuation is the greedy decode) per request, in order.
    rules: the mesh the model's parameters live on; rows are split over its batch axes."""
    pairs = []
    for context, continuation in requests:
        ctx, cont = harness_split(tokenizer, context, continuation)
        if not cont:
            raise ValueError(f"empty continuation after tokenization for {continuation!r}")
        pairs.append((ctx, cont))
    return [(float(logp.sum()), bool(greedy.all()))
            for logp, greedy in token_logprobs(model, pairs, batch_size, max_length, rules)]
