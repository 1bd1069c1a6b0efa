"""Latent normalisations: z_model = (z_vae - shift) * scale. VAE weights do not carry these numbers."""

FLUX = (0.3611, 0.1159)  # FLUX.1 `ae`, used by Lumina-Image 2.0 (docs/models.md, 'Latent normalisations')
SDXL = (0.13025, 0.0)  # SDXL VAE, used by Lumina-Next (same section)

FLUX_CHANNELS, SDXL_CHANNELS = 16, 4

# Latent channels -> (scale, shift), for VAEs recognised by their shapes alone.
BY_CHANNELS = {FLUX_CHANNELS: FLUX, SDXL_CHANNELS: SDXL}
