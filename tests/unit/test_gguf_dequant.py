"""Our torch dequantization against gguf.quants.dequantize (numpy, float32), the parity oracle: equal bit for bit.

Blocks are random valid ones (random bytes with the float16 scale fields overwritten by finite values) and
ones made by the quantizers (gguf-py's for the legacy types, ours for the K-quants), with odd row counts.
"""

import warnings

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from lumina_core.gguf import dequant
from lumina_core.gguf.dequant import UNPACKERS, dequantize
from lumina_core.gguf.quantize import quantize

Q = GGMLQuantizationType
# Byte offsets of each block's float16 scale fields (d, and dmin / m where the type has one).
HALF_FIELDS = {
    Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,), Q.Q2_K: (80, 82), Q.Q3_K: (108,),
    Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.IQ4_NL: (0,), Q.IQ4_XS: (0,),
}  # fmt: skip
QUANTIZABLE = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_XS, Q.BF16, Q.F16)


def random_blocks(qtype: Q, rows: int, row_elements: int, seed: int = 0) -> np.ndarray:
    """Random bytes for whole blocks, with finite scales of mixed sign and magnitude."""
    rng = np.random.default_rng(seed)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows, row_elements // block_size, type_size), dtype=np.uint8)
    for offset in HALF_FIELDS[qtype]:
        scales = rng.standard_normal((rows, row_elements // block_size, 1)) * 10.0 ** rng.integers(-4, 1)
        blocks[..., offset : offset + 2] = scales.astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def assert_bit_equal(ours: torch.Tensor, reference: np.ndarray) -> None:
    assert ours.dtype == torch.float32 and tuple(ours.shape) == reference.shape
    assert torch.equal(ours.view(torch.int32), torch.from_numpy(np.ascontiguousarray(reference)).view(torch.int32))


@pytest.mark.parametrize("qtype", list(UNPACKERS), ids=lambda q: q.name)
@pytest.mark.parametrize("rows", [1, 7])
def test_random_blocks_equal_gguf_bit_for_bit(qtype, rows):
    packed = random_blocks(qtype, rows, 512)
    reference = gguf_dequantize(packed, qtype)
    assert_bit_equal(dequantize(torch.from_numpy(packed), qtype, (rows, 512)), reference)
    for dtype in (torch.bfloat16, torch.float16):  # straight into the compute dtype: the float32 values rounded once
        assert torch.equal(
            dequantize(torch.from_numpy(packed), qtype, (rows, 512), dtype), torch.from_numpy(reference).to(dtype)
        )


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda q: q.name)
def test_quantizer_blocks_equal_gguf_bit_for_bit(qtype):
    values = np.random.default_rng(1).standard_normal((5, 768)).astype(np.float32)
    packed = np.ascontiguousarray(quantize(values, qtype))
    reference = gguf_dequantize(packed, qtype)
    assert_bit_equal(dequantize(torch.from_numpy(packed).view(torch.uint8), qtype, (5, 768)), reference)


def test_chunking_does_not_change_results(monkeypatch):
    packed = random_blocks(Q.Q4_K, 9, 1024)
    whole = dequantize(torch.from_numpy(packed), Q.Q4_K, (9, 1024))
    monkeypatch.setattr(dequant, "CPU_CHUNK", 256 * 5)  # chunks of 5 blocks, the last one short
    assert torch.equal(dequantize(torch.from_numpy(packed), Q.Q4_K, (9, 1024)), whole)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_K, Q.Q6_K], ids=lambda q: q.name)
def test_a_changed_byte_is_seen(qtype):
    # The comparison can fail: one flipped bit in the quants or the scales moves the output.
    packed = random_blocks(qtype, 3, 512)
    base = dequantize(torch.from_numpy(packed), qtype, (3, 512))
    for offset in (HALF_FIELDS[qtype][0] + 1, GGML_QUANT_SIZES[qtype][1] // 2):
        changed = packed.copy()
        changed[1, offset] ^= 0x10
        assert not torch.equal(dequantize(torch.from_numpy(changed), qtype, (3, 512)), base)


def test_other_types_fall_back_to_gguf_with_one_warning():
    values = np.random.default_rng(2).standard_normal((3, 256)).astype(np.float32)
    packed = quantize(values, Q.TQ2_0)
    dequant._warn_fallback.cache_clear()
    with pytest.warns(UserWarning, match="TQ2_0 has no torch unpacker"):
        ours = dequantize(torch.from_numpy(packed), Q.TQ2_0, (3, 256))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        dequantize(torch.from_numpy(packed), Q.TQ2_0, (3, 256), torch.bfloat16)
    assert_bit_equal(ours, gguf_dequantize(packed, Q.TQ2_0))


def test_a_byte_count_that_disagrees_with_the_shape_is_refused():
    packed = torch.from_numpy(random_blocks(Q.Q8_0, 2, 64))
    with pytest.raises(ValueError, match="cannot hold a tensor of shape"):
        dequantize(packed, Q.Q8_0, (2, 96))
