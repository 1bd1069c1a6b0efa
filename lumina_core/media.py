"""Reading images and videos from files, for conditioning and video-to-video: stills and animated images through
PIL (PNG, JPEG, WEBP, GIF), other videos (MP4, MOV, MKV, WEBM ...) through PyAV when it is installed.

The container is recognised from the file's contents (PIL's and FFmpeg's probes), never from its name; anything
neither can read is refused in one line naming the file.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageSequence, UnidentifiedImageError

from .errors import InvalidInputError

READABLE = "images (PNG, JPEG, WEBP, GIF) and videos (animated WEBP/GIF; MP4, MOV, MKV, WEBM with PyAV)"


def read_frames(path: str | os.PathLike, max_frames: int | None = None) -> torch.Tensor:
    """The frames of an image or video file as (T, 3, H, W) float32 in [0, 1]; T = 1 for a still image.

    max_frames: read at most this many frames from the start.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidInputError(f"{path}: no such file; expected {READABLE}.")
    try:
        with Image.open(path) as image:
            frames = [np.asarray(frame.convert("RGB")) for frame in _take(ImageSequence.Iterator(image), max_frames)]
    except UnidentifiedImageError:
        frames = _read_video(path, max_frames)
    except OSError as err:  # a recognised but damaged image
        raise InvalidInputError(f"{path} could not be read as an image ({err}); expected {READABLE}.") from None
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255


def _take(frames, limit: int | None) -> list:
    out = []
    for frame in frames:
        if limit is not None and len(out) >= limit:
            break
        out.append(frame)
    return out


def _read_video(path: str, max_frames: int | None) -> list[np.ndarray]:
    try:
        import av
    except ImportError:
        raise InvalidInputError(
            f"{path} is not an image PIL can read; reading it as a video needs PyAV (pip install av)."
        ) from None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InvalidInputError(f"{path} has no video stream; expected {READABLE}.")
            decoded = container.decode(container.streams.video[0])
            frames = [frame.to_ndarray(format="rgb24") for frame in _take(decoded, max_frames)]
    except av.error.FFmpegError as err:
        raise InvalidInputError(f"{path} is neither an image nor a video ({err}); expected {READABLE}.") from None
    if not frames:
        raise InvalidInputError(f"{path} holds no frames; expected {READABLE}.")
    return frames
