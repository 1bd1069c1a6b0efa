"""Tiled decoding for the LTX-Video VAE: decode overlapping latent tiles over space and time one at a time and
blend them with linear ramps, so peak memory follows the tile size instead of the video size.

Placement in video space: latent rows/columns [a, b) decode to pixels [a*s, b*s) (s the spatial ratio, 32);
latent frames [a, b) decode to frames [a*r, (b-1)*r + 1) (r the temporal ratio, 8): a tile's first latent frame
gives a single frame, as the video's first latent frame does. Where tiles overlap, each tile's weight ramps from
near 0 at its edge to 1 across the overlap, and the weights are normalised per axis so they sum to 1 everywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError


@dataclass(frozen=True)
class TileSettings:
    """Tile sizes in latent units (x32 pixels, x8 frames for the released VAEs).

    The defaults (16 latent px = 512 px tiles sharing 128 px; 8 latent frames = 57 frames sharing 9) split a
    768x512x97 decode into 2 x 1 x 2 tiles.
    """

    size: int = 16  # latent rows/columns per tile
    overlap: int = 4  # latent rows/columns shared by neighbouring tiles
    frames: int = 8  # latent frames per tile
    frame_overlap: int = 2  # latent frames shared by neighbouring tiles; at least 1, or frames would be skipped

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < self.size or not 1 <= self.frame_overlap < self.frames:
            raise InvalidInputError(
                f"TileSettings needs 0 <= overlap < size and 1 <= frame_overlap < frames (a tile that shares its "
                f"first latent frame with the previous one, so no video frame is left out); got {self}."
            )


# What a whole decode falls back to when it runs out of memory: 512 px tiles sharing 128 px, 57 frames sharing 17.
FALLBACK_TILES = TileSettings(size=16, overlap=4, frames=7, frame_overlap=2)


@dataclass(frozen=True)
class _Span:
    latent: slice  # latent indices of the tile along one axis
    pixels: slice  # where its decoded output lands along that axis
    weight: torch.Tensor  # (pixels,) blending weight, already normalised across tiles


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Starts of tiles of `size` covering [0, length), `overlap` apart at least; the last tile ends at `length`."""
    if length <= size:
        return [0]
    return [*range(0, length - size, size - overlap), length - size]


def _spans(length: int, size: int, overlap: int, to_pixels: Callable[[int, int], tuple[int, int]]) -> list[_Span]:
    ranges = [(a, min(a + size, length)) for a in tile_starts(length, size, overlap)]
    pixel_ranges = [to_pixels(a, b) for a, b in ranges]
    total = torch.zeros(pixel_ranges[-1][1])
    ramps = []
    for i, (start, end) in enumerate(pixel_ranges):
        ramp = torch.ones(end - start)
        if i > 0:  # rise across the overlap with the previous tile
            shared = pixel_ranges[i - 1][1] - start
            ramp[:shared] = (torch.arange(shared) + 0.5) / shared
        if i + 1 < len(pixel_ranges):  # fall across the overlap with the next tile
            shared = end - pixel_ranges[i + 1][0]
            ramp[end - start - shared :] = torch.minimum(
                ramp[end - start - shared :], (shared - 0.5 - torch.arange(shared)) / shared
            )
        total[start:end] += ramp
        ramps.append(ramp)
    return [
        _Span(slice(a, b), slice(start, end), ramp / total[start:end])
        for (a, b), (start, end), ramp in zip(ranges, pixel_ranges, ramps)
    ]


def decode_tiled(
    decode_tile: Callable[[torch.Tensor, tuple[int, int, int, int]], torch.Tensor],
    latent: torch.Tensor,
    settings: TileSettings,
    spatial_ratio: int,
    temporal_ratio: int,
) -> torch.Tensor:
    """Decode `latent` (B, C, F, H, W) tile by tile; returns float32 (B, 3, r(F-1)+1, sH, sW).

    decode_tile(latent_tile, window) returns the tile's float32 frames, which are then scaled in place; window is
    the tile's latent (top, left, height, width), for noise that must line up across tiles.
    """
    b, _, frames, height, width = latent.shape
    time_spans = _spans(frames, settings.frames, settings.frame_overlap,
                        lambda a, e: (a * temporal_ratio, (e - 1) * temporal_ratio + 1))  # fmt: skip
    row_spans, column_spans = (
        _spans(n, settings.size, settings.overlap, lambda a, e: (a * spatial_ratio, e * spatial_ratio))
        for n in (height, width)
    )
    out = torch.zeros(
        b, 3, (frames - 1) * temporal_ratio + 1, height * spatial_ratio, width * spatial_ratio, device=latent.device
    )
    for t, y, x in itertools.product(time_spans, row_spans, column_spans):
        window = (y.latent.start, x.latent.start, y.latent.stop - y.latent.start, x.latent.stop - x.latent.start)
        decoded = decode_tile(latent[:, :, t.latent, y.latent, x.latent], window)
        # separable weight (T, H, W): per-axis normalisation makes the product sum to 1 over the tile grid
        weight = t.weight[:, None, None] * y.weight[None, :, None] * x.weight[None, None, :]
        out[:, :, t.pixels, y.pixels, x.pixels] += decoded.mul_(weight.to(out.device))
    return out
