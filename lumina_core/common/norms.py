"""Normalisation layers shared by the model families."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import cast_to


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis with a learned gain, computed in float32.

    Low-precision activations (bf16/fp16) are normalised in float32 and cast back, as the reference
    implementations do, because the mean of squares overflows fp16 for large hidden states. The gain is cast to
    the input's device and dtype where it is used.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return normed.to(x.dtype) * cast_to(self.weight, x)
