"""Decoding nodes: Lumina VAE decode to IMAGE, and the video decoder slot for LTX-Video."""

from __future__ import annotations

import lumina_core

from . import comfy_bridge as bridge
from .handles import Handle

CATEGORY = "Lumina"


class LuminaVAEDecode:
    DISPLAY_NAME = "Lumina VAE Decode"
    DESCRIPTION = "Decodes a LATENT (raw VAE space, as core nodes use) to images."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("LUMINA_VAE", {"tooltip": "From Load Lumina VAE."}),
            "samples": ("LATENT", {"tooltip": "From Flow Sampler, or any FLUX-VAE latent."}),
        }}  # fmt: skip

    def decode(self, vae: Handle, samples: dict):
        latent = samples["samples"]
        if latent.ndim != 4 or latent.shape[1] != vae.model.latent_channels:
            raise lumina_core.InvalidInputError(
                f"this VAE ({vae.source}) decodes {vae.model.latent_channels}-channel image latents; got a latent "
                f"of shape {tuple(latent.shape)}: is it from a model of another family?"
            )
        with vae.placed() as module:
            images = module.decode((latent.float() - module.shift) * module.scale)  # (B, 3, H, W) in [0, 1]
        return (images.permute(0, 2, 3, 1).to(bridge.intermediate_device()),)


class LTXVideoDecode:
    DISPLAY_NAME = "LTX-Video Decode"
    DESCRIPTION = "Decodes an LTX-Video latent to frames. Not built yet: it says so when run."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("LUMINA_VAE", {"tooltip": "The LTX-Video causal video VAE."}),
            "samples": ("LATENT", {"tooltip": "A video latent (B, 128, T, H, W)."}),
        }}  # fmt: skip

    def decode(self, vae: Handle, samples: dict):
        raise lumina_core.UnsupportedModelError(
            "LTX-Video decoding is not built yet in this pack; text-to-video arrives with the LTX-Video support."
        )
