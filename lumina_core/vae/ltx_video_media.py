"""Images and clips to LTX-Video conditioning items: fitted to the video's size, then encoded.

An item of another size is centre-cropped to the video's aspect ratio and resized bilinearly, as ComfyUI's
LTXVImgToVideo and the original inference script do (diffusers' LTXConditionPipeline stretches instead: no crop,
nearest-neighbour for tensors), and a clip whose length is not 8k + 1 keeps its first 8k + 1 frames (as diffusers
and ComfyUI trim), each with one warning per item saying so.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from ..models.ltxv_keyframes import VideoCondition
from .ltx_video import LTXVideoVAE, fit_image

logger = logging.getLogger("lumina_core.video")


@dataclass(frozen=True)
class VideoGuide:
    """An image or clip in pixels, for `encode_conditions`.

    media: an image (B, 3, H, W) or a clip (B, 3, T, H, W) of 8k + 1 frames, float in [0, 1], any size.
    frame_index, strength: as in VideoCondition (the pixel frame of the item's first frame, negative from the end;
    1 = keep it exactly).
    """

    media: torch.Tensor
    frame_index: int = 0
    strength: float = 1.0


def encode_condition(
    vae: LTXVideoVAE,
    guide: VideoGuide,
    height: int,
    width: int,
    number: int = 1,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> VideoCondition:
    """Encode one guide for a video of height x width pixels (multiples of the VAE's 32); number names it in
    messages; device, dtype: where the VAE encodes (`LTXVideoVAE.encode`). Returns a VideoCondition with the
    posterior-mean latent (1 or B, 128, 1 + k, height/32, width/32), float32 on that device."""
    media = guide.media
    if media.ndim == 4:
        media = media[:, :, None]  # an image is a one-frame clip
    if media.ndim != 5 or media.shape[1] != 3:
        raise InvalidInputError(
            f"condition {number} has shape {tuple(guide.media.shape)}; pass an image (B, 3, H, W) or a clip "
            "(B, 3, frames, H, W), float in [0, 1]."
        )
    latent = encode_video(vae, media, height, width, f"condition {number}", device, dtype)
    return VideoCondition(latent, guide.frame_index, guide.strength)


def encode_conditions(
    vae: LTXVideoVAE,
    guides: Sequence[VideoGuide],
    height: int,
    width: int,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> list[VideoCondition]:
    """`encode_condition` for each guide, numbered from 1 in messages."""
    return [encode_condition(vae, guide, height, width, number, device, dtype)
            for number, guide in enumerate(guides, start=1)]  # fmt: skip


def encode_video(
    vae: LTXVideoVAE,
    frames: torch.Tensor,
    height: int,
    width: int,
    name: str = "the video",
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Frames (B, 3, T, H, W) in [0, 1], any size and length, -> the normalised latent of a height x width video
    (video-to-video's init_latent, or a condition's): frames past the last 8k + 1 are dropped and another size is
    centre-cropped and resized, each with one warning naming `name`. device, dtype: where the VAE encodes."""
    batch, _, count, in_height, in_width = frames.shape
    usable = (count - 1) // vae.temporal_ratio * vae.temporal_ratio + 1
    if usable < count:
        _warn(f"{name} has {count} frames; LTX-Video encodes 8k + 1, so its first {usable} are used")
        frames = frames[:, :, :usable]
    if (in_height, in_width) != (height, width):
        _warn(f"{name} is {in_width}x{in_height}; it was centre-cropped to the video's aspect ratio and resized to "
              f"{width}x{height}")  # fmt: skip
        flat = frames.float().transpose(1, 2).flatten(0, 1)  # (B, 3, T, H, W) -> (B*T, 3, H, W)
        frames = fit_image(flat, height, width).unflatten(0, (batch, usable)).transpose(1, 2)
    return vae.encode(frames.float(), device, dtype)


def _warn(message: str) -> None:
    logger.warning(message)
    warnings.warn(message, stacklevel=3)
