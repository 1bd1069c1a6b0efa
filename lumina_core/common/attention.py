"""The attention call shared by the model families."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention with grouped key/value heads and an optional key-padding mask.

    q: (B, L, H, D); k, v: (B, S, Hkv, D) with H a multiple of Hkv (grouped-query attention, no copy of
    k/v is made); key_mask: (B, S) bool, True where a key may be attended to, or None for all keys.
    Returns (B, L, H * D).
    """
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, L, H, D) -> (B, H, L, D)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(1, 2).flatten(2)  # (B, H, L, D) -> (B, L, H * D)
