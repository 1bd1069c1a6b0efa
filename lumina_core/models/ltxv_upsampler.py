"""LTX-Video's latent upsamplers (0.9.7 / 0.9.8): `ltxv-spatial-upscaler-0.9.x` (x2 in height and width) and
`ltxv-temporal-upscaler-0.9.7` (x2 in time), which work on the VAE's *un-normalised* latent.

Written from Lightricks/LTX-Video `ltx_video/models/autoencoders/latent_upsampler.py` (the original, whose
attribute names the released files use, and which ComfyUI and diffusers keep); diffusers' `LTXLatentUpsamplerModel`
is the parity oracle. A conv, GroupNorm(32) and SiLU widen the latent to `mid_channels`; `num_blocks_per_stage`
residual blocks (conv, norm, SiLU, conv, norm, then SiLU of the sum) run before and after the upsampler, a conv
whose extra channels a depth-to-space shuffle turns into resolution; a last conv returns to the latent's channels.
With `dims` 3 the convs are 3-D, except the spatial-only upsampler's, which runs frame by frame in 2-D; with
`dims` 2 everything runs frame by frame. A temporal upsampler doubles the frames and drops the first new one, so
1 + k latent frames become 1 + 2k, as the causal VAE counts them.

Everything is read from tensor shapes (`config_from_shapes`); only the GroupNorm group count (32 in every release)
is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError

NORM_GROUPS = 32  # every release; not visible in the GroupNorm's weights


@dataclass(frozen=True)
class LatentUpsamplerConfig:
    """Defaults are the released spatial upsampler's."""

    in_channels: int = 128
    mid_channels: int = 512
    num_blocks_per_stage: int = 4
    dims: int = 3
    spatial_upsample: bool = True
    temporal_upsample: bool = False
    norm_groups: int = NORM_GROUPS

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3 (2-D or 3-D convolutions); got {self.dims}.")
        if not (self.spatial_upsample or self.temporal_upsample):
            raise ValueError("an upsampler must upsample in space, in time or both; this config does neither.")
        if self.temporal_upsample and self.dims == 2:
            raise ValueError("a temporal upsampler needs 3-D convolutions (dims 3); this config has dims 2.")
        if self.mid_channels % self.norm_groups:
            raise ValueError(f"mid_channels {self.mid_channels} do not split into {self.norm_groups} norm groups.")

    @property
    def factors(self) -> tuple[int, int, int]:
        """(time, height, width) upsampling factors."""
        space = 2 if self.spatial_upsample else 1
        return (2 if self.temporal_upsample else 1, space, space)

    @property
    def shuffle_dims(self) -> int:
        """2 for the frame-by-frame spatial shuffle; 3 for a shuffle over time (and space, when both)."""
        return 3 if self.temporal_upsample else 2


