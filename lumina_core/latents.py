"""Latent normalisations: the one place that converts between a VAE's raw latent and a model's latent space.

z_model = (z_raw - shift) * scale. VAE weights do not carry these numbers, so they live here: a transformer's
`latent_format` says which space it samples in, an image VAE's `latent_format` which space its encode returns
and its decode takes. ComfyUI passes raw latents between nodes (its `LATENT`), so a node converts with
`to_model` on the way into a model and `to_raw` on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentFormat:
    scale: float
    shift: float = 0.0

    def to_model(self, raw: torch.Tensor) -> torch.Tensor:
        """A raw VAE latent in the model's space, float32."""
        return (raw.float() - self.shift) * self.scale

    def to_raw(self, latent: torch.Tensor) -> torch.Tensor:
        """A model-space latent as the VAE's raw latent, in float32 (what ComfyUI's LATENT holds)."""
        return latent.float() / self.scale + self.shift


FLUX = LatentFormat(0.3611, 0.1159)  # FLUX.1 `ae`, used by Lumina-Image 2.0 (docs/models.md, 'Latent normalisations')
SDXL = LatentFormat(0.13025)  # SDXL VAE, used by Lumina-Next (same section)
# LTX-Video's VAE normalises its latent itself (per-channel statistics), so its raw latent is the model's.
IDENTITY = LatentFormat(1.0)

FLUX_CHANNELS, SDXL_CHANNELS = 16, 4

# Latent channels -> format, for VAEs recognised by their shapes alone.
BY_CHANNELS = {FLUX_CHANNELS: FLUX, SDXL_CHANNELS: SDXL}
