"""Building blocks of the LTX-Video causal video VAE (HaCohen et al., "LTX-Video: Realtime Video Latent Diffusion",
arXiv 2501.00103), written from the architecture description in Lightricks/LTX-Video
`ltx_video/models/autoencoders/causal_video_autoencoder.py` (commit bc4ab62; summarised in
docs/models.md, 'LTX-Video VAE'), not copied from any implementation.

Module attribute names equal the original checkpoint's key segments (`res_blocks`, `conv.conv`, `norm3.norm`,
`time_embedder.timestep_embedder.linear_1`), so Lightricks and ComfyUI files load without renaming. Tensors are
(B, C, F, H, W) throughout: batch, channels, frames, rows, columns. Layers come from an `operations` namespace
(default `torch.nn`); parameters a block owns directly are cast to its input where they are used.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..common.embeddings import timestep_embedding
from ..common.ops import cast_to

PIXEL_NORM_EPS = 1e-8  # every normalisation inside the LTX VAE but the shortcut LayerNorm
TIMESTEP_FREQUENCIES = 256  # sinusoid width fed to every time embedder (PixArt-alpha's adaLN-single)


def pixel_norm(x: torch.Tensor) -> torch.Tensor:
    """Divide each position's channel vector by its RMS (no affine), computed in float32."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(dim=1, keepdim=True) + PIXEL_NORM_EPS)).to(x.dtype)