def config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> LatentUpsamplerConfig:
    """Every field from the tensor shapes: widths from `initial_conv`, dims from its kernel's rank, block counts,
    and what the upsampler conv makes: 4 x mid channels in 2-D (space), 8 x in 3-D (space and time), 2 x (time)."""
    mid, channels, *kernel = shapes["initial_conv.weight"]
    dims = len(kernel)
    blocks = {prefix: len({k.split(".")[1] for k in shapes if k.startswith(prefix + ".")})
              for prefix in ("res_blocks", "post_upsample_res_blocks")}  # fmt: skip
    if blocks["res_blocks"] != blocks["post_upsample_res_blocks"]:
        raise ValueError(
            f"{blocks['res_blocks']} residual blocks before the upsampler but {blocks['post_upsample_res_blocks']} "
            "after; the LTX upsampler has the same number on both sides"
        )
    rows, _, *up_kernel = shapes["upsampler.0.weight"]
    kinds = {(2, 4): (True, False), (3, 8): (True, True), (3, 2): (False, True)}  # (rank, rows / mid) -> kind
    kind = kinds.get((len(up_kernel), rows // mid)) if rows % mid == 0 else None
    if kind is None:
        raise ValueError(
            f"upsampler.0.weight {tuple(shapes['upsampler.0.weight'])} is neither a 2-D conv to 4 x {mid} channels "
            f"(space) nor a 3-D conv to 8 x or 2 x {mid} (space and time, time)"
        )
    return LatentUpsamplerConfig(channels, mid, blocks["res_blocks"], dims, *kind)


def _conv(operations, dims: int, channels_in: int, channels_out: int) -> nn.Module:
    conv = operations.Conv3d if dims == 3 else operations.Conv2d
    return conv(channels_in, channels_out, kernel_size=3, padding=1)


class ResBlock(nn.Module):
    """conv1, norm1, SiLU, conv2, norm2, then SiLU(h + x)."""

    def __init__(self, cfg: LatentUpsamplerConfig, operations=nn):
        super().__init__()
        width = cfg.mid_channels
        self.conv1 = _conv(operations, cfg.dims, width, width)
        self.norm1 = operations.GroupNorm(cfg.norm_groups, width)
        self.conv2 = _conv(operations, cfg.dims, width, width)
        self.norm2 = operations.GroupNorm(cfg.norm_groups, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        return F.silu(self.norm2(self.conv2(h)) + x)


def depth_to_space(x: torch.Tensor, factors: tuple[int, ...]) -> torch.Tensor:
    """(N, C * prod(factors), *dims) -> (N, C, *(d * f)), one factor per axis (1 leaves it): the channels split as
    (C, f_1, ..., f_k), each f_i moving next to its axis (the original's "b (c p1 p2 p3) d h w -> b c (d p1) (h p2)
    (w p3)", and its 2-D and time-only forms)."""
    k = len(factors)
    n, _, *dims = x.shape
    x = x.unflatten(1, (-1, *factors))  # (N, C, f_1..f_k, d_1..d_k)
    order = [0, 1] + [axis for i in range(k) for axis in (2 + k + i, 2 + i)]  # (N, C, d_1, f_1, ..., d_k, f_k)
    return x.permute(order).reshape(n, -1, *(d * f for d, f in zip(dims, factors, strict=True)))


class LatentUpsampler(nn.Module):
    """Call: upsampler(latent) -> latent upsampled by `config.factors`; latent (B, C, F, H, W) un-normalised (the VAE
    decoder's input scale); returns (B, C, F', 2H or H, 2W or W), F' = 1 + 2(F - 1) for a temporal upsampler, else F.
    Computed on the latent's device and in its dtype (`operations` layers cast their weights to it)."""

    compute_dtype: torch.dtype | None = None  # the dtype callers run it in (set by the loader; None: the weights')

    def __init__(self, cfg: LatentUpsamplerConfig, operations=nn):
        super().__init__()
        self.config = cfg
        width = cfg.mid_channels
        self.initial_conv = _conv(operations, cfg.dims, cfg.in_channels, width)
        self.initial_norm = operations.GroupNorm(cfg.norm_groups, width)
        self.res_blocks = nn.ModuleList(ResBlock(cfg, operations) for _ in range(cfg.num_blocks_per_stage))
        times = cfg.factors[0] * cfg.factors[1] * cfg.factors[2]
        # `upsampler.0` as the checkpoints name it (the original's Sequential of the conv and a parameterless shuffle)
        self.upsampler = nn.ModuleList([_conv(operations, cfg.shuffle_dims, width, times * width)])
        self.post_upsample_res_blocks = nn.ModuleList(
            ResBlock(cfg, operations) for _ in range(cfg.num_blocks_per_stage)
        )
        self.final_conv = _conv(operations, cfg.dims, width, cfg.in_channels)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if latent.ndim != 5 or latent.shape[1] != cfg.in_channels:
            raise InvalidInputError(
                f"the latent upsampler takes a video latent (B, {cfg.in_channels}, frames, height, width); got "
                f"{tuple(latent.shape)}."
            )
        batch, _, frames = latent.shape[:3]
        x = latent if cfg.dims == 3 else _frames_to_batch(latent)  # (B, C, F, H, W) or (B*F, C, H, W)
        x = F.silu(self.initial_norm(self.initial_conv(x)))
        for block in self.res_blocks:
            x = block(x)
        if cfg.temporal_upsample:  # 3-D shuffle, then drop the first new frame: 1 + k frames -> 1 + 2k
            x = depth_to_space(self.upsampler[0](x), cfg.factors)[:, :, 1:]
        elif cfg.dims == 3:  # the spatial shuffle runs frame by frame
            x = depth_to_space(self.upsampler[0](_frames_to_batch(x)), cfg.factors[1:])
            x = x.unflatten(0, (batch, frames)).transpose(1, 2)  # (B*F, C, H, W) -> (B, C, F, H, W)
        else:
            x = depth_to_space(self.upsampler[0](x), cfg.factors[1:])
        for block in self.post_upsample_res_blocks:
            x = block(x)
        x = self.final_conv(x)
        return x if cfg.dims == 3 else x.unflatten(0, (batch, frames)).transpose(1, 2)


def _frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).flatten(0, 1)  # (B, C, F, H, W) -> (B*F, C, H, W)
