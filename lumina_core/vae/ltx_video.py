"""The LTX-Video causal video VAE (HaCohen et al., "LTX-Video: Realtime Video Latent Diffusion", arXiv 2501.00103),
versions 0.9.0 to 0.9.8: 128 latent channels, 32x32 spatial and 8x temporal compression.

Follows Lightricks/LTX-Video `ltx_video/models/autoencoders/causal_video_autoencoder.py` (commit bc4ab62), summarised in
docs/models.md, 'LTX-Video VAE'; diffusers' `AutoencoderKLLTXVideo` is the parity oracle. Three generations, told
apart by their tensors:

- 0.9.0: plain decoder (no timestep), strided-conv encoder;
- 0.9.1: timestep-conditioned decoder with noise injection and residual, channel-halving upsamplers;
- 0.9.5 and later: the 0.9.1 decoder without noise injection, and a space-to-depth encoder.

Like the original, each half is a flat list of blocks described by `BlockSpec`s (the original config's
`encoder_blocks` / `decoder_blocks`), so the original key names are the attribute names here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .. import latents
from ..common.ops import cast_to, placement
from ..errors import CheckpointError, InvalidInputError, UnsupportedModelError
from ..loading import files
from ..loading.keymaps import ltx_vae
from ..loading.modules import assign_tensors, build_with_precision
from ..nonfinite import check_decoded
from ..validation import check_float
from .ltx_video_blocks import (
    CausalConv3d,
    DepthToSpaceUpsample,
    InjectedNoise,
    ResBlockGroup,
    ResnetBlock,
    SpaceToDepthDownsample,
    TimeEmbedder,
    depth_to_space,
    pixel_norm,
    space_to_depth,
)
from .ltx_video_tiling import FALLBACK_TILES, TileSettings, decode_tiled

logger = logging.getLogger(__name__)

FAMILY = "ltxv"
DEFAULT_DECODE_TIMESTEP = 0.05  # Lightricks' recommendation for 0.9.1+ (docs/models.md, 'LTX-Video VAE')
DEFAULT_DECODE_NOISE_SCALE = 0.025

# Block kinds of the original config, and the (time, rows, columns) stride of each resampling kind. Encoder
# `compress_*` are strided causal convs, `compress_*_res` space-to-depth downsamplers; decoder `compress_*` are
# depth-to-space upsamplers.
STRIDES = {"compress_all": (2, 2, 2), "compress_time": (2, 1, 1), "compress_space": (1, 2, 2)}
ENCODER_KINDS = {"res_x", "res_x_y", *STRIDES, *(k + "_res" for k in STRIDES)}
DECODER_KINDS = {"res_x", "res_x_y", *STRIDES}
LOG_VARIANCE_CHANNELS = {"uniform": 1, "constant": 1, "per_channel": None, "none": 0}  # None: as many as latents


@dataclass(frozen=True)
class BlockSpec:
    """One entry of a block list. `multiplier` scales the width (encoder) or divides it (decoder)."""

    kind: str  # "res_x", "res_x_y", "compress_all", "compress_time_res", ...
    layers: int = 1  # resnets in a res_x group
    multiplier: int = 1
    residual: bool = False  # decoder upsamplers: add the reshuffled input
    inject_noise: bool = False  # decoder resnets (0.9.1)

    @property
    def stride(self) -> tuple[int, int, int]:
        return STRIDES.get(self.kind.removesuffix("_res"), (1, 1, 1))


@dataclass(frozen=True)
class LTXVideoVAEConfig:
    encoder_blocks: tuple[BlockSpec, ...]  # in execution order
    decoder_blocks: tuple[BlockSpec, ...]  # in execution order (the original config lists them reversed)
    encoder_base_channels: int = 128  # width after the encoder's conv_in
    decoder_base_channels: int = 128  # width before the decoder's conv_out
    latent_channels: int = 128
    image_channels: int = 3
    patch_size: int = 4  # space-to-depth at both ends; the temporal patch is always 1
    timestep_conditioning: bool = False
    latent_log_var: str = "uniform"  # log-variance channels after the mean; encoding uses the mean only
    causal_encoder: bool = True
    causal_decoder: bool = False
    spatial_padding_mode: str = "zeros"  # original and diffusers; ComfyUI's decoder uses "reflect" since 2025-07
    scaling_factor: float = 1.0  # z_model = (z - mean) * scaling_factor / std; 1.0 in every release
    resnet_eps: float = 1e-6  # the shortcut LayerNorms

    def __post_init__(self) -> None:
        unknown = [b.kind for b in self.encoder_blocks if b.kind not in ENCODER_KINDS]
        unknown += [b.kind for b in self.decoder_blocks if b.kind not in DECODER_KINDS]
        if unknown or self.latent_log_var not in LOG_VARIANCE_CHANNELS:
            raise UnsupportedModelError(
                f"LTX VAE config with block kinds {unknown} / latent_log_var {self.latent_log_var!r}; supported "
                f"encoder kinds {sorted(ENCODER_KINDS)}, decoder kinds {sorted(DECODER_KINDS)}, log-variance "
                f"{sorted(LOG_VARIANCE_CHANNELS)}."
            )
        if self.spatial_ratio != self.encoder_spatial_ratio or self.temporal_ratio != self.encoder_temporal_ratio:
            raise InvalidInputError(
                f"LTX VAE encoder compresses {self.encoder_spatial_ratio}x / {self.encoder_temporal_ratio}x but the "
                f"decoder expands {self.spatial_ratio}x / {self.temporal_ratio}x (space / time)."
            )

    @property
    def spatial_ratio(self) -> int:
        return self.patch_size * math.prod(b.stride[1] for b in self.decoder_blocks)

    @property
    def temporal_ratio(self) -> int:
        return math.prod(b.stride[0] for b in self.decoder_blocks)

    @property
    def encoder_spatial_ratio(self) -> int:
        return self.patch_size * math.prod(b.stride[1] for b in self.encoder_blocks)

    @property
    def encoder_temporal_ratio(self) -> int:
        return math.prod(b.stride[0] for b in self.encoder_blocks)

    @property
    def generation(self) -> str:
        """ "0.9.0", "0.9.1" or "0.9.5" (0.9.5 to 0.9.8 share one VAE design)."""
        if not self.timestep_conditioning:
            return "0.9.0"
        return "0.9.5" if any(b.kind.endswith("_res") for b in self.encoder_blocks) else "0.9.1"

    def encoder_widths(self) -> list[tuple[int, int]]:
        """(input, output) width of each encoder block."""
        widths, width = [], self.encoder_base_channels
        for block in self.encoder_blocks:
            out = width if block.kind == "res_x" else width * block.multiplier
            widths.append((width, out))
            width = out
        return widths

    def decoder_widths(self) -> list[tuple[int, int]]:
        """(input, output) width of each decoder block; the last output is `decoder_base_channels`."""
        width = self.decoder_base_channels * math.prod(b.multiplier for b in self.decoder_blocks if b.kind != "res_x")
        widths = []
        for block in self.decoder_blocks:
            out = width if block.kind == "res_x" else width // block.multiplier
            widths.append((width, out))
            width = out
        return widths


class Encoder(nn.Module):
    """Frames in [-1, 1] (B, 3, 1 + r*k, H, W) -> moments (B, latent + log-variance channels, 1 + k, H/s, W/s)."""

    def __init__(self, cfg: LTXVideoVAEConfig, operations=nn):
        super().__init__()
        self.patch_size = cfg.patch_size
        conv = partial(
            CausalConv3d, causal=cfg.causal_encoder, padding_mode=cfg.spatial_padding_mode, operations=operations
        )
        self.conv_in = conv(cfg.image_channels * cfg.patch_size**2, cfg.encoder_base_channels)
        self.down_blocks = nn.ModuleList(
            _encoder_block(spec, width_in, width_out, cfg, operations)
            for spec, (width_in, width_out) in zip(cfg.encoder_blocks, cfg.encoder_widths())
        )
        log_var = LOG_VARIANCE_CHANNELS[cfg.latent_log_var]
        out = cfg.latent_channels + (cfg.latent_channels if log_var is None else log_var)
        self.conv_out = conv(cfg.encoder_widths()[-1][1], out)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(space_to_depth(frames, (1, self.patch_size, self.patch_size), width_first=True))
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(pixel_norm(x)))


def _encoder_block(spec: BlockSpec, width_in: int, width_out: int, cfg: LTXVideoVAEConfig, operations) -> nn.Module:
    causal, padding = cfg.causal_encoder, cfg.spatial_padding_mode
    if spec.kind == "res_x":
        return ResBlockGroup(width_in, spec.layers, causal, padding, operations=operations)
    if spec.kind == "res_x_y":
        return ResnetBlock(width_in, width_out, causal, padding, cfg.resnet_eps, operations=operations)
    if spec.kind.endswith("_res"):
        return SpaceToDepthDownsample(width_in, width_out, spec.stride, causal, padding, operations)
    return CausalConv3d(width_in, width_out, stride=spec.stride, causal=causal, padding_mode=padding,
                        operations=operations)  # fmt: skip


class Decoder(nn.Module):
    """Un-normalised latent (B, latent, F, h, w) -> frames roughly in [-1, 1] (B, 3, r(F-1)+1, s*h, s*w)."""

    def __init__(self, cfg: LTXVideoVAEConfig, operations=nn):
        super().__init__()
        self.patch_size = cfg.patch_size
        widths = cfg.decoder_widths()
        final = widths[-1][1]
        conv = partial(
            CausalConv3d, causal=cfg.causal_decoder, padding_mode=cfg.spatial_padding_mode, operations=operations
        )
        self.conv_in = conv(cfg.latent_channels, widths[0][0])
        self.up_blocks = nn.ModuleList(
            _decoder_block(spec, width_in, width_out, cfg, operations)
            for spec, (width_in, width_out) in zip(cfg.decoder_blocks, widths)
        )
        self.conv_out = conv(final, cfg.image_channels * cfg.patch_size**2)
        self.timestep_scale_multiplier = self.last_time_embedder = self.last_scale_shift_table = None
        if cfg.timestep_conditioning:
            self.timestep_scale_multiplier = nn.Parameter(torch.tensor(1000.0))  # learned; about 1000 in releases
            self.last_time_embedder = TimeEmbedder(2 * final, operations)
            self.last_scale_shift_table = nn.Parameter(torch.zeros(2, final))  # (shift, scale) offsets

    def forward(
        self, z: torch.Tensor, timestep: torch.Tensor | None = None, noise: InjectedNoise | None = None
    ) -> torch.Tensor:
        """timestep: (B,) decode timesteps in [0, 1], required when timestep-conditioned; noise: the injected
        planes (None: no injection)."""
        x = self.conv_in(z)
        scaled = None
        if self.timestep_scale_multiplier is not None:
            if timestep is None:
                raise InvalidInputError("this LTX VAE decoder is timestep-conditioned (0.9.1+): pass a timestep.")
            scaled = timestep.float() * cast_to(self.timestep_scale_multiplier, timestep.float())
        for block in self.up_blocks:
            if isinstance(block, ResBlockGroup):
                x = block(x, scaled, noise)
            elif isinstance(block, ResnetBlock):
                x = block(x, noise=noise)
            else:
                x = block(x)
        x = pixel_norm(x)
        if self.last_time_embedder is not None:
            # (B, 2C) -> (B, 2, C, 1, 1, 1): shift and scale per sample and channel
            ada = self.last_time_embedder(scaled, x.dtype).unflatten(1, (2, -1))[..., None, None, None]
            table = cast_to(self.last_scale_shift_table, ada)[None, ..., None, None, None]
            shift, scale = (ada + table).unbind(1)
            x = x * (1 + scale) + shift
        x = self.conv_out(F.silu(x))
        return depth_to_space(x, (1, self.patch_size, self.patch_size), width_first=True)


def _decoder_block(spec: BlockSpec, width_in: int, width_out: int, cfg: LTXVideoVAEConfig, operations) -> nn.Module:
    causal, padding = cfg.causal_decoder, cfg.spatial_padding_mode
    if spec.kind == "res_x":
        return ResBlockGroup(width_in, spec.layers, causal, padding, spec.inject_noise, cfg.timestep_conditioning,
                             operations)  # fmt: skip
    if spec.kind == "res_x_y":  # never timestep-conditioned, in the original either
        return ResnetBlock(width_in, width_out, causal, padding, cfg.resnet_eps, inject_noise=spec.inject_noise,
                           operations=operations)  # fmt: skip
    return DepthToSpaceUpsample(width_in, spec.stride, spec.residual, spec.multiplier, causal, padding, operations)


class PerChannelStatistics(nn.Module):
    """The latent normalisation: per-channel mean and standard deviation of the training latents."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean-of-means", torch.zeros(channels))
        self.register_buffer("std-of-means", torch.ones(channels))

    def mean_std(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, C, 1, 1, 1) float32 mean and std on `like`'s device."""
        mean, std = (self.get_buffer(name).float().to(like.device)[None, :, None, None, None]
                     for name in ("mean-of-means", "std-of-means"))  # fmt: skip
        return mean, std


