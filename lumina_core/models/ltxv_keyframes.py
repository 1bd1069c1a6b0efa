"""LTX-Video conditioning on images and short clips at any frame (keyframes, last frame, interpolation).

Follows the placement of Lightricks/LTX-Video's `LTXVideoPipeline.prepare_conditioning` (0.9.5+), which diffusers'
`LTXConditionPipeline` reproduces and our parity tests compare against. Each item is a VAE latent (an image is one
latent frame, a clip of 8k + 1 frames is 1 + k), a pixel frame index in the output video and a strength:

- At frame 0 the item is written **in place** over the first latent frames: the VAE's first latent frame holds
  pixel frame 0 alone, exactly what an image or a clip's first frame encodes to.
- Anywhere else an image cannot replace a latent frame (a latent frame k >= 1 encodes the 8 pixel frames
  8k - 7 .. 8k, an image one), so its token grid is **appended** to the sequence as extra latent frames whose RoPE
  frame coordinate is the pixel frame index; the model attends to them and they are dropped after sampling. Images
  may therefore sit on any frame, not only on the latent's temporal stride.
- A clip at frame i > 0 must start on the stride (i a multiple of 8): its first 2 latent frames (the lone first
  frame and the next 8, whose statistics differ from interior frames) are appended at positions i + the causal
  offsets of latent frames 0 and 1, and its remaining latent frames replace the video's latent frames
  i / 8 + 2 onwards, which cover the same pixel frames.

Strength s gives the item's tokens the noise level m = 1 - s: they start as (1 - m)·latent + m·noise, the model
sees them at sigma min(sigma, m), and they stay put until the schedule falls below m, then are denoised with the
rest (the original's and diffusers' rule). s = 1 keeps the item exactly; s = 0 only starts those tokens from it.

ComfyUI core's LTXVAddGuide / LTXVCropGuides (0.3.64) differ: they append every guide, including one at frame 0
(marking the in-place frame as generated), at the end of the sequence; their RoPE frame coordinates are not causal
(8j + index) except at frame 0; a clip index snaps down to 8k + 1 instead of a multiple of 8, and its in-place
frames start one latent frame later; and a strength below 1 follows ComfyUI's noise-mask blend, not the level rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from .ltxv import VAE_SCALE_FACTORS, frame_positions

# Latent frames of a clip placed after frame 0 that become appended tokens rather than in-place frames: the
# first (one pixel frame, causally encoded) and the second (Lightricks' num_prefix_latent_frames).
CLIP_PREFIX_FRAMES = 2


@dataclass(frozen=True)
class VideoCondition:
    """An image or clip to condition on, already encoded (`lumina_core.vae.encode_condition` makes one).

    latent: (1 or B, C, f, h, w) float, normalised like the video latent (LTXVideoVAE.encode); f = 1 for an image,
        1 + k for a clip of 8k + 1 frames; h, w the video latent's.
    frame_index: the pixel frame of the output video where the item's first frame goes; negative counts from the
        end (-1 = the last frame).
    strength: in [0, 1]; 1 keeps the item as given, lower lets the sampler change it (noise level 1 - strength).
    """

    latent: torch.Tensor
    frame_index: int = 0
    strength: float = 1.0

    @property
    def pixel_frames(self) -> int:
        return (self.latent.shape[2] - 1) * VAE_SCALE_FACTORS[0] + 1


@dataclass(frozen=True)
class KeyframePlan:
    """The latent the sampler integrates once the conditions are placed.

    init:            (B, C, G + F, H, W) float32: G appended guide frames, then the video's F frames with in-place
                     items written over init_latent (zeros without one).
    levels:          (B, 1, G + F, H, W) float32 noise level of each token: 1 generated, 1 - strength for items,
                     the caller's noise_mask elsewhere.
    frame_positions: (G + F,) float32 pixel-frame coordinate of each latent frame, for the model's RoPE.
    guide_frames:    G, the frames to drop after sampling (the first G).
    guide_noise_frames: the latent frame count of each appended block, in the order its start noise is drawn.
    """

    init: torch.Tensor
    levels: torch.Tensor
    frame_positions: torch.Tensor
    guide_frames: int
    guide_noise_frames: tuple[int, ...]


def plan_keyframes(
    conditions: Sequence[VideoCondition],
    latent_shape: Sequence[int],
    causal: bool,
    init_latent: torch.Tensor | None = None,
    levels: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> KeyframePlan:
    """Place `conditions` in a video latent of `latent_shape` (B, C, F, H, W); see the module docstring.

    causal: the model's `causal_temporal_positioning` (True for 0.9.5+), which sets the RoPE frame coordinate of
    every latent frame, the appended ones included. init_latent (1 or B, C, F, H, W): the latent to start from
    (video-to-video) instead of zeros. levels (B, 1, F, H, W): noise levels already set (a noise_mask), else 1.
    Raises InvalidInputError, one line naming the item, for indices outside the video, clips off the temporal
    stride (with the nearest valid index), latents of another shape, strengths outside [0, 1] and items that
    overwrite the same latent frames.
    """
    batch, channels, frames, height, width = latent_shape
    video_frames = (frames - 1) * VAE_SCALE_FACTORS[0] + 1
    init = torch.zeros(latent_shape, device=device) if init_latent is None else init_latent.to(device).float()
    init = init.expand(latent_shape).clone()
    levels = torch.ones(batch, 1, frames, height, width, device=device) if levels is None else levels.clone()
    written: dict[int, int] = {}  # latent frame -> the item that wrote it
    guides, guide_levels, guide_positions = [], [], []
    for number, item in enumerate(conditions, start=1):
        latent = _checked_latent(item, number, latent_shape).to(device).expand(batch, -1, -1, -1, -1)
        start = _frame_index(item, number, video_frames)
        level = 1.0 - item.strength
        in_place = latent if start == 0 else latent[:, :, CLIP_PREFIX_FRAMES:]
        first = 0 if start == 0 else start // VAE_SCALE_FACTORS[0] + CLIP_PREFIX_FRAMES
        for frame in range(first, first + in_place.shape[2]):
            if frame in written:
                raise InvalidInputError(
                    f"conditions {written[frame]} and {number} both cover latent frame {frame} (pixel frames "
                    f"{_pixel_span(frame)}): move one of them or drop it."
                )
            written[frame] = number
        init[:, :, first : first + in_place.shape[2]] = in_place
        levels[:, :, first : first + in_place.shape[2]] = level
        if start > 0:
            appended = latent[:, :, :CLIP_PREFIX_FRAMES]
            guides.append(appended)
            guide_levels.append(torch.full((batch, 1, *appended.shape[2:]), level, device=device))
            guide_positions.append(frame_positions(appended.shape[2], causal, device) + start)
    positions = frame_positions(frames, causal, device)
    return KeyframePlan(
        init=torch.cat([*guides, init], dim=2),
        levels=torch.cat([*guide_levels, levels], dim=2),
        frame_positions=torch.cat([*guide_positions, positions]),
        guide_frames=sum(g.shape[2] for g in guides),
        guide_noise_frames=tuple(g.shape[2] for g in guides),
    )


def _checked_latent(item: VideoCondition, number: int, latent_shape: Sequence[int]) -> torch.Tensor:
    if not isinstance(item, VideoCondition):
        raise InvalidInputError(f"condition {number} is a {type(item).__name__}; pass VideoCondition items.")
    batch, channels, _, height, width = latent_shape
    latent = item.latent
    if latent.ndim != 5 or latent.shape[1] != channels or tuple(latent.shape[3:]) != (height, width):
        raise InvalidInputError(
            f"condition {number} has a latent of shape {tuple(latent.shape)}; the video latent is "
            f"{tuple(latent_shape)}, so it must be (1 or {batch}, {channels}, frames, {height}, {width}): encode "
            "the image or clip at the video's size (encode_condition resizes it)."
        )
    if latent.shape[0] not in (1, batch):
        raise InvalidInputError(f"condition {number} has batch {latent.shape[0]}; the video has batch {batch}.")
    if not 0.0 <= item.strength <= 1.0:
        raise InvalidInputError(
            f"condition {number} has strength {item.strength}; it must lie in [0, 1] (1 = keep the item exactly)."
        )
    return latent.float()


def _frame_index(item: VideoCondition, number: int, video_frames: int) -> int:
    """The item's first pixel frame, from 0; checks that it lies in the video and, for a clip, on the stride."""
    stride = VAE_SCALE_FACTORS[0]
    kind = "image" if item.pixel_frames == 1 else f"{item.pixel_frames}-frame clip"
    if not -video_frames <= item.frame_index < video_frames:
        raise InvalidInputError(
            f"condition {number} ({kind}) is at frame {item.frame_index}, outside the {video_frames}-frame video: "
            f"use 0 to {video_frames - 1} (or -1 to -{video_frames} from the end)."
        )
    start = item.frame_index % video_frames
    last_start = video_frames - item.pixel_frames
    if last_start < 0:
        raise InvalidInputError(
            f"condition {number} is a {kind}, longer than the {video_frames}-frame video: use at most "
            f"{video_frames} frames."
        )
    if item.pixel_frames > 1 and start % stride:
        nearest = min(round(start / stride) * stride, last_start // stride * stride)
        raise InvalidInputError(
            f"condition {number} ({kind}) starts at frame {start}: a clip must start at frame 0 or a multiple of "
            f"{stride} (the latent's temporal stride); the nearest valid index is {nearest}."
        )
    if start > last_start:
        raise InvalidInputError(
            f"condition {number} ({kind}) at frame {start} runs past the end of the {video_frames}-frame video "
            f"(its last frame would be {start + item.pixel_frames - 1}): start it at frame {last_start} at the latest."
        )
    return start


def _pixel_span(latent_frame: int) -> str:
    stride = VAE_SCALE_FACTORS[0]
    return "0" if latent_frame == 0 else f"{latent_frame * stride - stride + 1}-{latent_frame * stride}"
