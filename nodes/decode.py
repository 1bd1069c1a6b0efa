"""Decoding nodes: Lumina VAE decode to IMAGE, LTX-Video decode to frames and their frame rate."""

from __future__ import annotations

from .. import lumina_core
from ..lumina_core.models.ltxv import DEFAULT_FRAME_RATE
from ..lumina_core.vae import TileSettings
from ..lumina_core.vae.ltx_video import DEFAULT_DECODE_NOISE_SCALE, DEFAULT_DECODE_TIMESTEP
from . import comfy_bridge as bridge
from .handles import Handle, decoding_memory

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
        if vae.family == "ltxv":
            raise lumina_core.InvalidInputError(
                f"{vae.source} is the LTX-Video video VAE: decode video latents with LTX-Video Decode."
            )
        if latent.ndim != 4 or latent.shape[1] != vae.model.latent_channels:
            raise lumina_core.InvalidInputError(
                f"this VAE ({vae.source}) decodes {vae.model.latent_channels}-channel image latents; got a latent "
                f"of shape {tuple(latent.shape)}: is it from a model of another family?"
            )
        device = vae.load(decoding_memory(vae.model, tuple(latent.shape)))
        images = vae.model.decode_raw(latent, device=device)  # (B, 3, H, W) in [0, 1]
        return (images.permute(0, 2, 3, 1).to(bridge.intermediate_device()),)


class LTXVideoDecode:
    DISPLAY_NAME = "LTX-Video Decode"
    DESCRIPTION = ("Decodes an LTX-Video latent to frames (an IMAGE batch, one image per frame) and passes the frame "
                   "rate on for the save node. Timestep-conditioned VAEs (0.9.1 and later) add a little seeded noise "
                   "and decode at a small timestep, as the reference does; 0.9.0 VAEs ignore both.")  # fmt: skip
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "FLOAT")
    RETURN_NAMES = ("frames", "frame_rate")
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("LUMINA_VAE", {"tooltip": "The LTX-Video VAE: Load Lumina VAE on the LTX-Video file (its vae.* "
                                              "part) or a separate LTX VAE file."}),
            "samples": ("LATENT", {"tooltip": "A video latent (B, 128, T, H, W) from Flow Sampler or core nodes."}),
            "decode_timestep": ("FLOAT", {"default": DEFAULT_DECODE_TIMESTEP, "min": 0.0, "max": 1.0, "step": 0.005,
                                          "tooltip": "The timestep the 0.9.1+ VAEs decode at (Lightricks' and "
                                          "ComfyUI's 0.05; diffusers' pipeline uses 0). 0.9.0 VAEs ignore it."}),
            "decode_noise_scale": ("FLOAT", {"default": DEFAULT_DECODE_NOISE_SCALE, "min": 0.0, "max": 1.0,
                                             "step": 0.005, "tooltip": "Noise mixed into the latent before a 0.9.1+ "
                                             "decode (0.025 as Lightricks and ComfyUI); 0.9.0 VAEs ignore it."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "tooltip": "For the decode noise, drawn on the CPU: the same video on any device."}),
            "tile_size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 32, "tooltip":
                          "Decode in overlapping tiles of this many pixels (a multiple of 32, at least 64; and "
                          "tile_frames frames) to bound memory; 0 = whole, falling back to 512 px / 57-frame tiles "
                          "if memory runs out."}),
            "tile_frames": ("INT", {"default": 57, "min": 17, "max": 1025, "step": 8,
                                    "tooltip": "Frames per tile when tiling (8k + 1)."}),
        }}  # fmt: skip

    @classmethod
    def VALIDATE_INPUTS(cls, tile_size):
        if tile_size != 0 and (tile_size < 64 or tile_size % 32):
            nearest = max(64, tile_size // 32 * 32)
            return f"tile_size {tile_size} must be 0 (whole) or a multiple of 32 from 64; try {nearest}."
        return True

    def decode(self, vae: Handle, samples: dict, decode_timestep, decode_noise_scale, seed, tile_size, tile_frames):
        latent = samples["samples"]
        if vae.family != "ltxv":
            raise lumina_core.InvalidInputError(
                f"{vae.source} is not an LTX-Video VAE: decode image latents with Lumina VAE Decode, and load the "
                "LTX-Video VAE (the LTX-Video checkpoint's vae.* part) for this node."
            )
        if latent.ndim != 5 or latent.shape[1] != vae.model.latent_channels:
            raise lumina_core.InvalidInputError(
                f"LTX-Video Decode takes a video latent (B, {vae.model.latent_channels}, T, H, W); got "
                f"{tuple(latent.shape)}: is it from an image model?"
            )
        settings = {"timestep": decode_timestep, "noise_scale": decode_noise_scale, "seed": seed}
        tiles = _tiles(tile_size, tile_frames)
        device = vae.load(decoding_memory(vae.model, _tile_shape(latent.shape, tiles)))
        # A whole decode that runs out of memory is retried in tiles by the core (`LTXVideoVAE.decode`).
        video = vae.model.decode(latent, tile=tiles, device=device, **settings)  # (B, 3, T, H, W)
        frames = video.permute(0, 2, 3, 4, 1).flatten(0, 1)  # (B*T, H, W, 3), ComfyUI's frame batch
        return (frames.to(bridge.intermediate_device()), float(samples.get("frame_rate", DEFAULT_FRAME_RATE)))


def _tiles(tile_size: int, tile_frames: int) -> TileSettings | None:
    if tile_size == 0:
        return None
    size = tile_size // 32  # the widget keeps it a multiple of 32 from 64 up
    frames = max(2, (tile_frames - 1) // 8)
    return TileSettings(size=size, overlap=max(1, size // 4), frames=frames, frame_overlap=max(1, frames // 4))


def _tile_shape(shape: tuple[int, ...], tiles: TileSettings | None) -> tuple[int, ...]:
    """The latent shape one decode call sees: the whole latent, or one tile of it."""
    if tiles is None:
        return tuple(shape)
    batch, channels, frames, height, width = shape
    return (batch, channels, min(frames, tiles.frames), min(height, tiles.size), min(width, tiles.size))
