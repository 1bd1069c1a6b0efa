"""Images and clips to LTX-Video conditioning items: fitted to the video's size, then encoded.

An item of another size is centre-cropped to the video's aspect ratio and resized bilinearly, as ComfyUI's
LTXVImgToVideo and the original inference script do (diffusers' LTXConditionPipeline stretches instead: no crop,
nearest-neighbour for tensors), with one warning per item saying so.
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


def encode_condition(vae: LTXVideoVAE, guide: VideoGuide, height: int, width: int, number: int = 1) -> VideoCondition:
    """Encode one guide for a video of height x width pixels (multiples of the VAE's 32); number names it in
    messages. Returns a VideoCondition with the posterior-mean latent (1 or B, 128, 1 + k, height/32, width/32)."""
    media = guide.media
    if media.ndim == 4:
        media = media[:, :, None]  # an image is a one-frame clip
    if media.ndim != 5 or media.shape[1] != 3:
        raise InvalidInputError(
            f"condition {number} has shape {tuple(guide.media.shape)}; pass an image (B, 3, H, W) or a clip "
            "(B, 3, frames, H, W), float in [0, 1]."
        )
    frames = media.shape[2]
    stride = vae.temporal_ratio
    if (frames - 1) % stride:
        shorter = (frames - 1) // stride * stride + 1
        raise InvalidInputError(
            f"condition {number} is a clip of {frames} frames; LTX-Video encodes 8k + 1 frames (1, 9, 17, ...): "
            f"use its first {shorter}."
        )
    batch, _, _, in_height, in_width = media.shape
    if (in_height, in_width) != (height, width):
        message = (
            f"condition {number} is {in_width}x{in_height}; it was centre-cropped to the video's aspect ratio and "
            f"resized to {width}x{height}"
        )
        logger.warning(message)
        warnings.warn(message, stacklevel=2)
        flat = media.float().transpose(1, 2).flatten(0, 1)  # (B, 3, T, H, W) -> (B*T, 3, H, W)
        media = fit_image(flat, height, width).unflatten(0, (batch, frames)).transpose(1, 2)
    return VideoCondition(vae.encode(media.float()), guide.frame_index, guide.strength)


def encode_conditions(vae: LTXVideoVAE, guides: Sequence[VideoGuide], height: int, width: int) -> list[VideoCondition]:
    """`encode_condition` for each guide, numbered from 1 in messages."""
    return [encode_condition(vae, guide, height, width, number) for number, guide in enumerate(guides, start=1)]