def space_to_depth(x: torch.Tensor, factors: tuple[int, int, int], width_first: bool = False) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, C*t*h*w, F/t, H/h, W/w) with factors (t, h, w).

    Channels are ordered (c, t, h, w), or (c, t, w, h) with `width_first`: the VAE's patchify at both ends
    uses the latter (width before height), its down/upsamplers the former.
    """
    b, c, f, h, w = x.shape
    ft, fh, fw = factors
    x = x.reshape(b, c, f // ft, ft, h // fh, fh, w // fw, fw)
    # (B, C, F', t, H', h, W', w) -> (B, C, t, h, w, F', H', W'), or t, w, h
    patch_axes = (3, 7, 5) if width_first else (3, 5, 7)
    x = x.permute(0, 1, *patch_axes, 2, 4, 6)
    return x.reshape(b, c * ft * fh * fw, f // ft, h // fh, w // fw)


def depth_to_space(x: torch.Tensor, factors: tuple[int, int, int], width_first: bool = False) -> torch.Tensor:
    """The inverse of `space_to_depth`: (B, C*t*h*w, F, H, W) -> (B, C, F*t, H*h, W*w)."""
    b, c, f, h, w = x.shape
    ft, fh, fw = factors
    if width_first:
        # (B, C', t, w, h, F, H, W) -> (B, C', F, t, H, h, W, w)
        x = x.reshape(b, -1, ft, fw, fh, f, h, w).permute(0, 1, 5, 2, 6, 4, 7, 3)
    else:
        # (B, C', t, h, w, F, H, W) -> (B, C', F, t, H, h, W, w)
        x = x.reshape(b, -1, ft, fh, fw, f, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, -1, f * ft, h * fh, w * fw)


class CausalConv3d(nn.Module):
    """A 3-D convolution that pads time by repeating edge frames and space inside the conv.

    Causal: the first frame is repeated k-1 times in front, so output frame i sees input frames <= i (the
    encoder). Non-causal: the first and the last frame (k-1)/2 times each (the decoder). Spatial padding k//2 with
    `padding_mode` ("zeros" in the original release and diffusers; ComfyUI decodes with "reflect").
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int | tuple[int, int, int] = 1,
        causal: bool = True,
        padding_mode: str = "zeros",
        operations=nn,
    ):
        super().__init__()
        self.causal = causal
        self.time_kernel = kernel_size
        pad = kernel_size // 2
        self.conv = operations.Conv3d(
            in_channels, out_channels, kernel_size, stride=stride, padding=(0, pad, pad), padding_mode=padding_mode
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.time_kernel - 1
        front, back = (extra, 0) if self.causal else (extra // 2, extra // 2)
        if extra:
            x = torch.cat([x[:, :, :1].expand(-1, -1, front, -1, -1), x, x[:, :, -1:].expand(-1, -1, back, -1, -1)], 2)
        return self.conv(x)


class TimestepMLP(nn.Module):
    def __init__(self, in_features: int, dim: int, operations=nn):
        super().__init__()
        self.linear_1 = operations.Linear(in_features, dim)
        self.linear_2 = operations.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeEmbedder(nn.Module):
    """Decode timestep (B,) -> (B, dim) modulation: a 256-wide sinusoid (cosine first) through a two-layer MLP.

    The wrapper level (`time_embedder.timestep_embedder.*`) mirrors PixArt-alpha's combined embedder, whose
    size/aspect embedders LTX leaves out.
    """

    def __init__(self, dim: int, operations=nn):
        super().__init__()
        self.timestep_embedder = TimestepMLP(TIMESTEP_FREQUENCIES, dim, operations)

    def forward(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """timestep (B,) float32 -> (B, dim) in `dtype`, the decoder's compute dtype."""
        return self.timestep_embedder(timestep_embedding(timestep, TIMESTEP_FREQUENCIES).to(dtype))


class InjectedNoise:
    """The standard-normal (H, W) planes a noise-injecting (0.9.1) decoder adds, one per injection point in call
    order, drawn on the CPU from one generator state and shared across batch and frames, as in the reference.

    The reference draws from the global RNG with no generator; seeding the global RNG with s reproduces the
    planes drawn here from a generator seeded with s. A tile draws the planes of the whole frame and keeps its
    window, so a tiled decode injects exactly the noise of the untiled one.

    state: a CPU `torch.Generator` state; frame_hw: the whole latent's (H, W); window: this tile's latent
    (top, left, height, width), or None for the whole frame.
    """

    def __init__(self, state: torch.Tensor, frame_hw: tuple[int, int], window: tuple[int, int, int, int] | None = None):
        self.generator = torch.Generator().set_state(state)
        self.frame_hw = frame_hw
        self.window = window or (0, 0, *frame_hw)

    def __call__(self, height: int, width: int) -> torch.Tensor:
        top, left, tile_h, tile_w = self.window
        scale = height // tile_h  # each decoder level doubles the latent's size
        plane = torch.randn(self.frame_hw[0] * scale, self.frame_hw[1] * scale, generator=self.generator)
        return plane[top * scale : top * scale + height, left * scale : left * scale + width]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, F, H, W), with affine weights (`norm3.norm.*`)."""

    def __init__(self, channels: int, eps: float, operations=nn):
        super().__init__()
        self.norm = operations.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class ResnetBlock(nn.Module):
    """Pixel norm, [adaLN], SiLU, conv, [noise], twice, plus a shortcut (LayerNorm + 1x1x1 conv if the width
    changes). The original's `res_x_y` when it stands alone in a block list."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        causal: bool,
        padding_mode: str,
        eps: float = 1e-6,
        inject_noise: bool = False,
        timestep_conditioning: bool = False,
        operations=nn,
    ):
        super().__init__()
        conv = partial(CausalConv3d, causal=causal, padding_mode=padding_mode, operations=operations)
        self.conv1 = conv(in_channels, out_channels)
        self.conv2 = conv(out_channels, out_channels)
        self.norm3 = self.conv_shortcut = None
        if in_channels != out_channels:
            self.norm3 = ChannelLayerNorm(in_channels, eps, operations)
            self.conv_shortcut = operations.Conv3d(in_channels, out_channels, 1)
        self.per_channel_scale1 = self.per_channel_scale2 = None
        if inject_noise:  # sized by the input width in the original; only ever used where widths are equal
            self.per_channel_scale1 = nn.Parameter(torch.zeros(in_channels, 1, 1))
            self.per_channel_scale2 = nn.Parameter(torch.zeros(in_channels, 1, 1))
        # (shift1, scale1, shift2, scale2) offsets, added to the block group's time embedding
        self.scale_shift_table = nn.Parameter(torch.zeros(4, in_channels)) if timestep_conditioning else None

    def forward(
        self, x: torch.Tensor, time_embedding: torch.Tensor | None = None, noise: InjectedNoise | None = None
    ) -> torch.Tensor:
        """x (B, C, F, H, W); time_embedding (B, 4C) when timestep-conditioned; noise None skips the injection."""
        h = pixel_norm(x)
        if self.scale_shift_table is not None:
            # (B, 4C) -> (B, 4, C, 1, 1, 1), plus the table broadcast over batch and positions
            ada = time_embedding.unflatten(1, (4, -1))[..., None, None, None]
            table = cast_to(self.scale_shift_table, ada)[None, ..., None, None, None]
            shift1, scale1, shift2, scale2 = (ada + table).unbind(1)
            h = h * (1 + scale1) + shift1
        h = self._add_noise(self.conv1(F.silu(h)), self.per_channel_scale1, noise)
        h = pixel_norm(h)
        if self.scale_shift_table is not None:
            h = h * (1 + scale2) + shift2
        h = self._add_noise(self.conv2(F.silu(h)), self.per_channel_scale2, noise)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(self.norm3(x))
        return x + h

    @staticmethod
    def _add_noise(h: torch.Tensor, scale: torch.Tensor | None, noise: InjectedNoise | None) -> torch.Tensor:
        if scale is None or noise is None:
            return h
        plane = noise(h.shape[-2], h.shape[-1]).to(h)  # (H, W)
        return h + (plane[None] * cast_to(scale, h))[None, :, None]  # (C, H, W) -> (1, C, 1, H, W)


class ResBlockGroup(nn.Module):
    """Resnet blocks of one width sharing one time embedder: the original's `res_x` (UNetMidBlock3D)."""

    def __init__(
        self,
        channels: int,
        layers: int,
        causal: bool,
        padding_mode: str,
        inject_noise: bool = False,
        timestep_conditioning: bool = False,
        operations=nn,
    ):
        super().__init__()
        self.time_embedder = TimeEmbedder(4 * channels, operations) if timestep_conditioning else None
        self.res_blocks = nn.ModuleList(
            ResnetBlock(channels, channels, causal, padding_mode, inject_noise=inject_noise,
                        timestep_conditioning=timestep_conditioning, operations=operations)
            for _ in range(layers)
        )  # fmt: skip

    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor | None = None, noise: InjectedNoise | None = None
    ) -> torch.Tensor:
        """timestep: (B,) already multiplied by the decoder's `timestep_scale_multiplier`."""
        embedding = self.time_embedder(timestep, x.dtype) if self.time_embedder is not None else None
        for block in self.res_blocks:
            x = block(x, embedding, noise)
        return x


