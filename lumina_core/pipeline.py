"""Prompt to pictures from checkpoint files, one model in memory at a time (text encoder, then DiT, then VAE).

This is what the CLI and the demo run; ComfyUI users wire the same steps as nodes.
"""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .conditioning import Conditioning
from .errors import InvalidInputError
from .loading.transformer import inspect_transformer, load_transformer
from .sampling import check_settings, sample
from .text import load_text_encoder
from .vae import load_vae

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # file suffix -> PIL format


# Settings whose best value depends on the model family, used where an ImageRequest leaves them None: the
# reference recipes (Lumina-Image 2.0's sample.py: shift 6 with renormalisation; Lumina-Next's demo: shift 4 and
# no renormalisation, lumina_next.md §7.1).
FAMILY_DEFAULTS = {
    "lumina2": {"shift": 6.0, "renorm_cfg": 1.0},
    "lumina_next": {"shift": 4.0, "renorm_cfg": 0.0},
}


@dataclass
class ImageRequest:
    """Everything `text_to_image` needs; defaults follow `lumina_core.sample`, and None takes the family's
    default (FAMILY_DEFAULTS). system_prompt applies to Lumina-Image 2.0 only (Lumina-Next has no template).
    model_options: the model's own keywords (Lumina-Next's rope_scaling, context_drop_ratio...)."""

    prompt: str
    negative_prompt: str = ""
    system_prompt: str = "real"
    width: int = 1024
    height: int = 1024
    batch_size: int = 1
    seed: int = 0
    steps: int = 30
    cfg: float = 4.0
    shift: float | None = None
    solver: str = "euler"
    schedule: str = "shifted_linear"
    cfg_trunc: float = 1.0
    renorm_cfg: float | None = None
    model_options: dict | None = None

    def for_family(self, family: str) -> ImageRequest:
        """A copy with the settings left None filled in from the family's defaults."""
        defaults = FAMILY_DEFAULTS.get(family, FAMILY_DEFAULTS["lumina2"])
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' is the first CUDA device if there is one, else the CPU; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidInputError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(
            f"--device {name} asked for, but this torch has no CUDA device; use --device cpu or auto."
        )
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        raise InvalidInputError(
            f"--device {name} asked for, but this machine has {count} CUDA device(s); use cuda:0 to cuda:{count - 1}."
        )
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on GPUs that support it and fp32 elsewhere: Lumina-Image 2.0 overflows in fp16."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name not in DTYPES:
        raise InvalidInputError(f"dtype {name!r} is not one of auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def text_to_image(
    transformer: str | os.PathLike,
    text_encoder: str | os.PathLike,
    vae: str | os.PathLike,
    request: ImageRequest,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_step: Callable[[int, int], None] | None = None,
) -> list[Image.Image]:
    """Run the whole text-to-image pipeline; the three paths may name the same all-in-one file.

    Sizes are checked against the transformer's rule before any weights are read, and each model is
    released before the next one loads, so peak memory is that of the largest model.
    """
    model = inspect_transformer(transformer)
    request = request.for_family(model.family)
    check_settings(
        steps=request.steps, cfg=request.cfg, batch_size=request.batch_size, solver=request.solver,
        schedule=request.schedule, shift=request.shift, cfg_trunc=request.cfg_trunc, renorm_cfg=request.renorm_cfg,
    )  # fmt: skip
    model.latent_shape(request.batch_size, request.height, request.width)
    positive, negative = _encode(text_encoder, request, dtype, device)
    _free_memory()
    latent = _sample(transformer, positive, negative, request, dtype, device, on_step)
    _free_memory()
    images = _decode(vae, latent, dtype, device)
    _free_memory()
    return to_pil(images)


def _encode(path, request: ImageRequest, dtype, device) -> tuple[Conditioning, Conditioning]:
    encoder = load_text_encoder(path, dtype=dtype, device=device)
    template = request.system_prompt if encoder.family == "lumina2" else None
    positive = encoder.encode([request.prompt], system_prompt=template)
    negative = encoder.encode([request.negative_prompt], system_prompt=template, negative=True)
    return positive, negative


def _sample(path, positive, negative, request: ImageRequest, dtype, device, on_step) -> torch.Tensor:
    model = load_transformer(path, dtype=dtype, device=device)
    callback = None if on_step is None else (lambda i, total, x, denoised: on_step(i + 1, total))
    return sample(
        model, positive, negative, width=request.width, height=request.height, batch_size=request.batch_size,
        seed=request.seed, steps=request.steps, cfg=request.cfg, shift=request.shift, solver=request.solver,
        schedule=request.schedule, cfg_trunc=request.cfg_trunc, renorm_cfg=request.renorm_cfg, callback=callback,
        model_options=request.model_options,
    )  # fmt: skip


def _decode(path, latent: torch.Tensor, dtype, device) -> torch.Tensor:
    vae = load_vae(path, dtype=dtype, device=device)
    with torch.inference_mode():
        return vae.decode(latent)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) floats in [0, 1] -> RGB PIL images."""
    array = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def output_paths(out: str | os.PathLike, count: int) -> list[Path]:
    """Where `save_images` puts `count` images: `out`, or `out` with _0, _1 ... before the suffix for a batch.

    No suffix means .png; a suffix other than IMAGE_FORMATS raises InvalidInputError, so a caller can check
    the name before spending time on the images.
    """
    out = Path(out)
    if not out.suffix:
        out = out.with_suffix(".png")
    if out.suffix.lower() not in IMAGE_FORMATS:
        raise InvalidInputError(
            f"cannot save images as {out}: the extension {out.suffix!r} is not png, jpg or webp; name the output "
            "e.g. picture.png (no extension saves a .png)."
        )
    return [out] if count == 1 else [out.with_stem(f"{out.stem}_{i}") for i in range(count)]


def save_images(images: list[Image.Image], out: str | os.PathLike) -> list[Path]:
    """Save to `output_paths(out, len(images))`; each file appears whole or not at all."""
    paths = output_paths(out, len(images))
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for image, path in zip(images, paths):
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
        os.close(handle)
        try:
            image.save(tmp, format=IMAGE_FORMATS[path.suffix.lower()])
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return paths


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
