"""Packing float weights into GGML block formats (numpy), for the converter and the tests.

The legacy formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and BF16 go through `gguf.quants.quantize`, whose Q8_0
is bit-exact with ggml's reference quantizer. gguf-py cannot produce K-quants, so Q4_K, Q5_K and Q6_K are
packed here with plain min/max scales: valid blocks that every GGUF reader decodes (llama.cpp,
ComfyUI-GGUF, gguf-py), though less accurate than llama-quantize's search for the best scales, which
also weighs errors by an importance matrix. Block layouts: docs/formats.md, 'GGUF block layouts'.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quantize as gguf_quantize

Q = GGMLQuantizationType
QK_K = 256


def quantize(values: np.ndarray, qtype: Q) -> np.ndarray:
    """values (..., row) float -> the qtype encoding: uint8 (..., row_bytes), or float32/float16 for F32/F16.

    The row length must be whole blocks of qtype (32 for the legacy types, 256 for the K-quants).
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if values.shape[-1] % block_size:
        raise ValueError(f"rows of {values.shape[-1]} values are not whole {qtype.name} blocks of {block_size}.")
    if qtype not in K_PACKERS:
        return gguf_quantize(values, qtype)
    blocks = values.reshape(-1, block_size)
    packed = K_PACKERS[qtype](blocks)
    return packed.reshape(*values.shape[:-1], values.shape[-1] // block_size * type_size)


def _half_bytes(values: np.ndarray) -> np.ndarray:
    """(n,) float -> (n, 2) the bytes of each value as a little-endian float16."""
    return values.astype("<f2").reshape(-1, 1).view(np.uint8)


def _divide(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x / y, with 0 where y is 0 (an all-zero sub-block)."""
    return np.divide(x, y, out=np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32), where=y != 0)


def _scales_and_mins(blocks: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 8 sub-blocks of 32 as (d * sc) * q - (dmin * m), q in 0..levels.

    Returns d and dmin (n,) float16-rounded, and the 6-bit sc and m (n, 8).
    """
    sub = blocks.reshape(-1, 8, 32)
    low = np.minimum(sub.min(axis=-1), 0)  # the offset only ever shifts up, as ggml's mins are subtracted
    step = (sub.max(axis=-1) - low) / levels
    d = (step.max(axis=-1) / 63).astype(np.float16).astype(np.float32)
    dmin = ((-low).max(axis=-1) / 63).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(_divide(step, d[:, None])), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(_divide(-low, dmin[:, None])), 0, 63).astype(np.uint8)
    return d, dmin, sc, m


def _k_levels(blocks: np.ndarray, d, dmin, sc, m, levels: int) -> np.ndarray:
    """The q (n, 8, 32) in 0..levels that best fit each value with the stored (rounded) scales."""
    scale = (d[:, None] * sc)[..., None]
    offset = (dmin[:, None] * m)[..., None]
    q = np.rint(_divide(blocks.reshape(-1, 8, 32) + offset, scale))
    return np.clip(q, 0, levels).astype(np.uint8)


def _pack_k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins -> the 12 bytes of Q4_K/Q5_K (low 6 bits of the first four, with the top
    two bits of the last four above them; then the last four's low nibbles side by side)."""
    head = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    mins = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    tail = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    return np.concatenate([head, mins, tail], axis=-1).astype(np.uint8)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 8, 32) values 0..15 -> (n, 128): 32-byte chunk c holds sub-block 2c low and 2c + 1 high."""
    pairs = q.reshape(-1, 4, 2, 32)
    return (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, 128)


def _q4_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, sc, m = _scales_and_mins(blocks, 15)
    q = _k_levels(blocks, d, dmin, sc, m, 15)
    return np.concatenate([_half_bytes(d), _half_bytes(dmin), _pack_k_scales(sc, m), _pack_nibbles(q)], axis=-1)


def _q5_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, sc, m = _scales_and_mins(blocks, 31)
    q = _k_levels(blocks, d, dmin, sc, m, 31)
    # Bit j of high byte l is the fifth bit of element l of sub-block j.
    high = ((q >> 4) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    parts = [_half_bytes(d), _half_bytes(dmin), _pack_k_scales(sc, m), high, _pack_nibbles(q & 15)]
    return np.concatenate(parts, axis=-1)


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    sub = blocks.reshape(-1, 16, 16)
    step = np.abs(sub).max(axis=-1) / 31  # q - 32 spans -32..31
    d = (step.max(axis=-1) / 127).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(_divide(step, d[:, None])), 0, 127).astype(np.int8)
    scale = (d[:, None] * sc)[..., None]
    q = (np.clip(np.rint(_divide(sub, scale)), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 128)
    # Each half of 128: low nibbles of elements 0..63 beside those of 64..127; the top two bits of the four
    # runs of 32 share one byte, two bits each.
    low = (q[:, :, :64] & 15) | ((q[:, :, 64:] & 15) << 4)
    top = (q >> 4).reshape(-1, 2, 4, 32) << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
    high = top.sum(axis=2, dtype=np.uint8)
    parts = [low.reshape(-1, 128), high.reshape(-1, 64), sc.view(np.uint8), _half_bytes(d)]
    return np.concatenate(parts, axis=-1)


K_PACKERS = {Q.Q4_K: _q4_k, Q.Q5_K: _q5_k, Q.Q6_K: _q6_k}
