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


def rope_tables(
    lengths: tuple[int, ...], axes_dims: tuple[int, ...], theta: float, device: torch.device | str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per axis, cos and sin (lengths[a], axes_dims[a] / 2) float32 of the integer positions 0 .. lengths[a] - 1.

    The angles are float64, as `rope_angles` makes them, computed on `device` where it has float64 (CPU, CUDA) and
    on the CPU elsewhere (MPS): `rope_gather` then picks rows on the device by position, so positions that come
    from tensor values (Lumina 2's caption lengths) never have to visit the host.
    """
    home = device if torch.device(device).type in ("cpu", "cuda") else "cpu"
    tables = []
    for length, dim in zip(lengths, axes_dims, strict=True):
        positions = torch.arange(length, dtype=torch.float64, device=home)[:, None]
        cos, sin = rope_cos_sin(rope_angles(positions[None], (dim,), theta), device)  # (1, length, 1, dim / 2)
        tables.append((cos[0, :, 0], sin[0, :, 0]))
    return tables


def rope_gather(
    tables: list[tuple[torch.Tensor, torch.Tensor]], positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (B, L, 1, sum(axes_dims) / 2) of integer positions (B, L, n_axes), from `rope_tables`.

    Equal, bit for bit, to rope_cos_sin(rope_angles(positions, ...)): each axis block is the same float64 angle's
    cos/sin rounded to float32, looked up instead of recomputed.
    """
    cos = torch.cat([table[0][positions[..., axis]] for axis, table in enumerate(tables)], dim=-1)
    sin = torch.cat([table[1][positions[..., axis]] for axis, table in enumerate(tables)], dim=-1)
    return cos[:, :, None], sin[:, :, None]


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
