"""Quantized weights kept packed: `QuantizedTensor` (what a GGUF file gives for a block-quantized tensor) and
`QuantizedLinear` (a Linear layer that holds the packed bytes and dequantizes them in each forward).

Neither pretends to be a float tensor: a `QuantizedLinear` has no `weight`, only a uint8 `packed` buffer, its
ggml type and its logical shape, so model code cannot pick up a uint8 "weight" by mistake (the trap
city96/ComfyUI-GGUF's tensor subclass falls into on MPS and in bf16 paths). The forward moves the packed
bytes (not a float copy) to the input's device, unpacks them there straight into the input's dtype, runs
`F.linear` and drops the weight, so at most one layer's float weight exists at a time. The packed bytes may sit on
any device (a host's partial loading leaves some on the CPU); the bias is cast to the input where it is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from torch import nn

from ..common.ops import cast_to
from .dequant import dequantize


@dataclass(frozen=True)
class QuantizedTensor:
    """A block-quantized tensor still in its packed form.

    packed: uint8 (rows, row_bytes), rows along the ggml rows (for a Linear weight: the output features).
    shape: the logical torch shape (a Linear weight: (out_features, in_features)).
    source: file and key, for messages.
    """

    packed: torch.Tensor
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    source: str = ""

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        packed = self.packed if device is None else self.packed.to(device)
        return dequantize(packed, self.qtype, self.shape, dtype)


def concat_rows(tensors: list[torch.Tensor | QuantizedTensor]) -> torch.Tensor | QuantizedTensor:
    """Stack tensors along dim 0 (a split q/k/v into a fused qkv).

    Blocks never cross rows, so packed rows of one type concatenate as bytes and stay quantized; mixed
    types (a Q4_K_M file's V in Q6_K beside Q/K in Q4_K) are dequantized to float32 first.
    """
    if len(tensors) == 1:
        return tensors[0]
    quantized = [t for t in tensors if isinstance(t, QuantizedTensor)]
    if quantized and len(quantized) == len(tensors) and len({t.qtype for t in quantized}) == 1:
        first = quantized[0]
        packed = torch.cat([t.packed for t in quantized])
        shape = (sum(t.shape[0] for t in quantized), *first.shape[1:])
        return QuantizedTensor(packed, first.qtype, shape, first.source)
    return torch.cat([t.dequantize() if isinstance(t, QuantizedTensor) else t.float() for t in tensors])


def same_values(a: torch.Tensor | QuantizedTensor, b: torch.Tensor | QuantizedTensor) -> bool:
    """Whether two stored tensors are identical copies (same type and bytes, or equal values)."""
    if isinstance(a, QuantizedTensor) and isinstance(b, QuantizedTensor):
        return a.qtype == b.qtype and a.shape == b.shape and torch.equal(a.packed, b.packed)
    if isinstance(a, QuantizedTensor) or isinstance(b, QuantizedTensor):
        return False
    return torch.equal(a, b)


class QuantizedLinear(nn.Module):
    """`nn.Linear` whose weight stays in a ggml block format until the forward needs it.

    Buffers: `packed` (out_features, row_bytes) uint8; `bias` is an ordinary float parameter (or None).
    The weight is dequantized on every call into the input's dtype on the input's device and not kept. A host
    subclasses it to cooperate with its memory manager and hands the subclass in as `operations.QuantizedLinear`.
    """

    # There is no float weight to show. Code that probes `layer.weight` (transformers' T5 feed-forward casts its
    # input to `wo.weight.dtype` when that is a tensor) sees None and leaves the input's dtype alone.
    weight = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        qtype: GGMLQuantizationType,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        if in_features % block_size:
            raise ValueError(f"{qtype.name} packs rows in blocks of {block_size}; {in_features} input features do not.")
        self.in_features, self.out_features, self.qtype = in_features, out_features, qtype
        row_bytes = in_features // block_size * type_size
        self.register_buffer("packed", torch.empty((out_features, row_bytes), dtype=torch.uint8, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight: QuantizedTensor, device: torch.device | str) -> QuantizedLinear:
        """A replacement for `linear` (any device, meta included) holding `weight`'s bytes on `device`.

        The bias, if any, is left on `linear`'s device to be loaded like any other parameter.
        """
        layer = cls(linear.in_features, linear.out_features, weight.qtype, bias=False, device="meta")
        layer.packed = weight.packed.to(device)
        layer.bias = linear.bias
        return layer

    def dequantized_weight(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        packed = self.packed.to(device, non_blocking=True)
        return dequantize(packed, self.qtype, (self.out_features, self.in_features), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else cast_to(self.bias, x)
        return F.linear(x, self.dequantized_weight(x.dtype, x.device), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype.name}, " \
            f"bias={self.bias is not None}"  # fmt: skip
