"""GGML block formats unpacked with plain torch ops, straight into the compute dtype on the compute device.

Every format is a run of fixed-size blocks (`GGML_QUANT_SIZES`: elements per block, bytes per block); the
block layouts are those of ggml's `ggml-common.h` (see docs/formats.md, 'GGUF block layouts').
Each unpacker takes blocks as a (n, bytes_per_block) uint8 tensor and writes the (n, elements_per_block) values
into an output of the requested dtype, computing every product and sum in float32 in the same order as
`gguf.quants.dequantize` (numpy, float32), so float32 results are equal bit for bit and other dtypes are those
values rounded once. The quants stay integers until the final multiply, which converts them on the fly.

The driver works through the blocks in chunks of about CPU_CHUNK elements, so on a CPU the float32
intermediates of one chunk stay in cache and only the final dtype is written to memory: this is what makes
the bf16/f16 output twice as fast as numpy's float32. Types without an unpacker here (the IQ1/IQ2/IQ3 grids,
TQ*, MXFP4 ...) go through `gguf.quants.dequantize` on the CPU, with a warning the first time each is met.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as numpy_dequantize

Q = GGMLQuantizationType
QK_K = 256  # elements in a K-quant super-block
CPU_CHUNK = 2**20  # elements per chunk on the CPU: 4 MiB of float32 intermediates, which stay in cache
DEVICE_CHUNK = 2**24  # on accelerators, where each op is a kernel launch, fewer and larger chunks
IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)  # ggml's kvalues_iq4nl


@functools.cache
def _iq4_table(device: torch.device) -> torch.Tensor:
    return torch.tensor(IQ4_VALUES, dtype=torch.float32, device=device)


def _half(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The little-endian float16 at byte `start` of each block, as (n, 1) float32."""
    return blocks[:, start : start + 2].view(torch.float16).float()


