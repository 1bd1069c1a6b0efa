"""Next-DiT building blocks shared by Lumina-Next, Lumina-Image 2.0 and Z-Image.

The families descend from Alpha-VLLM's Next-DiT and keep its block: sandwich RMS norms around attention and
a SwiGLU feed-forward, each branch input scaled by (1 + s) and its output gated by tanh(g), with s and g from
an adaLN projection of the conditioning vector. They differ in what the attention sees (Lumina 2 and Z-Image:
a joint caption + image sequence; Lumina-Next: image tokens plus a gated cross-attention to the caption), so
each family passes its own attention call to `SandwichBlock.run`. Attribute names equal the original
checkpoint key segments of every family.

Every layer comes from an `operations` namespace (default `torch.nn`; see `lumina_core.common.ops`), and every
forward computes on its input's device; the model casts its input to its `compute_dtype` first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..common.embeddings import timestep_embedding
from ..common.norms import RMSNorm
from ..common.ops import cast_to
from ..errors import InvalidInputError
from .stages import StagedForward

VAE_DOWNSCALE = 8  # both families' autoencoders (FLUX for Lumina 2, SDXL for Lumina-Next) downscale by 8


class NextDiTShape:
    """Sizes both Lumina configs derive the same way (mixed into their dataclasses, which define dim and n_heads)."""

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def t_emb_dim(self) -> int:
        # The timestep embedding and adaLN input are min(dim, 1024) wide in both families.
        return min(self.dim, 1024)


class NextDiT(StagedForward):
    """What both Lumina transformers expose besides their forward: the size rule and the compute dtype.

    Subclasses set `model_name`, `latent_format` and `self.config` (with patch_size and in_channels).
    """

    model_name = ""
    rope_positions: int | None = None  # positions per image axis of the original RoPE table: the largest size
    # The dtype the forward computes in (its loader sets it; None: the input's dtype); it returns the input's.
    compute_dtype: torch.dtype | None = None

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Latent shape for an image of height x width pixels; both must be multiples of 16, within the RoPE table."""
        multiple = VAE_DOWNSCALE * self.config.patch_size
        for name, size in (("width", width), ("height", height)):
            if size < multiple or size % multiple:
                nearest = max(multiple, round(size / multiple) * multiple)
                raise InvalidInputError(
                    f"{name} {size} is not allowed: {self.model_name} needs sizes that are positive multiples of "
                    f"{multiple} (8x VAE downscale x patch {self.config.patch_size}); try {nearest}."
                )
            largest = self.rope_positions * multiple if self.rope_positions else size
            if size > largest:
                raise InvalidInputError(
                    f"{name} {size} is too large: {self.model_name} addresses at most {self.rope_positions} patches "
                    f"per side (its RoPE table), {largest} px; use {largest} or less."
                )
        return (batch_size, self.config.in_channels, height // VAE_DOWNSCALE, width // VAE_DOWNSCALE)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int, operations=nn):
        super().__init__()
        self.w1 = operations.Linear(dim, hidden, bias=False)
        self.w2 = operations.Linear(hidden, dim, bias=False)
        self.w3 = operations.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SandwichBlock(nn.Module):
    """Sandwich-normed attention + FFN; with a conditioning width, scaled by (1 + s) and gated by tanh(g).

    Subclasses create `self.attention` and call `run` with a function applying it to the normed tokens.
    cond_silu: the modulation projection applies SiLU to the conditioning first (`adaLN_modulation.1`), as in
    both Lumina families; Z-Image projects the timestep embedding as it is (`adaLN_modulation.0`).
    """

    def __init__(
        self, dim: int, ffn_hidden: int, norm_eps: float, cond_dim: int | None, operations=nn, cond_silu: bool = True
    ):
        super().__init__()
        self.feed_forward = FeedForward(dim, ffn_hidden, operations)
        self.attention_norm1 = RMSNorm(dim, norm_eps)
        self.attention_norm2 = RMSNorm(dim, norm_eps)
        self.ffn_norm1 = RMSNorm(dim, norm_eps)
        self.ffn_norm2 = RMSNorm(dim, norm_eps)
        if cond_dim is not None:
            projection = operations.Linear(cond_dim, 4 * dim)
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), projection) if cond_silu else nn.Sequential(projection)

    def run(
        self, x: torch.Tensor, cond: torch.Tensor | None, attend: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """x (B, N, D); cond (B, cond_dim), or None for an unmodulated block."""
        if cond is None:
            x = x + self.attention_norm2(attend(self.attention_norm1(x)))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        scale_attn, gate_attn, scale_ffn, gate_ffn = self.adaLN_modulation(cond)[:, None].chunk(4, dim=-1)
        x = x + gate_attn.tanh() * self.attention_norm2(attend(self._modulate(x, scale_attn)))
        ffn_out = self.feed_forward(self.ffn_norm1(x) * (1 + scale_ffn))
        return x + gate_ffn.tanh() * self.ffn_norm2(ffn_out)

    def modulated_input(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """What the attention of a modulated `run` reads: attention_norm1(x) * (1 + s); the step cache's probe."""
        scale_attn = self.adaLN_modulation(cond)[:, None].chunk(4, dim=-1)[0]
        return self._modulate(x, scale_attn)

    def _modulate(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.attention_norm1(x) * (1 + scale)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t (256 wide) through a two-layer SiLU MLP, hidden_dim wide inside (default out_dim)."""

    def __init__(self, out_dim: int, frequency_dim: int = 256, operations=nn, hidden_dim: int | None = None):
        super().__init__()
        self.frequency_dim = frequency_dim
        hidden_dim = hidden_dim or out_dim
        self.mlp = nn.Sequential(
            operations.Linear(frequency_dim, hidden_dim), nn.SiLU(), operations.Linear(hidden_dim, out_dim)
        )

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """t (B,) -> (B, out_dim) in `dtype`, the model's compute dtype (t itself stays float32)."""
        return self.mlp(timestep_embedding(t, self.frequency_dim).to(dtype))


class FinalLayer(nn.Module):
    """LayerNorm without affine, scaled by (1 + s(cond)), then projected to patch features."""

    def __init__(self, dim: int, out_features: int, cond_dim: int, operations=nn):
        super().__init__()
        self.norm_final = operations.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = operations.Linear(dim, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), operations.Linear(cond_dim, dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm_final(x) * (1 + self.adaLN_modulation(cond)[:, None]))


def patchify(x: torch.Tensor, patch: int, channels_last: bool) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C*p*p) tokens in row-major order.

    The feature order within a token is (patch row, patch col, channel) with channels_last (Lumina 2), else
    (channel, patch row, patch col) (Lumina-Next).
    """
    x = x.unflatten(2, (-1, patch)).unflatten(4, (-1, patch))  # (B, C, h, p, w, p)
    order = (0, 2, 4, 3, 5, 1) if channels_last else (0, 2, 4, 1, 3, 5)
    return x.permute(*order).flatten(3).flatten(1, 2)


def unpatchify(x: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """(B, h*w, p*p*C) with features ordered (patch row, patch col, channel) -> (B, C, h*p, w*p).

    Both families order their output features this way, whatever their input order.
    """
    x = x.unflatten(1, (height, width)).unflatten(-1, (patch, patch, -1))  # (B, h, w, p, p, C)
    return x.permute(0, 5, 1, 3, 2, 4).flatten(4).flatten(2, 3)


def check_inputs(
    model_name: str, cfg, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None,
    features_message: Callable[[torch.Tensor], str],
) -> None:  # fmt: skip
    """Raise InvalidInputError for inputs a Next-DiT cannot take; features_message words a wrong text width.

    Shapes only, so a compiled forward traces it away: that a mask is right-padded with a token in every row needs
    its values, which `Conditioning` checks once per sampling run.
    """
    if x.ndim != 4 or x.shape[1] != cfg.in_channels:
        raise InvalidInputError(f"{model_name} expects a latent (B, {cfg.in_channels}, H, W); got {tuple(x.shape)}.")
    if x.shape[-2] % cfg.patch_size or x.shape[-1] % cfg.patch_size:
        raise InvalidInputError(f"latent height and width must be multiples of {cfg.patch_size}; got {tuple(x.shape)}.")
    if context.ndim != 3 or context.shape[-1] != cfg.cap_feat_dim:
        raise InvalidInputError(features_message(context))
    mask_fits = context_mask is None or context_mask.shape == context.shape[:2]
    if context.shape[0] != x.shape[0] or not mask_fits or t.shape != (x.shape[0],):
        raise InvalidInputError(
            f"batch mismatch: latent {tuple(x.shape)}, time {tuple(t.shape)}, text {tuple(context.shape)}, "
            f"mask {None if context_mask is None else tuple(context_mask.shape)}."
        )


def pad_to_multiple(tokens: torch.Tensor, pad_token: torch.Tensor, multiple: int) -> torch.Tensor:
    """(B, N, D) tokens followed by copies of a learned (1, D) pad token up to a multiple of `multiple` tokens."""
    extra = -tokens.shape[1] % multiple
    if not extra:
        return tokens
    pad = cast_to(pad_token, like=tokens).expand(tokens.shape[0], extra, -1)  # (1, D) -> (B, extra, D)
    return torch.cat([tokens, pad], dim=1)
