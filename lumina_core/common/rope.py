"""Multi-axis rotary position embeddings (RoPE) with adjacent-pair rotation.

Each token has one integer position per axis (Lumina-Image 2.0: caption index, patch row, patch
column). Axis a owns `axes_dims[a]` channels of every head, the axes' channel blocks are
concatenated (not interleaved), and inside a block channels (2k, 2k+1) form one complex number
rotated by position * theta ** (-2k / axes_dims[a]).

Resolution extrapolation (Lumina-Next, arXiv 2406.18583 §2.3) rescales the frequencies: a linear
factor divides every frequency (position interpolation) and an NTK factor multiplies theta.
"""

from __future__ import annotations

import torch


def rope_angles(
    positions: torch.Tensor,
    axes_dims: tuple[int, ...],
    theta: float,
    linear_factor: float = 1.0,
    ntk_factor: float = 1.0,
) -> torch.Tensor:
    """Rotation angles for integer positions.

    positions: (B, L, n_axes) integer or float positions.
    linear_factor: frequencies are divided by it (positions squeezed into the trained range); 1 = off.
    ntk_factor: theta is multiplied by it (low frequencies stretched more than high ones); 1 = off.
    Returns (B, L, sum(axes_dims) / 2) float64 angles, one per channel pair, axis blocks concatenated.
    """
    angles = []
    for axis, dim in enumerate(axes_dims):
        exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim
        inv_freq = 1.0 / ((theta * ntk_factor) ** exponents) / linear_factor
        angles.append(positions[..., axis, None].double() * inv_freq)
    return torch.cat(angles, dim=-1)


def rope_cos_sin(
    angles: torch.Tensor, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of (B, L, D/2) angles, shaped (B, L, 1, D/2) to broadcast over heads, on `device`.

    Compute the angles on the CPU: they are float64 (as the reference does) and MPS has no float64.
    """
    cos, sin = torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)
    return cos[:, :, None].to(device), sin[:, :, None].to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x (B, L, H, D) by the angles behind cos/sin (B, L, 1, D/2).

    Computed in the precision of cos/sin (float32 by default) and returned in x's dtype.
    """
    pairs = x.to(cos.dtype).unflatten(-1, (-1, 2))  # (B, L, H, D/2, 2)
    real, imag = pairs.unbind(-1)
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)
