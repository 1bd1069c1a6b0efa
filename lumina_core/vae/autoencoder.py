"""The LDM KL autoencoder (Esser, Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
2022), as used by FLUX.1 (`ae.safetensors`: 16 latent channels, no quant convs) and by SD/SDXL (4 latent channels,
with quant convs).

Written from the architecture description (ResNet blocks with GroupNorm + SiLU, one single-head self-attention
block in the middle, stride-2 convs down, nearest 2x upsampling + conv up), not from any implementation. Module
attribute names equal the original checkpoint's key segments, so FLUX and ComfyUI files load without renaming;
diffusers names go through `lumina_core.loading.keymaps.ldm_vae`. Layers come from an `operations` namespace
(default `torch.nn`; see `lumina_core.common.ops`).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .. import latents
from ..common.ops import placement
from ..errors import CheckpointError, InvalidInputError, UnsupportedModelError
from ..loading import files
from ..loading.keymaps import ldm_vae
from ..loading.modules import assign_tensors, build_with_precision
from ..nonfinite import check_decoded

NORM_EPS = 1e-6  # every GroupNorm of the LDM autoencoder


@dataclass(frozen=True)
class AutoencoderConfig:
    in_channels: int = 3  # image channels into the encoder
    out_channels: int = 3  # image channels out of the decoder
    channels: int = 128  # width of the first (full-resolution) level
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)  # width of level i = channels * channel_mult[i]
    num_res_blocks: int = 2  # per encoder level; each decoder level has one more
    z_channels: int = 16  # latent channels
    use_quant_conv: bool = False  # 1x1 conv on (mean, logvar) after the encoder (SD/SDXL)
    use_post_quant_conv: bool = False  # 1x1 conv on the latent before the decoder (SD/SDXL)
    num_groups: int = 32  # GroupNorm groups; not stored in checkpoints, 32 in every released model
    scale: float = latents.FLUX.scale  # latent normalisation, see lumina_core.latents
    shift: float = latents.FLUX.shift

    def __post_init__(self) -> None:
        if not self.channel_mult or min(self.channel_mult) < 1 or self.num_groups < 1:
            raise InvalidInputError(
                f"channel_mult must hold positive ints and num_groups be positive; got {self.channel_mult}, "
                f"{self.num_groups}."
            )
        if any(w % self.num_groups for w in self.widths):
            raise InvalidInputError(
                f"num_groups={self.num_groups} must divide every level width {self.widths}; released VAEs use 32, "
                "tiny test models need a divisor of their widths."
            )

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.channels * m for m in self.channel_mult)


def _group_norm(channels: int, groups: int, operations) -> nn.GroupNorm:
    return operations.GroupNorm(groups, channels, eps=NORM_EPS)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int, operations=nn):
        super().__init__()
        self.norm1 = _group_norm(in_channels, groups, operations)
        self.conv1 = operations.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels, groups, operations)
        self.conv2 = operations.Conv2d(out_channels, out_channels, 3, padding=1)
        # 1x1 projection of the skip path, only where the width changes (no weights otherwise)
        same = in_channels == out_channels
        self.nin_shortcut = nn.Identity() if same else operations.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with 1x1-conv projections and a residual."""

    def __init__(self, channels: int, groups: int, operations=nn):
        super().__init__()
        self.norm = _group_norm(channels, groups, operations)
        self.q = operations.Conv2d(channels, channels, 1)
        self.k = operations.Conv2d(channels, channels, 1)
        self.v = operations.Conv2d(channels, channels, 1)
        self.proj_out = operations.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # (B, C, H, W) -> (B, 1, H*W, C): one head of width C
        q, k, v = (proj(y).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        # (B, 1, H*W, C) -> (B, C, H, W)
        y = y.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(y)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, operations=nn):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups, operations)
        self.attn_1 = AttnBlock(channels, groups, operations)
        self.block_2 = ResnetBlock(channels, channels, groups, operations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Downsample(nn.Module):
    def __init__(self, channels: int, operations=nn):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pad right and bottom only, so (H, W) -> (H/2, W/2) with the LDM's asymmetric window placement
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int, operations=nn):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _resnet_blocks(in_channels: int, out_channels: int, count: int, groups: int, operations) -> nn.ModuleList:
    # the first block changes the width, the others keep it
    widths = [in_channels] + [out_channels] * count
    return nn.ModuleList(ResnetBlock(a, b, groups, operations) for a, b in itertools.pairwise(widths))


class DownLevel(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: int, groups: int, downsample: bool, operations=nn
    ):
        super().__init__()
        self.block = _resnet_blocks(in_channels, out_channels, num_blocks, groups, operations)
        self.downsample = Downsample(out_channels, operations) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return self.downsample(x)


class UpLevel(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: int, groups: int, upsample: bool, operations=nn
    ):
        super().__init__()
        self.block = _resnet_blocks(in_channels, out_channels, num_blocks, groups, operations)
        self.upsample = Upsample(out_channels, operations) if upsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return self.upsample(x)


