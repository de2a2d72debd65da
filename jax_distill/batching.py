"""Static shapes for jitted model calls, shared by the sampler (sampling.py) and the scorer (scoring.py).

A jitted program compiles once per input shape, so batches are padded to a few sizes: rows to a power
of two per batch shard (every device of the batch axes gets the same number of rows), lengths to a power
of two. Sequences are left-padded, so every row's last token sits in the last column: the sampler reads
the next-token logits there, the scorer right-aligns continuation targets with it.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np

from jax_distill.parallel.sharding import ShardingRules


def bucket(n: int, minimum: int = 16) -> int:
    """Next power of two >= n (at least `minimum`): the few static lengths programs are compiled for."""
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def batch_rows(n: int, rules: ShardingRules | None) -> int:
    """Rows of a batch holding n sequences: a power of two per batch shard."""
    shards = 1 if rules is None else rules.shards("batch")
    return shards * bucket(-(-n // shards), minimum=1)


def left_pad(
    rows: Sequence[Sequence[int]], length: int, batch: int, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, positions, segments), each [batch, length] int32: row i right-aligned, positions counting
    from 0 at its first token, segment 1 on its tokens and 0 on padding. Rows past len(rows) are padding."""
    tokens = np.full((batch, length), pad_id, np.int32)
    positions = np.zeros((batch, length), np.int32)
    segments = np.zeros((batch, length), np.int32)
    for i, row in enumerate(rows):
        start = length - len(row)
        tokens[i, start:] = row
        positions[i, start:] = np.arange(len(row))
        segments[i, start:] = 1
    return tokens, positions, segments


def put_batch(x: np.ndarray, rules: ShardingRules | None) -> jax.Array:
    """x on the devices, its first dimension split over the batch axes (the default device without rules)."""
    sharding = None if rules is None else rules.sharding(("batch",) + (None,) * (x.ndim - 1), x.shape)
    return jax.device_put(x, sharding)


class Static:
    """A static jit argument hashed by identity, for values that are not hashable themselves (model
    configs holding lists, ShardingRules holding a mesh): the same object reuses the compiled program."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, Static) and other.value is self.value
