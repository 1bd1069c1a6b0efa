"""The attention call shared by the model families."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention with grouped key/value heads and an optional key-padding mask.

    q: (B, L, H, D); k, v: (B, S, Hkv, D) with H a multiple of Hkv (grouped-query attention);
    key_mask: (B, S) bool, True where a key may be attended to, or None for all keys;
    scale: the softmax temperature on q.k, None for the usual D ** -0.5 (Lumina-Next's proportional
    attention passes its own). Returns (B, L, H * D).

    Without a mask, grouped kv heads go to SDPA as they are (no copy). With a mask they are repeated to H
    heads first: CUDA's flash kernel takes no mask and its memory-efficient kernel no grouped heads, so
    SDPA would otherwise fall back to the math kernel, which materialises the (B, H, L, S) scores.
    """
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, L, H, D) -> (B, H, L, D)
    groups = q.shape[1] // k.shape[1]
    mask = None
    if key_mask is not None:
        mask = key_mask[:, None, None, :]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            groups = 1
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=groups > 1)
    return out.transpose(1, 2).flatten(2)  # (B, H, L, D) -> (B, L, H * D)
