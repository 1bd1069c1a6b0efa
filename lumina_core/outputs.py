"""Writing results to files: images (PNG, JPEG, WEBP) and videos (animated WEBP, MP4 through PyAV).

Every file appears whole or not at all: it is written under a temporary name beside its target and renamed
into place, so an interrupted run never leaves a half-written output.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import InvalidInputError

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # file suffix -> PIL format
VIDEO_FORMATS = (".mp4", ".webp")


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) floats in [0, 1] -> RGB PIL images."""
    return [Image.fromarray(frame) for frame in to_uint8(images)]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) floats in [0, 1] -> (N, H, W, 3) uint8, rounded."""
    array = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return np.ascontiguousarray(array)


def output_paths(out: str | os.PathLike, count: int, video: bool = False) -> list[Path]:
    """Where `count` results go: `out`, or `out` with _0, _1 ... before the suffix for a batch.

    No suffix means .png (.webp for a video); an existing folder, or a suffix the format cannot take, raises
    InvalidInputError, so a caller can check the name before spending time on sampling.
    """
    out = Path(out)
    if out.is_dir():
        example = out / ("clip.webp" if video else "picture.png")
        raise InvalidInputError(f"cannot write {out}: it is a folder; name a file in it, e.g. {example}.")
    if not out.suffix:
        out = out.with_suffix(".webp" if video else ".png")
    allowed = VIDEO_FORMATS if video else tuple(IMAGE_FORMATS)
    if out.suffix.lower() not in allowed:
        kind, example = ("a video", "clip.mp4 or clip.webp") if video else ("images", "picture.png")
        raise InvalidInputError(
            f"cannot save {kind} as {out}: the extension {out.suffix!r} is not one of {', '.join(allowed)}; name the "
            f"output e.g. {example}."
        )
    return [out] if count == 1 else [out.with_stem(f"{out.stem}_{i}") for i in range(count)]


def check_writable(paths: list[Path]) -> None:
    """Raise InvalidInputError "cannot write PATH: reason" unless every path can be written, before any work.

    Creates missing parent folders (as saving does) and writes and removes a probe file beside each path, so a
    directory given as the output, a read-only folder or a full disk fails now rather than after sampling.
    """
    for path in paths:
        if path.is_dir():
            raise InvalidInputError(f"cannot write {path}: it is a folder; name a file in it.")
        with _atomic(path, keep=False) as tmp, open(tmp, "wb") as probe:
            probe.write(b"\0")


def save_images(images: list[Image.Image], out: str | os.PathLike) -> list[Path]:
    """Save to `output_paths(out, len(images))`."""
    paths = output_paths(out, len(images))
    for image, path in zip(images, paths, strict=True):
        with _atomic(path) as tmp:
            image.save(tmp, format=IMAGE_FORMATS[path.suffix.lower()])
    return paths


def save_videos(videos: torch.Tensor, out: str | os.PathLike, frame_rate: float) -> list[Path]:
    """Save (B, 3, T, H, W) frames in [0, 1] as B videos at `frame_rate`: .webp (animated, PIL) or .mp4 (H.264)."""
    paths = output_paths(out, videos.shape[0], video=True)
    for video, path in zip(videos, paths, strict=True):
        frames = to_uint8(video.transpose(0, 1))  # (T, H, W, 3)
        writer = _write_mp4 if path.suffix.lower() == ".mp4" else _write_webp
        with _atomic(path) as tmp:
            writer(frames, tmp, frame_rate)
    return paths


def _write_webp(frames: np.ndarray, path: str, frame_rate: float) -> None:
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, format="WEBP", save_all=True, append_images=images[1:], duration=round(1000 / frame_rate),
                   loop=0, lossless=False, quality=90)  # fmt: skip


def _write_mp4(frames: np.ndarray, path: str, frame_rate: float) -> None:
    av = _import_av()
    from fractions import Fraction

    with av.open(path, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(frame_rate).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "17"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


def _import_av():
    try:
        import av
    except ImportError:
        raise InvalidInputError(
            "saving .mp4 needs PyAV (pip install av); save as .webp instead, which needs nothing more."
        ) from None
    return av


@contextmanager
def _atomic(path: Path, keep: bool = True) -> Iterator[str]:
    """A temporary file name beside `path`, renamed to `path` when the block succeeds (keep) and removed otherwise.

    An OSError (no such folder, permission denied, disk full, a folder in the way) becomes InvalidInputError
    "cannot write PATH: reason", naming the output and not the temporary file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    except OSError as err:
        raise cannot_write(path, err) from None
    os.close(handle)
    try:
        yield tmp
        if keep:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; outputs get the usual permissions
            os.replace(tmp, path)
    except OSError as err:
        raise cannot_write(path, err) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cannot_write(path: Path, err: OSError) -> InvalidInputError:
    """ "cannot write PATH: reason" for an OSError met while writing `path` or a temporary file beside it."""
    return InvalidInputError(f"cannot write {path}: {_reason(err, path)}.")


def _reason(err: OSError, path: Path) -> str:
    """The OS's reason in words, naming the folder in the way when it is not the output itself or its temp file."""
    blocking = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        return f"{blocking} is a file, not a folder"
    reason = (err.strerror or str(err)).lower()
    name = os.fspath(err.filename) if err.filename else ""
    if not name or name == os.fspath(path) or os.path.basename(name).startswith(f".{path.stem}."):
        return reason
    return f"{reason}: {name}"


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask
