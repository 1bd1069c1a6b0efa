"""LoRA beside a layer instead of merged into it: y = layer(x) + up (down x).

For GGUF-quantized layers, whose packed weight cannot take a merged change: dequantizing and re-merging every layer
on every step is what makes several LoRAs slow on GGUF models elsewhere (city96/ComfyUI-GGUF#36). Here every LoRA on
a layer is stacked into one pair of factors when it is applied, so the forward adds two thin matmuls whatever the
number of LoRAs: (N, in) @ (in, R) then (N, R) @ (R, out), R the sum of their ranks, against the layer's own
(N, in) @ (in, out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common.ops import cast_to


class LowRankLinear(nn.Module):
    """A Linear layer (float or quantized) with low-rank changes computed beside it.

    down (R, in) and up (out, R) stack every change; up carries the strengths and alpha scales, and zero rows where a
    change covers only a row block (a fused qkv's q). Both are cast to the input's dtype and device per call.
    """

    def __init__(self, layer: nn.Module, down: torch.Tensor, up: torch.Tensor):
        super().__init__()
        self.layer = layer
        self.register_buffer("down", down)
        self.register_buffer("up", up)

    @property
    def in_features(self) -> int:
        return self.layer.in_features

    @property
    def out_features(self) -> int:
        return self.layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) + F.linear(F.linear(x, cast_to(self.down, x)), cast_to(self.up, x))

    def extra_repr(self) -> str:
        return f"rank={self.down.shape[0]}"