def _fields(packed: torch.Tensor, group: int, width: int) -> torch.Tensor:
    """Split every byte into 8 // width bit fields, lowest first, one group of bytes at a time.

    (n, k) uint8 -> (n, k // group, 8 // width, group) uint8: for each group of `group` bytes, field 0 of
    every byte, then field 1 ... This is how ggml packs nibbles, 2-bit crumbs and 1-bit high bits.
    The bytes are processed as int16 pairs with a byte-replicated mask, so each field costs one vectorised
    shift and one `and` over the data, with no broadcast and no per-byte shift table (several times faster).
    """
    n, k = packed.shape
    words = packed.view(torch.int16).view(n, k // group, group // 2)  # every block offset and size is even
    mask = ((1 << width) - 1) * 0x0101  # the field in both bytes of a pair; also drops int16 sign extension
    if torch.compiler.is_compiling():  # traced (torch.compile fuses it): no `out=` into a strided view
        out = torch.stack([(words >> shift) & mask for shift in range(0, 8, width)], dim=2)
    else:
        out = torch.empty((n, k // group, 8 // width, group // 2), dtype=torch.int16, device=packed.device)
        for i, shift in enumerate(range(0, 8, width)):
            torch.bitwise_and(words >> shift if shift else words, mask, out=out[:, :, i])
    return out.view(torch.uint8).view(n, k // group, 8 // width, group)


def _signed(q: torch.Tensor, offset: int) -> torch.Tensor:
    """Unsigned quants (uint8) minus `offset`, as int8: the uint8 subtraction wraps to the two's complement."""
    return (q - offset).view(torch.int8)


def _q4_0(b: torch.Tensor, out: torch.Tensor) -> None:
    q = _signed(_fields(b[:, 2:], 16, 4).view(-1, 32), 8)
    torch.mul(q, _half(b, 0), out=out)


def _q4_1(b: torch.Tensor, out: torch.Tensor) -> None:
    q = _fields(b[:, 4:], 16, 4).view(-1, 32)
    torch.add(q * _half(b, 0), _half(b, 2), out=out)


def _fifth_bits(qh: torch.Tensor) -> torch.Tensor:
    """(n, 4) bytes of a little-endian u32 -> (n, 32): bit j (byte j // 8, bit j % 8) moved to bit 4."""
    return (_fields(qh, 4, 1).view(-1, 8, 4).transpose(1, 2) << 4).reshape(-1, 32)


def _q5_0(b: torch.Tensor, out: torch.Tensor) -> None:
    q = _signed(_fields(b[:, 6:], 16, 4).view(-1, 32) | _fifth_bits(b[:, 2:6]), 16)
    torch.mul(q, _half(b, 0), out=out)


def _q5_1(b: torch.Tensor, out: torch.Tensor) -> None:
    q = _fields(b[:, 8:], 16, 4).view(-1, 32) | _fifth_bits(b[:, 4:8])
    torch.add(q * _half(b, 0), _half(b, 2), out=out)


def _q8_0(b: torch.Tensor, out: torch.Tensor) -> None:
    torch.mul(b[:, 2:].view(torch.int8), _half(b, 0), out=out)


def _q2_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n, scales = b.shape[0], b[:, :16]
    dl = (_half(b, 80) * (scales & 15).float()).unsqueeze(-1)  # (n, 16, 1): one scale per 16 elements
    ml = (_half(b, 82) * (scales >> 4).float()).unsqueeze(-1)
    q = _fields(b[:, 16:80], 32, 2).view(n, 16, 16)
    torch.sub(q * dl, ml, out=out.view(n, 16, 16))


def _q3_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    low = _fields(b[:, 96:104], 8, 4).view(n, 16)
    high = _fields(b[:, 104:108], 4, 2).view(n, 16)
    dl = (_half(b, 108) * ((low | (high << 4)).float() - 32)).unsqueeze(-1)  # (n, 16, 1)
    q_low = _fields(b[:, 32:96], 32, 2).view(n, 16, 16)
    q_high = _fields(b[:, :32], 32, 1).view(n, 16, 16)  # stored inverted: a clear bit subtracts 4
    q = q_low.view(torch.int8) - ((q_high ^ 1) << 2).view(torch.int8)
    torch.mul(q, dl, out=out.view(n, 16, 16))


def _k_scales(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eight 6-bit scales and mins of a Q4_K/Q5_K block, packed in bytes 4..15, as (n, 8, 1) float32 each."""
    packed = b[:, 4:16].view(-1, 3, 4)
    low, mins, mixed = packed[:, 0], packed[:, 1], packed[:, 2]
    scales = torch.cat((low & 63, (mixed & 15) | ((low >> 2) & 48)), dim=1)
    minima = torch.cat((mins & 63, (mixed >> 4) | ((mins >> 2) & 48)), dim=1)
    d = _half(b, 0) * scales.float()
    dm = _half(b, 2) * minima.float()
    return d.unsqueeze(-1), dm.unsqueeze(-1)


def _q4_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    d, dm = _k_scales(b)
    q = _fields(b[:, 16:], 32, 4).view(n, 8, 32)
    torch.sub(q * d, dm, out=out.view(n, 8, 32))


def _q5_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    d, dm = _k_scales(b)
    q = _fields(b[:, 48:], 32, 4).view(n, 8, 32) | (_fields(b[:, 16:48], 32, 1).view(n, 8, 32) << 4)
    torch.sub(q * d, dm, out=out.view(n, 8, 32))


def _q6_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    d = (_half(b, 208) * b[:, 192:208].view(torch.int8).float()).unsqueeze(-1)  # (n, 16, 1)
    low = _fields(b[:, :128], 64, 4).view(n, 8, 32)
    high = _fields(b[:, 128:192], 32, 2).view(n, 8, 32)
    q = _signed((low | (high << 4)).view(n, 16, 16), 32)
    torch.mul(q, d, out=out.view(n, 16, 16))


def _iq4_nl(b: torch.Tensor, out: torch.Tensor) -> None:
    q = _fields(b[:, 2:], 16, 4).view(-1, 32)
    torch.mul(_iq4_table(b.device)[q.long()], _half(b, 0), out=out)


def _iq4_xs(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    low = _fields(b[:, 4:8], 4, 4).transpose(-1, -2).reshape(n, 8)  # byte j: scale 2j low, 2j + 1 high
    high16 = b[:, 2:4].view(torch.int16).int() & 0xFFFF
    high = ((high16 >> torch.arange(0, 16, 2, dtype=torch.int32, device=b.device)) & 3).to(torch.uint8)
    dl = (_half(b, 0) * ((low | (high << 4)).float() - 32)).unsqueeze(-1)  # (n, 8, 1)
    q = _fields(b[:, 8:], 16, 4).view(n, 8, 32)
    torch.mul(_iq4_table(b.device)[q.long()], dl, out=out.view(n, 8, 32))


UNPACKERS: dict[Q, Callable[[torch.Tensor, torch.Tensor], None]] = {
    Q.Q4_0: _q4_0, Q.Q4_1: _q4_1, Q.Q5_0: _q5_0, Q.Q5_1: _q5_1, Q.Q8_0: _q8_0,
    Q.Q2_K: _q2_k, Q.Q3_K: _q3_k, Q.Q4_K: _q4_k, Q.Q5_K: _q5_k, Q.Q6_K: _q6_k,
    Q.IQ4_NL: _iq4_nl, Q.IQ4_XS: _iq4_xs,
}  # fmt: skip
FLOAT_TYPES = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}
TORCH_TYPES = frozenset(UNPACKERS) | frozenset(FLOAT_TYPES)  # dequantized here; the rest by gguf.quants


def packed_size(qtype: Q, n_elements: int) -> int:
    """Bytes that n_elements take in qtype (n_elements must be whole blocks)."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return n_elements // block_size * type_size


def dequantize(
    packed: torch.Tensor, qtype: Q, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The values of `packed` (uint8 bytes of whole qtype blocks, any shape, on any device) as `shape` in `dtype`.

    The result is on packed's device; float32 results equal `gguf.quants.dequantize` bit for bit, other
    dtypes are those float32 values rounded once.
    """
    n_elements = math.prod(shape)
    if packed.numel() != packed_size(qtype, n_elements) or n_elements % GGML_QUANT_SIZES[qtype][0]:
        raise ValueError(
            f"{packed.numel()} bytes of {qtype.name} cannot hold a tensor of shape {tuple(shape)} "
            f"({packed_size(qtype, n_elements)} bytes expected)."
        )
    if qtype in FLOAT_TYPES:
        return packed.reshape(-1).view(FLOAT_TYPES[qtype]).view(shape).to(dtype)
    if qtype not in UNPACKERS:
        return _numpy_fallback(packed, qtype, shape, dtype)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = packed.reshape(-1, type_size)
    out = torch.empty((blocks.shape[0], block_size), dtype=dtype, device=packed.device)
    step = max(1, (CPU_CHUNK if packed.device.type == "cpu" else DEVICE_CHUNK) // block_size)
    for start in range(0, blocks.shape[0], step):
        UNPACKERS[qtype](blocks[start : start + step], out[start : start + step])
    return out.view(shape)


def _numpy_fallback(packed: torch.Tensor, qtype: Q, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    _warn_fallback(qtype)
    values = numpy_dequantize(packed.cpu().numpy().reshape(-1), qtype)
    return torch.from_numpy(np.ascontiguousarray(values)).view(shape).to(device=packed.device, dtype=dtype)


@functools.cache
def _warn_fallback(qtype: Q) -> None:
    warnings.warn(
        f"GGUF type {qtype.name} has no torch unpacker here; it is dequantized by gguf.quants on the CPU, "
        "which is much slower (and copies through host memory on a GPU).",
        stacklevel=3,
    )
