"""Timestep embeddings shared by the model families."""

from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of scalar times, cosine half first.

    t: (B,) float times in whatever scale the family trains with (Lumina: raw t in [0, 1]).
    Returns (B, dim) float32: [cos(t * f_k), sin(t * f_k)] with f_k = max_period ** (-k / (dim / 2)).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