class LTXVideoVAE(nn.Module):
    """Video frames in [0, 1] <-> normalised LTX latents (what the LTX-Video transformer samples).

    The latent it gives and takes is the model's and the one ComfyUI passes between nodes (`latent_format` is
    the identity): the VAE normalises it itself with its per-channel statistics.
    """

    family = FAMILY
    latent_format = latents.IDENTITY
    compute_dtype: torch.dtype | None = None  # the dtype encode/decode run in (set by the loader; None: the weights')

    def __init__(self, config: LTXVideoVAEConfig, operations=nn):
        super().__init__()
        self.config = config
        self.latent_channels = config.latent_channels
        self.spatial_ratio = config.spatial_ratio
        self.temporal_ratio = config.temporal_ratio
        self.encoder = Encoder(config, operations)
        self.decoder = Decoder(config, operations)
        self.per_channel_statistics = PerChannelStatistics(config.latent_channels)

    @property
    def generation(self) -> str:
        return self.config.generation

    def latent_shape(self, batch: int, frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        """The latent of `frames` (1 + 8k) frames of height x width (multiples of 32) pixels."""
        _check_video_size(frames, height, width, self.temporal_ratio, self.spatial_ratio)
        return (batch, self.latent_channels, (frames - 1) // self.temporal_ratio + 1,
                height // self.spatial_ratio, width // self.spatial_ratio)  # fmt: skip

    def encode(
        self, frames: torch.Tensor, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """(B, 3, T, H, W) in [0, 1], T = 1 + 8k, H and W multiples of 32 -> float32 normalised latent
        (B, 128, 1 + k, H/32, W/32): the posterior mean, deterministic. A (B, 3, H, W) image counts as one frame.
        Runs on `device` in `dtype` (default: where the weights are, in the compute dtype)."""
        if frames.ndim == 4:
            frames = frames[:, :, None]
        if frames.ndim != 5 or frames.shape[1] != self.config.image_channels:
            raise InvalidInputError(f"LTX VAE encode takes frames (B, 3, T, H, W); got {tuple(frames.shape)}.")
        _check_video_size(*frames.shape[2:], self.temporal_ratio, self.spatial_ratio)
        device, dtype = placement(self, device, dtype)
        moments = self.encoder(frames.to(device, dtype) * 2 - 1)
        mean, std = self.per_channel_statistics.mean_std(moments)
        z = moments[:, : self.latent_channels].float()  # the channels after the mean hold the log-variance
        return (z - mean) * self.config.scaling_factor / std

    def decode(
        self,
        latent: torch.Tensor,
        timestep: float | Sequence[float] | torch.Tensor = DEFAULT_DECODE_TIMESTEP,
        noise_scale: float | Sequence[float] | torch.Tensor = DEFAULT_DECODE_NOISE_SCALE,
        seed: int | torch.Generator = 0,
        tile: TileSettings | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Normalised latent (B, 128, F, H, W) -> float32 frames (B, 3, 8(F-1)+1, 32H, 32W) in [0, 1], on `device`.

        timestep / noise_scale (one value, or one per sample; 0.9.1+ VAEs only, which are timestep-conditioned;
        0.9.0 VAEs ignore both, as the original pipeline and ComfyUI do): the latent first becomes
        (1 - noise_scale) * latent + noise_scale * noise, on the normalised latent as in the original pipeline and
        ComfyUI (diffusers mixes after un-normalising), then decodes at `timestep`.
        seed: an int or a CPU torch.Generator; every random number (the latent noise, then the 0.9.1 decoder's
        injected noise) is drawn from it on the CPU, so a seed gives the same video on any device.
        tile: decode in overlapping tiles over space and time (TileSettings) to bound memory; None decodes whole,
        and when that runs out of device memory, again in `FALLBACK_TILES` (with a logged warning).
        device, dtype: where and in what the decoder runs (default: where the weights are, in the compute dtype).
        """
        if latent.ndim != 5 or latent.shape[1] != self.latent_channels:
            raise InvalidInputError(
                f"LTX VAE decode takes a latent (B, {self.latent_channels}, F, H, W); got {tuple(latent.shape)}."
            )
        generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
        device, dtype = placement(self, device, dtype)
        z = latent.to(device, torch.float32)
        steps = None
        if self.config.timestep_conditioning:
            noise = torch.randn(z.shape, generator=generator).to(z.device)
            scale = _per_sample(noise_scale, z.shape[0], "noise_scale").to(z.device)[:, None, None, None, None]
            z = (1 - scale) * z + scale * noise
            steps = _per_sample(timestep, z.shape[0], "timestep").to(z.device)
        mean, std = self.per_channel_statistics.mean_std(z)
        z = (z * std / self.config.scaling_factor + mean).to(dtype)
        noise_state = generator.get_state()  # the injected planes continue the same stream, for every tile alike
        frame_hw = (z.shape[3], z.shape[4])

        def decode_tile(part: torch.Tensor, window: tuple[int, int, int, int]) -> torch.Tensor:
            return self.decoder(part, steps, InjectedNoise(noise_state, frame_hw, window)).float()

        frames = None
        if tile is None:
            # A failure is retried in tiles below, once the failed attempt's tensors have been released.
            with contextlib.suppress(torch.OutOfMemoryError):
                frames = decode_tile(z, (0, 0, *frame_hw))
            if frames is None:
                logger.warning("LTX VAE: out of memory decoding %s whole; decoding in tiles.", tuple(latent.shape))
                release_cached_memory(device)
                tile = FALLBACK_TILES
        if frames is None:
            frames = decode_tiled(decode_tile, z, tile, self.spatial_ratio, self.temporal_ratio)
        return check_decoded(self, latent, frames).add_(1).div_(2).clamp_(0, 1)  # in place: the largest tensor


def release_cached_memory(device: torch.device) -> None:
    """Give the memory torch keeps cached on a CUDA device back, so a retry can use it."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _per_sample(value: float | Sequence[float] | torch.Tensor, batch: int, name: str) -> torch.Tensor:
    values = torch.as_tensor(value, dtype=torch.float32).flatten()
    if not bool(((values >= 0) & (values <= 1)).all()):  # NaN fails both comparisons
        raise InvalidInputError(f"{name} must be finite numbers from 0 to 1; got {values.tolist()}.")
    if values.numel() == 1:
        return values.expand(batch)
    if values.numel() != batch:
        raise InvalidInputError(f"{name} must be one value or one per sample ({batch}); got {values.numel()}.")
    return values


def _check_video_size(frames: int, height: int, width: int, temporal: int, spatial: int) -> None:
    if (frames - 1) % temporal or height % spatial or width % spatial or min(frames, height, width) < 1:
        raise InvalidInputError(
            f"LTX VAE video size must be 1 + {temporal}k frames of height and width multiples of {spatial}; got "
            f"{frames} frames of {height}x{width}."
        )


def first_frame_conditioning(
    vae: LTXVideoVAE,
    image: torch.Tensor,
    latent_shape: Sequence[int],
    strength: float = 1.0,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-to-video conditioning as ComfyUI's LTXVImgToVideo builds it.

    image: (B or 1, 3, H, W) in [0, 1], centre-cropped to the latent's aspect ratio and bilinearly resized to
    its pixel size. latent_shape: (B, 128, F, h, w). Returns (latent, noise_mask): the float32 latent of zeros whose
    first frame is the encoded image, and a (B, 1, F, 1, 1) float32 mask, 1 where the sampler generates and
    1 - strength on the first frame (0 = keep it as it is). device, dtype: where the VAE encodes (see `encode`).
    """
    batch, channels, frames, height, width = latent_shape
    check_float("strength", strength, 0.0, 1.0, rule="1 keeps the first frame as given, 0 lets the model repaint it")
    if image.ndim == 5 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 4 or image.shape[1] != 3 or image.shape[0] not in (1, batch):
        raise InvalidInputError(f"first_frame_conditioning takes an image (1 or {batch}, 3, H, W); got "
                                f"{tuple(image.shape)}.")  # fmt: skip
    if channels != vae.latent_channels:
        raise InvalidInputError(f"latent_shape has {channels} channels; this VAE's latents have {vae.latent_channels}.")
    fitted = fit_image(image.float(), height * vae.spatial_ratio, width * vae.spatial_ratio)
    encoded = vae.encode(fitted, device, dtype)
    latent = torch.zeros(batch, channels, frames, height, width, device=encoded.device)
    latent[:, :, :1] = encoded.expand(batch, -1, -1, -1, -1)
    mask = torch.ones(batch, 1, frames, 1, 1, device=encoded.device)
    mask[:, :, :1] = 1.0 - strength
    return latent, mask


def fit_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre-crop (B, 3, H, W) to height:width, then resize bilinearly to (height, width)."""
    h, w = image.shape[-2:]
    if h * width > w * height:  # too tall: crop rows
        keep = round(w * height / width)
        image = image[..., (h - keep) // 2 : (h - keep) // 2 + keep, :]
    elif h * width < w * height:  # too wide: crop columns
        keep = round(h * width / height)
        image = image[..., (w - keep) // 2 : (w - keep) // 2 + keep]
    if tuple(image.shape[-2:]) == (height, width):
        return image
    return F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False)


# ---- configuration from tensor shapes and stored configs ----


def config_from_shapes(shapes: Mapping[str, Sequence[int]], source: str = "state dict") -> LTXVideoVAEConfig:
    """Read every dimension the tensors tell (original names, no prefix): the block lists with their kinds,
    layers and multipliers, widths, patch size, latent channels, log-variance layout, timestep conditioning and
    noise injection.

    Not in the tensors, so defaulted as every release has them (a stored config overrides, see `load_ltx_vae`):
    a plain strided encoder conv is `compress_all`; a decoder upsampler adds its residual exactly when it also
    divides the width (0.9.1+); padding zeros; causal encoder, non-causal decoder.
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise CheckpointError(f"{source}: no tensor {key}; an LTX video VAE has one.")
        return tuple(shapes[key])

    kinds = ltx_vae.block_kinds(shapes)
    enc_base, patched = shape("encoder.conv_in.conv.weight")[:2]
    dec_out, dec_base = shape("decoder.conv_out.conv.weight")[:2]
    patch = math.isqrt(dec_out // 3)
    if patch * patch * 3 != dec_out or patched != dec_out:
        raise CheckpointError(f"{source}: {patched} / {dec_out} patched channels at the encoder / decoder ends; "
                              "expected 3 x patch^2 (RGB) at both.")  # fmt: skip
    latent = shape("decoder.conv_in.conv.weight")[1]
    encoder_out = shape("encoder.conv_out.conv.weight")[0]
    log_var = {latent + 1: "uniform", 2 * latent: "per_channel", latent: "none"}.get(encoder_out)
    if log_var is None:
        raise CheckpointError(f"{source}: the encoder ends in {encoder_out} channels for {latent} latent channels; "
                              "expected the latents plus 1, or twice them, or them alone.")  # fmt: skip

    def width_in(part: str, index: int) -> int:
        """Input width of block `index`, or of the final conv_out past the last block."""
        prefix = f"{part}.{'down' if part == 'encoder' else 'up'}_blocks.{index}."
        if index == len(kinds[part]):
            return shape(f"{part}.conv_out.conv.weight")[1]
        if kinds[part][index] == ltx_vae.GROUP:
            return shape(prefix + "res_blocks.0.conv1.conv.weight")[1]
        if kinds[part][index] == ltx_vae.RESNET:
            return shape(prefix + "conv1.conv.weight")[1]
        key = prefix + ("conv.conv.weight" if prefix + "conv.conv.weight" in shapes else "conv.weight")
        return shape(key)[1]

    encoder = [_encoder_spec(shapes, i, kind, width_in("encoder", i), width_in("encoder", i + 1), source)
               for i, kind in enumerate(kinds["encoder"])]  # fmt: skip
    decoder = [_decoder_spec(shapes, i, kind, width_in("decoder", i), width_in("decoder", i + 1), source)
               for i, kind in enumerate(kinds["decoder"])]  # fmt: skip
    return LTXVideoVAEConfig(
        encoder_blocks=tuple(encoder),
        decoder_blocks=tuple(decoder),
        encoder_base_channels=enc_base,
        decoder_base_channels=dec_base,
        latent_channels=latent,
        patch_size=patch,
        timestep_conditioning="decoder.last_scale_shift_table" in shapes,
        latent_log_var=log_var,
    )


def _count(shapes: Mapping[str, object], prefix: str) -> int:
    indices = {int(k[len(prefix) :].split(".")[0]) for k in shapes if k.startswith(prefix)}
    return max(indices, default=-1) + 1


def _stride_kind(product: int, where: str) -> str:
    kind = {8: "compress_all", 4: "compress_space", 2: "compress_time"}.get(product)
    if kind is None:
        raise CheckpointError(f"{where}: a resampler whose widths imply a {product}x change; expected 2, 4 or 8.")
    return kind


def _width_factor(width: int, next_width: int, widens: bool, where: str) -> int:
    """The width multiplier of a block going from `width` to `next_width` channels: a whole number >= 1, the
    encoder's blocks widening and the decoder's narrowing (or keeping) the width."""
    wide, narrow = (next_width, width) if widens else (width, next_width)
    if narrow < 1 or wide < narrow or wide % narrow:
        direction = "widens" if widens else "narrows"
        raise CheckpointError(
            f"{where}: the widths go from {width} to {next_width} channels; each block of this part keeps the width "
            f"or {direction} it by a whole factor. A damaged file?"
        )
    return wide // narrow


def _encoder_spec(shapes: Mapping, index: int, kind: str, width: int, next_width: int, source: str) -> BlockSpec:
    prefix = f"encoder.down_blocks.{index}."
    if kind == ltx_vae.GROUP:
        return BlockSpec("res_x", layers=_count(shapes, prefix + "res_blocks."))
    multiplier = _width_factor(width, next_width, True, f"{source} {prefix.rstrip('.')}")
    if kind == ltx_vae.RESNET:
        return BlockSpec("res_x_y", multiplier=multiplier)
    if prefix + "conv.conv.weight" in shapes:  # space-to-depth: the conv makes next_width / prod(stride) channels
        product = next_width // tuple(shapes[prefix + "conv.conv.weight"])[0]
        return BlockSpec(_stride_kind(product, f"{source} {prefix}") + "_res", multiplier=multiplier)
    return BlockSpec("compress_all", multiplier=multiplier)  # stride not in the shapes; every release uses 2x2x2


def _decoder_spec(shapes: Mapping, index: int, kind: str, width: int, next_width: int, source: str) -> BlockSpec:
    prefix = f"decoder.up_blocks.{index}."
    if kind == ltx_vae.GROUP:
        noise = prefix + "res_blocks.0.per_channel_scale1" in shapes
        return BlockSpec("res_x", layers=_count(shapes, prefix + "res_blocks."), inject_noise=noise)
    multiplier = _width_factor(width, next_width, False, f"{source} {prefix.rstrip('.')}")
    if kind == ltx_vae.RESNET:
        return BlockSpec("res_x_y", multiplier=multiplier, inject_noise=prefix + "per_channel_scale1" in shapes)
    # depth-to-space: the conv makes prod(stride) * width / multiplier = prod(stride) * next_width channels
    product = tuple(shapes[prefix + "conv.conv.weight"])[0] // next_width
    stride_kind = _stride_kind(product, f"{source} {prefix}")
    return BlockSpec(stride_kind, multiplier=multiplier, residual=multiplier > 1)


def apply_original_config(config: LTXVideoVAEConfig, vae: Mapping, source: str) -> LTXVideoVAEConfig:
    """Overlay the original release's VAE config (the `vae` part of the safetensors metadata `config`): its block
    lists (strides, residuals, noise) and flags replace what shapes could only default. The weights are then
    checked against the result, strictly."""
    if vae.get("dims", 3) not in (3, [2, 1], (2, 1)) or vae.get("norm_layer", "pixel_norm") != "pixel_norm":
        raise UnsupportedModelError(
            f"{source}: an LTX VAE config with dims {vae.get('dims')} and norm_layer {vae.get('norm_layer')!r}; "
            "only 3-D pixel-norm VAEs (every LTX-Video release) are supported."
        )
    fields = {}
    encoder = vae.get("encoder_blocks", vae.get("blocks"))
    decoder = vae.get("decoder_blocks", vae.get("blocks"))
    if encoder is not None:
        fields["encoder_blocks"] = tuple(_parse_block(entry, "encoder", source) for entry in encoder)
    if decoder is not None:
        fields["decoder_blocks"] = tuple(_parse_block(entry, "decoder", source) for entry in reversed(decoder))
    for ours, theirs in (("causal_decoder", "causal_decoder"), ("spatial_padding_mode", "spatial_padding_mode"),
                         ("latent_log_var", "latent_log_var"), ("scaling_factor", "scaling_factor")):  # fmt: skip
        if theirs in vae:
            fields[ours] = vae[theirs]
    return replace(config, **fields)


def _parse_block(entry: Sequence, part: str, source: str) -> BlockSpec:
    try:
        kind, params = entry
    except (TypeError, ValueError):
        raise CheckpointError(f"{source}: the {part} block list holds {entry!r}; expected [name, params].") from None
    params = {"num_layers": params} if isinstance(params, int) else dict(params)
    # the original's default multipliers: 2 for width-changing encoder blocks and res_x_y, else 1
    doubling = kind == "res_x_y" or (part == "encoder" and (kind == "compress_all_x_y" or kind.endswith("_res")))
    return BlockSpec(
        "compress_all" if kind == "compress_all_x_y" else kind,
        layers=params.get("num_layers", 1),
        multiplier=params.get("multiplier", 2 if doubling else 1),
        residual=bool(params.get("residual", False)),
        inject_noise=bool(params.get("inject_noise", False)),
    )


def apply_diffusers_config(
    config: LTXVideoVAEConfig, diffusers: Mapping, names: Mapping[str, str], source: str
) -> LTXVideoVAEConfig:
    """Overlay a diffusers `AutoencoderKLLTXVideo` config.json: per-up-block `upsample_residual`, the causality
    flags and `scaling_factor`. `names` maps original tensor names to the diffusers ones (for block indices)."""
    if diffusers.get("patch_size_t", 1) != 1:
        raise UnsupportedModelError(f"{source}: patch_size_t {diffusers['patch_size_t']}; LTX VAEs use 1.")
    fields: dict[str, object] = {}
    residual = diffusers.get("upsample_residual")
    if residual is not None:
        residual = list(reversed(residual))  # diffusers lists decoder options encoder-side first
        blocks = list(config.decoder_blocks)
        for index, spec in enumerate(blocks):
            stored = names.get(f"decoder.up_blocks.{index}.conv.conv.weight", "")
            if spec.kind in STRIDES and stored.startswith("decoder.up_blocks."):
                blocks[index] = replace(spec, residual=bool(residual[int(stored.split(".")[2])]))
        fields["decoder_blocks"] = tuple(blocks)
    for ours, theirs in (("causal_encoder", "encoder_causal"), ("causal_decoder", "decoder_causal"),
                         ("scaling_factor", "scaling_factor")):  # fmt: skip
        if theirs in diffusers:
            fields[ours] = diffusers[theirs]
    return replace(config, **fields)


def _stored_config(checkpoint: files.Checkpoint, source: str) -> Mapping | None:
    """The `vae` part of the original release's metadata `config` JSON, or None."""
    text = checkpoint.metadata.get("config")
    if not text:
        return None
    try:
        vae = json.loads(text).get("vae")
    except (ValueError, AttributeError):
        raise CheckpointError(f"{source}: the safetensors metadata 'config' is not a JSON object.") from None
    return vae if isinstance(vae, dict) else None


def load_ltx_vae(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    *,
    compute_dtype: torch.dtype | None = None,
    operations=None,
    checkpoint: files.Checkpoint | None = None,
    **config: object,
) -> LTXVideoVAE:
    """Load an LTX-Video VAE in eval mode, without gradients.

    path: a Lightricks/ComfyUI single file (all-in-one with the VAE under `vae.`, or a standalone VAE), a diffusers
    `vae/` or pipeline folder, or a diffusers-keyed file. The config comes from tensor shapes, then the file's
    metadata `config` ("vae" part) or a diffusers config.json, then `config` keywords (LTXVideoVAEConfig fields,
    e.g. spatial_padding_mode="reflect" for ComfyUI-like decoding). dtype None keeps the stored dtype;
    `compute_dtype` and `operations` as for `load_transformer` (`loading.modules.build_with_precision`).
    """
    unknown = sorted(set(config) - {f.name for f in fields(LTXVideoVAEConfig)})
    if unknown:
        raise InvalidInputError(f"load_ltx_vae got unknown options {unknown}; LTXVideoVAEConfig has no such fields.")
    path = os.fspath(path)
    folder = os.path.join(path, "vae") if os.path.isdir(os.path.join(path, "vae")) else path
    checkpoint = checkpoint or files.open_checkpoint(folder)
    tensors = ltx_vae.find_ltx_vae(checkpoint)
    if tensors is None:
        raise UnsupportedModelError(f"{checkpoint.describe()} holds no LTX-Video VAE (no {ltx_vae.MARKERS}).")
    source = f"{checkpoint.path} ({tensors.detected})"
    shapes = {k: tensors.shape(k) for k in tensors.names}
    try:
        cfg = config_from_shapes(shapes, source)
        if (stored := _stored_config(checkpoint, source)) is not None:
            cfg = apply_original_config(cfg, stored, source)
        config_path = os.path.join(folder, "config.json")
        if tensors.naming == ltx_vae.DIFFUSERS and os.path.isdir(folder) and os.path.isfile(config_path):
            diffusers = files.read_json(config_path, "a diffusers AutoencoderKLLTXVideo config")
            cfg = apply_diffusers_config(cfg, diffusers, tensors.names, source)
        cfg = replace(cfg, **config)
        stored = {k: tensors.dtype(k) for k in tensors.names}
        model, precision = build_with_precision(partial(LTXVideoVAE, cfg), stored, dtype, compute_dtype, operations)
    except (KeyError, TypeError, ZeroDivisionError) as err:
        raise CheckpointError(f"{source}: the tensors do not form an LTX VAE ({type(err).__name__}: {err}).") from None
    readers = {k: partial(tensors.load, k) for k in tensors.names}
    return assign_tensors(model, readers, shapes, source, precision, device)
