"""What flows between our nodes: a loaded model and the ComfyUI ModelPatcher that places it.

ComfyUI caches node outputs, so a handle lives as long as its loader's output stays cached: re-queuing
reuses it, and changing the loader's file drops it (and with it the weights). Where the weights are is
ComfyUI's business: a node asks it to load the model (`Handle.load`) and runs it on the device it reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import comfy_bridge as bridge

WEIGHT_DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FP8_WEIGHT_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


@dataclass
class Handle:
    """A loaded model (transformer, text encoder or VAE) and its ModelPatcher."""

    model: object  # the core's object: a transformer or VAE module, or a text encoder (its `.model` the module)
    patcher: object  # comfy.model_patcher.ModelPatcher inside ComfyUI
    kind: str  # "diffusion", "text_encoder", "vae"
    family: str
    source: str  # the file it came from, for messages

    @property
    def device(self) -> torch.device:
        """Where the model runs once loaded (ComfyUI's device for its kind)."""
        return self.patcher.load_device

    def load(self, memory_required: int) -> torch.device:
        """Ask ComfyUI to place the weights (fully or partially) with room for `memory_required` bytes of
        activations; returns the device to run on."""
        bridge.load_models([self.patcher], memory_required)
        return self.device


def element_size(dtype: torch.dtype | None) -> int:
    return torch.empty((), dtype=dtype or torch.float32).element_size()


# Memory estimates for load_models_gpu: the activations a call keeps alive at its peak, coarse upper bounds from
# the widths involved (ComfyUI reserves its own minimum on top).


def encoding_memory(encoder, prompts: int, tokens: int = 256) -> int:
    """A text-encoder call: the feed-forward's hidden pair and a few model-width tensors per token, and the
    attention scores of one layer (Gemma-2's eager attention materialises them)."""
    config = encoder.model.config
    width = getattr(config, "hidden_size", None) or config.d_model
    hidden = getattr(config, "intermediate_size", None) or config.d_ff
    heads = getattr(config, "num_attention_heads", None) or config.num_heads
    per_token = (3 * hidden + 8 * width) * element_size(encoder.dtype)
    return prompts * (tokens * per_token + heads * tokens * tokens * 4)


def decoding_memory(vae, latent_shape: tuple[int, ...]) -> int:
    """A VAE decode (or encode of the same size): the full-resolution activations of its widest full-resolution
    level, a few at a time, plus an image VAE's mid-block attention scores over the latent positions."""
    dtype_size = element_size(getattr(vae, "compute_dtype", None))
    if len(latent_shape) == 5:  # LTX-Video: (B, C, F, H, W) -> 8(F-1)+1 frames of 32H x 32W
        batch, _, frames, height, width = latent_shape
        pixels = ((frames - 1) * vae.temporal_ratio + 1) * height * width * vae.spatial_ratio**2
        return batch * pixels * vae.config.decoder_base_channels * 6 * dtype_size
    batch, _, height, width = latent_shape
    pixels = height * width * vae.downscale_factor**2
    return batch * (pixels * vae.config.widths[0] * 6 * dtype_size + (height * width) ** 2 * 4)


def upsampling_memory(upsampler, latent_shape: tuple[int, ...]) -> int:
    """A latent upsampler call: a few of its widest activations, `mid_channels` wide at the upsampled size."""
    batch, _, frames, height, width = latent_shape
    time, rows, columns = upsampler.config.factors
    cells = batch * (1 + time * (frames - 1)) * height * rows * width * columns
    return cells * upsampler.config.mid_channels * 6 * element_size(upsampler.compute_dtype)