class Encoder(nn.Module):
    """(B, in_channels, H, W) in [-1, 1] -> (B, 2 * z_channels, H/f, W/f): posterior mean and log-variance."""

    def __init__(self, cfg: AutoencoderConfig, operations=nn):
        super().__init__()
        widths, groups, last = cfg.widths, cfg.num_groups, len(cfg.widths) - 1
        self.conv_in = operations.Conv2d(cfg.in_channels, cfg.channels, 3, padding=1)
        in_widths = (cfg.channels, *widths[:-1])
        self.down = nn.ModuleList(
            DownLevel(a, b, cfg.num_res_blocks, groups, i < last, operations)
            for i, (a, b) in enumerate(zip(in_widths, widths))
        )
        self.mid = MidBlock(widths[-1], groups, operations)
        self.norm_out = _group_norm(widths[-1], groups, operations)
        self.conv_out = operations.Conv2d(widths[-1], 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, out_channels, h*f, w*f), roughly in [-1, 1]."""

    def __init__(self, cfg: AutoencoderConfig, operations=nn):
        super().__init__()
        widths, groups = cfg.widths, cfg.num_groups
        self.conv_in = operations.Conv2d(cfg.z_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1], groups, operations)
        # up[i] works at the resolution of down[i]; it runs from the last level to the first
        in_widths = (*widths[1:], widths[-1])
        self.up = nn.ModuleList(
            UpLevel(a, b, cfg.num_res_blocks + 1, groups, i > 0, operations)
            for i, (a, b) in enumerate(zip(in_widths, widths))
        )
        self.norm_out = _group_norm(widths[0], groups, operations)
        self.conv_out = operations.Conv2d(widths[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Autoencoder(nn.Module):
    """Images in [0, 1] <-> model-space latents z_model = (z_vae - shift) * scale (`latent_format`)."""

    compute_dtype: torch.dtype | None = None  # the dtype encode/decode run in (set by the loader; None: the weights')

    def __init__(self, config: AutoencoderConfig, operations=nn):
        super().__init__()
        self.config = config
        self.latent_channels = config.z_channels
        self.downscale_factor = 2 ** (len(config.channel_mult) - 1)
        self.latent_format = latents.LatentFormat(config.scale, config.shift)
        self.encoder = Encoder(config, operations)
        self.decoder = Decoder(config, operations)
        z2, z = 2 * config.z_channels, config.z_channels
        self.quant_conv = operations.Conv2d(z2, z2, 1) if config.use_quant_conv else None
        self.post_quant_conv = operations.Conv2d(z, z, 1) if config.use_post_quant_conv else None

    def encode(
        self, images: torch.Tensor, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], H and W multiples of `downscale_factor` -> float32 (B, z, H/f, W/f), model space.

        Deterministic: returns the posterior mean and never samples, so one image always gives one latent. Runs
        on `device` in `dtype` (default: where the weights are, in the compute dtype) and returns there.
        """
        _check_input(images, self.config.in_channels, self.downscale_factor, "images")
        device, dtype = placement(self, device, dtype)
        moments = self.encoder(images.to(device, dtype) * 2 - 1)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean = moments[:, : self.latent_channels]  # the second half is the log-variance
        return self.latent_format.to_model(mean)

    def decode(
        self, latent: torch.Tensor, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Model-space latent (B, z, h, w) -> float32 images (B, 3, h*f, w*f) clamped to [0, 1], on `device`.

        Runs on `device` in `dtype` (default: where the weights are, in the compute dtype); `decode_raw` takes the
        VAE's raw latent (ComfyUI's LATENT) instead.
        """
        _check_input(latent, self.latent_channels, 1, "latent")
        # the normalisation in float32, then the compute dtype: in bf16 it would round the latent before scaling
        return self.decode_raw(self.latent_format.to_raw(latent), device, dtype)

    def decode_raw(
        self, raw: torch.Tensor, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """As `decode`, for a raw VAE latent (before the model-space normalisation)."""
        _check_input(raw, self.latent_channels, 1, "latent")
        device, dtype = placement(self, device, dtype)
        z = raw.to(device, dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return check_decoded(self, raw, (self.decoder(z).float() + 1) / 2).clamp(0, 1)


def _check_input(x: torch.Tensor, channels: int, multiple: int, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != channels or x.shape[2] % multiple or x.shape[3] % multiple:
        raise InvalidInputError(
            f"VAE {name} must have shape (B, {channels}, H, W) with H and W multiples of {multiple}; "
            f"got {tuple(x.shape)}."
        )


def config_from_state_dict(
    state: files.Checkpoint | Mapping[str, torch.Tensor | Sequence[int]],
    *,
    num_groups: int = 32,
    scale: float | None = None,
    shift: float | None = None,
    source: str = "state dict",
) -> AutoencoderConfig:
    """Read every dimension from tensor shapes (original names, no prefix).

    GroupNorm groups are not stored in checkpoints: `num_groups` defaults to the 32 of every released VAE.
    `scale`/`shift` default by latent channels (`latents.BY_CHANNELS`); for other counts `scale` is required
    and `shift` defaults to 0. `source` names the file in error messages.
    """
    if isinstance(state, files.Checkpoint):
        shapes = {k: state.shape(k) for k in state.keys}
    else:
        shapes = {k: tuple(v.shape if isinstance(v, torch.Tensor) else v) for k, v in state.items()}

    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise CheckpointError(f"{source}: no tensor {key}; an LDM/FLUX autoencoder has one.")
        return tuple(shapes[key])

    channels, in_channels = shape("encoder.conv_in.weight")[:2]
    levels = _count_indices(shapes, r"encoder\.down\.(\d+)\.")
    widths = [shape(f"encoder.down.{i}.block.0.conv1.weight")[0] for i in range(max(levels, 1))]
    if any(w % channels for w in widths):
        raise CheckpointError(f"{source}: level widths {widths} are not multiples of the first width {channels}.")
    z_channels = shape("decoder.conv_in.weight")[1]
    scale, shift = _latent_normalisation(z_channels, scale, shift, source)
    return AutoencoderConfig(
        in_channels=in_channels,
        out_channels=shape("decoder.conv_out.weight")[0],
        channels=channels,
        channel_mult=tuple(w // channels for w in widths),
        num_res_blocks=_count_indices(shapes, r"encoder\.down\.0\.block\.(\d+)\."),
        z_channels=z_channels,
        use_quant_conv="quant_conv.weight" in shapes,
        use_post_quant_conv="post_quant_conv.weight" in shapes,
        num_groups=num_groups,
        scale=scale,
        shift=shift,
    )


def _count_indices(keys: Mapping[str, object], prefix_pattern: str) -> int:
    # highest index + 1, so a gap shows up later as missing keys rather than as a smaller model
    pattern = re.compile(prefix_pattern)
    return max((int(m[1]) for k in keys if (m := pattern.match(k))), default=-1) + 1


def _latent_normalisation(
    z_channels: int, scale: float | None, shift: float | None, source: str
) -> tuple[float, float]:
    known = latents.BY_CHANNELS.get(z_channels)
    if known is None and scale is None:
        raise UnsupportedModelError(
            f"{source}: a VAE with {z_channels} latent channels; the latent scale/shift are known only for "
            f"{sorted(latents.BY_CHANNELS)} channels (FLUX, SDXL). Pass scale= (and shift=) for this VAE."
        )
    default_scale, default_shift = (known.scale, known.shift) if known else (scale, 0.0)
    return (default_scale if scale is None else scale), (default_shift if shift is None else shift)


def load_vae(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    *,
    compute_dtype: torch.dtype | None = None,
    operations=None,
    num_groups: int | None = None,
    scale: float | None = None,
    shift: float | None = None,
) -> Autoencoder:
    """Load an LDM/FLUX KL autoencoder in eval mode, without gradients.

    `path`: an original-format file (FLUX `ae.safetensors`), an all-in-one checkpoint with the VAE under `vae.`
    (ComfyUI) or `first_stage_model.` (SD), a diffusers VAE folder or pipeline folder (with `vae/`), or a single
    diffusers-keyed file; the format is read from the tensor names. `dtype=None` keeps a bf16/fp32 FLUX VAE's
    dtype and loads fp16 files, and any SDXL-shaped (4-channel) VAE, as float32: the SDXL VAE overflows in half
    precision and decodes black images. `compute_dtype` and `operations` as for `load_transformer`
    (`loading.modules.build_with_precision`). `num_groups`, `scale`, `shift` default to a diffusers folder's
    config.json, else as in `config_from_state_dict`.
    """
    path = os.fspath(path)
    if os.path.isdir(os.path.join(path, "vae")):
        path = os.path.join(path, "vae")
    vae = ldm_vae.find_vae(files.open_checkpoint(path))
    source = f"{path} ({vae.detected})"
    shapes = {k: vae.shape(k) for k in vae.names}
    given = {"num_groups": num_groups, "scale": scale, "shift": shift}
    options = {"num_groups": 32, **ldm_vae.read_diffusers_config(path)}
    options.update({k: v for k, v in given.items() if v is not None})
    config = config_from_state_dict(shapes, **options, source=source)
    if dtype is None:
        file_dtype = vae.dtype("decoder.conv_in.weight")
        half_unsafe = file_dtype == torch.float16 or config.z_channels == latents.SDXL_CHANNELS
        dtype = torch.float32 if half_unsafe else file_dtype
    stored = {k: vae.dtype(k) for k in vae.names}
    model, precision = build_with_precision(partial(Autoencoder, config), stored, dtype, compute_dtype, operations)
    readers = {k: partial(vae.load, k) for k in vae.names}
    return assign_tensors(model, readers, shapes, source, precision, device)
