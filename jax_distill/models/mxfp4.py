"""MXFP4 expert weights of released gpt-oss checkpoints: dequantize on load (and quantize, for tests).

MXFP4 (OCP microscaling) stores 32 consecutive inputs of one output row as 4-bit E2M1 codes sharing one
power-of-two scale. The gpt-oss layout (transformers' integrations/mxfp4.py) for an expert weight
W [E, in, out] keeps each expert transposed:
  `<name>_blocks`  uint8 [E, out, in/32, 16]  two codes per byte, element 2j in the low nibble
  `<name>_scales`  uint8 [E, out, in/32]      exponent + 127
so W[e, 32g + j, o] = FP4_VALUES[code(e, o, g, j)] * 2 ** (scales[e, o, g] - 127).
Everything is numpy: this runs inside checkpoint read hooks, one layer at a time.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32  # inputs per shared scale
SCALE_BIAS = 127
FP4_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32
)


def dequantize(blocks: np.ndarray, scales: np.ndarray, dtype=np.float32) -> np.ndarray:
    """blocks [..., out, in/32, 16] + scales [..., out, in/32] -> weight [..., in, out] (exact in fp32)."""
    blocks, scales = np.asarray(blocks), np.asarray(scales)
    if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
        raise ValueError(f"MXFP4 blocks/scales must be uint8, got {blocks.dtype}/{scales.dtype}")
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"MXFP4 blocks {list(blocks.shape)} do not match scales {list(scales.shape)} (+ [16])")
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1)  # [..., out, G, 16, 2]
    values = FP4_VALUES[codes].reshape(*scales.shape, BLOCK)  # [..., out, G, 32]
    values = np.ldexp(values, scales.astype(np.int32)[..., None] - SCALE_BIAS)
    weight = values.reshape(*scales.shape[:-1], -1)  # [..., out, in]
    return np.swapaxes(weight, -1, -2).astype(dtype)


def quantize(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """weight [..., in, out] -> (blocks, scales), the inverse layout of `dequantize`.

    Each block's scale is the smallest power of two that brings its largest magnitude to <= 6 (the
    largest E2M1 value), so nothing saturates; values round to the nearest representable code.
    """
    w = np.swapaxes(np.asarray(weight, np.float32), -1, -2)  # [..., out, in]
    if w.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 needs the input dimension to be a multiple of {BLOCK}, got {w.shape[-1]}")
    w = w.reshape(*w.shape[:-1], w.shape[-1] // BLOCK, BLOCK)  # [..., out, G, 32]
    amax = np.abs(w).max(axis=-1)
    with np.errstate(divide="ignore"):
        exponent = np.where(amax > 0, np.ceil(np.log2(amax / 6.0)), -SCALE_BIAS)
    exponent = np.clip(exponent, -SCALE_BIAS, SCALE_BIAS).astype(np.int32)
    scaled = np.ldexp(w, -exponent[..., None])
    magnitude = np.abs(np.clip(scaled, -6.0, 6.0))
    code = np.abs(magnitude[..., None] - FP4_VALUES[:8]).argmin(axis=-1).astype(np.uint8)
    code |= np.where(scaled < 0, 8, 0).astype(np.uint8)
    code = code.reshape(*code.shape[:-1], BLOCK // 2, 2)
    blocks = (code[..., 0] | (code[..., 1] << 4)).astype(np.uint8)
    return blocks, (exponent + SCALE_BIAS).astype(np.uint8)
