"""LTX-Video's multi-scale recipe (0.9.7 / 0.9.8): generate small, upsample the latent x2, refine at the larger size.

Follows Lightricks/LTX-Video's `LTXMultiScalePipeline` and diffusers' `LTXLatentUpsamplePipeline`:

1. the first pass samples at `downscale` (2/3) of the requested size, each side rounded down to a multiple of 32;
2. `upsample_latent`: the normalised latent is un-normalised with the VAE's per-channel statistics (the upsampler
   works on the decoder's input scale), upsampled, optionally AdaIN-matched to the first pass's per-channel
   statistics (the original always does, factor 1), and normalised again;
3. the second pass samples at twice the small size from that latent, noised to its first sigma (a distilled
   recipe's [0.9094, 0.725, 0.4219], or `denoise` of a schedule), with the conditions encoded again at that size;
4. optionally, the final latent is tone-mapped (the 13B 0.9.8 distilled config).

The result is 4/3 of the requested size (twice 2/3); the original resizes the decoded frames to the requested
size at the end, which is left to the caller here (the latent is what ComfyUI passes on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .common.ops import placement
from .conditioning import Conditioning
from .errors import InvalidInputError
from .models.ltxv import VAE_SCALE_FACTORS
from .models.ltxv_upsampler import LatentUpsampler
from .sampling import sample
from .sampling.recipes import named_recipe
from .vae.ltx_video import LTXVideoVAE
from .vae.ltx_video_media import VideoGuide, encode_conditions
from .validation import check_float

DOWNSCALE = 2 / 3  # the released multi-scale configs' downscale_factor (0.6666666)


def adain(latent: torch.Tensor, reference: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """Match each (sample, channel) of latent (B, C, ...) to reference's mean and standard deviation (unbiased, over
    all other dims), then blend: latent + factor·(matched - latent). Affine per-channel maps commute with it, so it
    gives the same result on normalised and un-normalised latents."""
    dims = tuple(range(2, latent.ndim))
    ref_std, ref_mean = torch.std_mean(reference, dim=dims, keepdim=True)
    std, mean = torch.std_mean(latent, dim=dims, keepdim=True)
    return torch.lerp(latent, (latent - mean) / std * ref_std + ref_mean, factor)


def tone_map(latent: torch.Tensor, compression: float) -> torch.Tensor:
    """Compress large latent values smoothly: x·(1 - 0.8·s·sigmoid(4·s·(|x| - 1))), s = 0.75·compression, with
    compression in [0, 1] (0 = identity). The original applies it to the final normalised latent before decoding."""
    if not 0.0 <= compression <= 1.0:
        raise InvalidInputError(f"tone-map compression must lie in [0, 1] (0 = none); got {compression}.")
    s = 0.75 * compression
    return latent * (1 - 0.8 * s * torch.sigmoid(4 * s * (latent.abs() - 1)))


@torch.no_grad()
def upsample_latent(
    upsampler: LatentUpsampler,
    latent: torch.Tensor,
    vae: LTXVideoVAE,
    adain_factor: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Upsample a normalised LTX latent (B, 128, F, H, W), as diffusers' LTXLatentUpsamplePipeline(latents=...,
    output_type="latent"): un-normalise with the VAE's per-channel statistics, run the upsampler, AdaIN to the input
    by adain_factor (0 = off; the original multi-scale pipeline uses 1), normalise again. Runs on `device` in `dtype`
    (default: where the upsampler's weights are, in its compute dtype); returns float32 on that device:
    (B, 128, F', 2H, 2W) for the spatial upsampler."""
    if latent.ndim != 5 or latent.shape[1] != vae.latent_channels:
        raise InvalidInputError(
            f"upsample_latent takes an LTX-Video latent (B, {vae.latent_channels}, frames, height, width); got "
            f"{tuple(latent.shape)}."
        )
    check_float("adain_factor", adain_factor, rule="how far to match the input's per-channel statistics; 0 = off")
    device, dtype = placement(upsampler, device, dtype)
    raw = latent.to(device=device, dtype=torch.float32)
    mean, std = vae.per_channel_statistics.mean_std(raw)
    scale = vae.config.scaling_factor
    raw = raw * std / scale + mean
    upsampled = upsampler(raw.to(dtype)).float()
    if adain_factor:
        upsampled = adain(upsampled, raw, adain_factor)
    return (upsampled - mean) * scale / std


@dataclass
class MultiscaleRecipe:
    """The two passes as `sample` keywords (steps / schedule / sigmas / cfg ...; the second pass starts from the
    upsampled latent, so it needs sigmas starting below 1 or a denoise below 1), and what happens in between.
    The default is the distilled 0.9.8 recipe."""

    first_pass: dict[str, Any] = field(default_factory=lambda: _recipe("ltxv-0.9.8-distilled"))
    second_pass: dict[str, Any] = field(default_factory=lambda: _recipe("ltxv-0.9.8-distilled-refine"))
    downscale: float = DOWNSCALE
    adain_factor: float = 1.0
    tone_map: float = 0.0


def _recipe(name: str) -> dict[str, Any]:
    recipe = named_recipe(name, "ltxv")
    return {"sigmas": recipe["sigmas"], "cfg": recipe["cfg"]}


def small_size(width: int, height: int, downscale: float = DOWNSCALE) -> tuple[int, int]:
    """The first pass's (width, height): each side times downscale, rounded down to a multiple of 32."""
    spatial = VAE_SCALE_FACTORS[1]
    small = tuple(int(side * downscale) // spatial * spatial for side in (width, height))
    if min(small) < spatial:
        raise InvalidInputError(
            f"{width}x{height} scaled by {downscale:.3f} leaves a side below {spatial} px: ask for a larger video."
        )
    return small


def multiscale_sample(
    model: torch.nn.Module,
    upsampler: LatentUpsampler,
    vae: LTXVideoVAE,
    positive: Conditioning,
    negative: Conditioning | None = None,
    *,
    width: int = 768,
    height: int = 512,
    frames: int = 97,
    guides: Sequence[VideoGuide] = (),
    recipe: MultiscaleRecipe | None = None,
    **options: Any,
) -> torch.Tensor:
    """The whole recipe (module docstring); returns the refined latent at twice `small_size(width, height)`.

    guides: images or clips at frames (`VideoGuide`), encoded for each pass at its size. options: further `sample`
    keywords for both passes (seed, batch_size, model_options, condition_noise_scale, callback, ...).
    """
    recipe = recipe or MultiscaleRecipe()
    small_width, small_height = small_size(width, height, recipe.downscale)
    first = sample(
        model, positive, negative, width=small_width, height=small_height, frames=frames,
        conditions=encode_conditions(vae, guides, small_height, small_width), **recipe.first_pass, **options,
    )  # fmt: skip
    upsampled = upsample_latent(upsampler, first, vae, recipe.adain_factor, device=options.get("device"))
    refined = sample(
        model, positive, negative, init_latent=upsampled,
        conditions=encode_conditions(vae, guides, 2 * small_height, 2 * small_width), **recipe.second_pass, **options,
    )  # fmt: skip
    return tone_map(refined, recipe.tone_map) if recipe.tone_map else refined