class DepthToSpaceUpsample(nn.Module):
    """Decoder upsampler: conv to prod(stride)*C/multiplier channels, depth-to-space, then the first stride_t - 1
    frames dropped (F -> 2F - 1 for a temporal stride, so F latent frames give 8(F-1) + 1 video frames).

    `residual` adds the input itself, reshuffled the same way and tiled over channels to the output width.
    """

    def __init__(
        self, channels: int, stride: tuple[int, int, int], residual: bool, multiplier: int, causal: bool,
        padding_mode: str, operations=nn,
    ):  # fmt: skip
        super().__init__()
        self.stride = stride
        self.residual = residual
        self.multiplier = multiplier
        out = math.prod(stride) * channels // multiplier
        self.conv = CausalConv3d(channels, out, causal=causal, padding_mode=padding_mode, operations=operations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drop = self.stride[0] - 1
        y = depth_to_space(self.conv(x), self.stride)[:, :, drop:]
        if self.residual:
            repeats = math.prod(self.stride) // self.multiplier
            y = y + depth_to_space(x, self.stride).repeat(1, repeats, 1, 1, 1)[:, :, drop:]
        return y


class SpaceToDepthDownsample(nn.Module):
    """0.9.5+ encoder downsampler: conv to out/prod(stride) channels then space-to-depth, plus the input
    space-to-depth'ed and averaged over groups of consecutive channels. A temporal stride first repeats the first
    frame, so 1 + 2k frames become 1 + k."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: tuple[int, int, int], causal: bool, padding_mode: str,
        operations=nn,
    ):  # fmt: skip
        super().__init__()
        self.stride = stride
        self.group_size = in_channels * math.prod(stride) // out_channels
        self.conv = CausalConv3d(
            in_channels, out_channels // math.prod(stride), causal=causal, padding_mode=padding_mode,
            operations=operations,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 2:
            x = torch.cat([x[:, :, :1], x], dim=2)
        skip = space_to_depth(x, self.stride).unflatten(1, (-1, self.group_size)).mean(dim=2)
        return space_to_depth(self.conv(x), self.stride) + skip
