"""LTX-Video 0.9.x: the Lightricks text-to-video DiT (arXiv 2501.00103), 2B (0.9.0-0.9.6) and 13B (0.9.7/0.9.8).

Written from Lightricks/LTX-Video `ltx_video/models/transformers/transformer3d.py` (summarised in docs/models.md,
'LTX-Video transformer'); diffusers' `LTXVideoTransformer3DModel` is the parity oracle in tests. Module attribute
names equal the original checkpoint's key segments, so the original Lightricks and ComfyUI files load without
renaming.

Every latent cell is one token (patch size 1), ordered frame, row, column. Each block is a PixArt-style
adaLN-single block: a per-block learned `scale_shift_table` plus one shared timestep modulation give the
shift, scale and gate of the self-attention and feed-forward halves; the cross-attention to the T5 caption
in between is neither normalised nor gated. Queries and keys are RMS-normalised across all heads (the full
width), and self-attention rotates them with a 3-D RoPE over the full width too, on fractional
coordinates: pixel positions (the VAE's 8 frames x 32 x 32 pixels per latent cell), the frame one in
seconds (divided by the frame rate), each divided by a maximum (20 s, 2048 px, 2048 px).

The network takes timestep = sigma x 1000 and predicts noise - data: exactly the package's velocity, so
`forward` only scales the time.

What tensor shapes cannot tell (see `config_from_shapes`): the head count (qk-norm and RoPE act on the full
width, so no tensor has a per-head shape), the RoPE constants, the causal frame-position fix and the
timestep scale. They come from the checkpoint's own config when it has one (the `config` JSON in an
original file's safetensors metadata, a diffusers `config.json`), otherwise from the release values below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import latents
from ..common.attention import attention
from ..common.embeddings import timestep_embedding
from ..common.norms import RMSNorm
from ..common.ops import cast_to
from ..common.rope import apply_rope, rope_cos_sin
from ..errors import InvalidInputError
from .stages import StagedForward

FAMILY = "ltxv"
T5_XXL_WIDTH = 4096
# The causal video VAE's compression (docs/models.md, 'LTX-Video VAE'): one latent cell is 8 frames x 32 x 32
# pixels. Sizes must be multiples of it, and it turns latent positions into the pixel positions the RoPE is
# defined on.
VAE_SCALE_FACTORS = (8, 32, 32)
DEFAULT_FRAME_RATE = 25.0  # diffusers' LTXPipeline and ComfyUI's LTXVConditioning

# No released file stores tensors this module does not use.
UNUSED_KEYS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LTXVideoConfig:
    """Shapes and constants of an LTX-Video transformer. Defaults are the released 2B (0.9.0-0.9.6)."""

    in_channels: int = 128
    out_channels: int = 128
    dim: int = 2048
    n_layers: int = 28
    # Not stored in any tensor: from the checkpoint's config, else 32, the head count of every release (2B: 32 x 64,
    # 13B: 32 x 128). It only decides how the attention logits are split, which no weight reveals.
    n_heads: int = 32
    cross_attention_dim: int = 2048
    caption_channels: int = T5_XXL_WIDTH
    ffn_hidden: int = 8192
    norm_eps: float = 1e-6  # block RMS norms; the qk norms use 1e-5 in every implementation
    rope_theta: float = 10000.0
    max_positions: tuple[float, float, float] = (20.0, 2048.0, 2048.0)  # (seconds, pixels, pixels)
    # Frame positions: latent frame 0 covers pixel frame 0 only, frame k >= 1 starts at pixel 8k - 7 (True), or
    # frame k at 8k (False). The original pipeline and ComfyUI read it from the checkpoint (default False); 0.9.5+
    # files set it. diffusers' LTXPipeline never applies it, its LTXConditionPipeline always does.
    causal_temporal_positioning: bool = False
    timestep_scale: float = 1000.0  # the original config's timestep_scale_multiplier
    patch_size: int = 1  # spatial and temporal patch sizes: every release uses 1, and so does this module
    patch_size_t: int = 1

    def __post_init__(self) -> None:
        if self.n_heads < 1 or self.dim % self.n_heads:
            raise ValueError(
                f"width {self.dim} does not split into {self.n_heads} attention heads (the head count is not stored "
                "in the weights: it comes from the file's config, else 32; pass n_heads= for other models)."
            )
        if self.cross_attention_dim != self.dim:
            raise ValueError(
                f"cross-attention keys take {self.cross_attention_dim} features but the caption projection makes "
                f"{self.dim}; LTX-Video needs them equal."
            )
        if (self.patch_size, self.patch_size_t) != (1, 1):
            raise ValueError(
                f"patch sizes ({self.patch_size_t}, {self.patch_size}, {self.patch_size}) are not supported: every "
                "LTX-Video 0.9.x release uses 1."
            )
        if len(self.max_positions) != 3 or min(self.max_positions) <= 0:
            raise ValueError(f"max_positions must be three positive numbers; got {self.max_positions}.")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def config_from_shapes(shapes: dict[str, tuple[int, ...]], **stored) -> LTXVideoConfig:
    """Derive the config from the tensor shapes of an original-keyed state dict.

    See docs/models.md, 'LTX-Video config from shapes'.

    Read from shapes: width, in/out channels, layer count, cross-attention width, caption width, FFN width.
    `stored` carries what shapes cannot tell, from the checkpoint's config or the caller: n_heads (or head_dim,
    from which n_heads = width / head_dim), norm_eps, rope_theta, max_positions, causal_temporal_positioning,
    timestep_scale, patch_size, patch_size_t.
    """
    dim, in_channels = shapes["patchify_proj.weight"]
    adaln_rows = shapes["adaln_single.linear.weight"][0]
    if adaln_rows != 6 * dim:
        raise ValueError(
            f"adaln_single.linear.weight has {adaln_rows} rows; LTX-Video's blocks take 6 x {dim} (shift, scale and "
            "gate for attention and feed-forward). A scale-only (4 x width) variant is not supported"
        )
    head_dim = stored.pop("head_dim", None)
    if "n_heads" not in stored and head_dim:
        stored["n_heads"] = dim // head_dim
    elif head_dim and stored["n_heads"] * head_dim != dim:
        raise ValueError(f"the config's {stored['n_heads']} heads x {head_dim} channels do not make the width {dim}")
    if "max_positions" in stored:
        stored["max_positions"] = tuple(float(p) for p in stored["max_positions"])
    return LTXVideoConfig(
        in_channels=in_channels,
        out_channels=shapes["proj_out.weight"][0],
        dim=dim,
        n_layers=len({k.split(".")[1] for k in shapes if k.startswith("transformer_blocks.")}),
        cross_attention_dim=shapes["transformer_blocks.0.attn2.to_k.weight"][1],
        caption_channels=shapes["caption_projection.linear_1.weight"][1],
        ffn_hidden=shapes["transformer_blocks.0.ff.net.0.proj.weight"][0],
        **stored,
    )


def frame_positions(frames: int, causal: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """(frames,) float32 pixel-frame coordinate of each latent frame: 8f, or with the causal fix max(0, 8f - 7), where
    latent frame 0 holds pixel frame 0 alone and frame k >= 1 starts at pixel frame 8k - 7."""
    scale_t = VAE_SCALE_FACTORS[0]
    positions = torch.arange(frames, dtype=torch.float32, device=device) * scale_t
    return (positions + 1 - scale_t).clamp(min=0) if causal else positions


def _check_reach(max_positions: tuple[float, float, float], height: int, width: int, frames: int, rate: float) -> None:
    """Refuse a size beyond what the fractional RoPE positions cover (seconds, pixels, pixels)."""
    seconds, max_height, max_width = max_positions
    for name, size, limit in (("width", width, max_width), ("height", height, max_height)):
        if size > limit:
            raise InvalidInputError(
                f"{name} {size} is too large: LTX-Video's positions cover {limit:g} px per side; use {limit:g} or less."
            )
    if (frames - 1) / rate > seconds:
        raise InvalidInputError(
            f"{frames} frames at {rate:g} fps is too long: LTX-Video's positions cover {seconds:g} s, at most "
            f"{int(seconds * rate) // 8 * 8 + 1} frames at this frame rate."
        )


def rope_angles(
    frames: int,
    height: int,
    width: int,
    frame_rate: float,
    cfg: LTXVideoConfig,
    device: torch.device | str = "cpu",
    frame_px: torch.Tensor | None = None,
) -> torch.Tensor:
    """(frames*height*width, dim/2) float32 RoPE angles, one per channel pair, for a latent grid.

    See docs/models.md, 'LTX-Video RoPE'.

    Token (f, h, w) sits at pixel coordinates (8f, 32h, 32w), the frame one causal-fixed to max(0, 8f - 7) when the
    config says so (`frame_positions`), or frame_px[f] when given (keyframe tokens placed at their own frames), and
    divided by the frame rate (seconds); each coordinate divided by its maximum gives a fraction p in [0, 1] that
    is rotated to [-1, 1]. Frequency j of n = dim // 6 is (pi/2) * theta ** (j / (n - 1)), and its pairs hold
    (frame, row, column) in that order; the first (dim mod 6) / 2 pairs are padding with angle 0.

    Float32 throughout, as every reference computes it (the model was trained with these exact frequencies).
    """
    _, scale_h, scale_w = VAE_SCALE_FACTORS
    if frame_px is None:
        frame_px = frame_positions(frames, cfg.causal_temporal_positioning, device)
    coords = torch.meshgrid(
        frame_px.to(device=device, dtype=torch.float32) * (1.0 / frame_rate),
        torch.arange(height, dtype=torch.float32, device=device) * scale_h,
        torch.arange(width, dtype=torch.float32, device=device) * scale_w,
        indexing="ij",
    )
    fractions = torch.stack([c.flatten() / limit for c, limit in zip(coords, cfg.max_positions, strict=True)], -1)
    n_freqs = cfg.dim // 6
    freqs = cfg.rope_theta ** torch.linspace(0.0, 1.0, n_freqs, dtype=torch.float32, device=device) * (math.pi / 2)
    angles = (freqs * (2 * fractions[..., None] - 1)).transpose(-1, -2).flatten(1)  # (N, 3, n) -> (N, n * 3)
    return F.pad(angles, ((cfg.dim % 6) // 2, 0))  # (N, dim / 2): padding pairs first, rotated by 0


class Attention(nn.Module):
    """Multi-head attention with biases and RMS q/k norms across all heads; RoPE on the full width (self only)."""

    def __init__(self, cfg: LTXVideoConfig, context_dim: int, operations=nn):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.to_q = operations.Linear(cfg.dim, cfg.dim)
        self.to_k = operations.Linear(context_dim, cfg.dim)
        self.to_v = operations.Linear(context_dim, cfg.dim)
        self.to_out = nn.ModuleList([operations.Linear(cfg.dim, cfg.dim)])  # `to_out.0`, as the checkpoints name it
        self.q_norm = RMSNorm(cfg.dim, eps=1e-5)
        self.k_norm = RMSNorm(cfg.dim, eps=1e-5)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, N, D); context (B, L, context_dim) or None for self-attention; key_mask (B, L) bool or None;
        rope: cos/sin (1, N, 1, D/2). Returns (B, N, D)."""
        source = x if context is None else context
        q, k = self.q_norm(self.to_q(x)), self.k_norm(self.to_k(source))
        if rope is not None:  # (B, N, D) viewed as one head of width D: the rotation spans every head
            q, k = apply_rope(q[:, :, None], *rope)[:, :, 0], apply_rope(k[:, :, None], *rope)[:, :, 0]
        q, k, v = (t.unflatten(-1, (self.n_heads, -1)) for t in (q, k, self.to_v(source)))  # (B, *, H, Dh)
        return self.to_out[0](attention(q, k, v, key_mask))


class FeedForward(nn.Module):
    """net.0.proj (GELU, tanh approximation) then net.2, with biases; net.1 is the reference's parameterless dropout."""

    def __init__(self, dim: int, hidden: int, operations=nn):
        super().__init__()
        self.net = nn.ModuleList(
            [_GELUProjection(dim, hidden, operations), nn.Identity(), operations.Linear(hidden, dim)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class _GELUProjection(nn.Module):
    def __init__(self, dim: int, hidden: int, operations=nn):
        super().__init__()
        self.proj = operations.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm over the last axis without a gain, computed in float32 (the block norms have no weights)."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class TransformerBlock(nn.Module):
    """Modulated self-attention with RoPE, ungated cross-attention to the caption, modulated feed-forward."""

    def __init__(self, cfg: LTXVideoConfig, operations=nn):
        super().__init__()
        self.eps = cfg.norm_eps
        self.attn1 = Attention(cfg, cfg.dim, operations)
        self.attn2 = Attention(cfg, cfg.cross_attention_dim, operations)
        self.ff = FeedForward(cfg.dim, cfg.ffn_hidden, operations)
        self.scale_shift_table = nn.Parameter(torch.zeros(6, cfg.dim))

    def forward(self, x, caption, caption_mask, modulation, rope):
        """x (B, N, D); caption (B, L, D); modulation (B, T, 6, D) from the timestep, T = 1 (one for every token)
        or N (one per token); returns (B, N, D)."""
        shift_attn, scale_attn, gate_attn, shift_ff, scale_ff, gate_ff = self._modulations(modulation)
        x = x + gate_attn * self.attn1(rms_norm(x, self.eps) * (1 + scale_attn) + shift_attn, rope=rope)
        x = x + self.attn2(x, caption, caption_mask)
        return x + gate_ff * self.ff(rms_norm(x, self.eps) * (1 + scale_ff) + shift_ff)

    def modulated_input(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        """What the self-attention of `forward` reads: norm(x) * (1 + scale) + shift; the step cache's probe."""
        shift_attn, scale_attn = self._modulations(modulation)[:2]
        return rms_norm(x, self.eps) * (1 + scale_attn) + shift_attn

    def _modulations(self, modulation: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The six (B, T, D) shifts, scales and gates: this block's table plus the timestep's modulation."""
        return (cast_to(self.scale_shift_table, modulation) + modulation).unbind(2)


class TimestepEmbedder(nn.Module):
    """256-channel sinusoid (cosine first) -> linear_1 -> SiLU -> linear_2."""

    def __init__(self, dim: int, frequency_dim: int = 256, operations=nn):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.linear_1 = operations.Linear(frequency_dim, dim)
        self.linear_2 = operations.Linear(dim, dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = timestep_embedding(t, self.frequency_dim).to(dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))


class AdaLNSingle(nn.Module):
    """PixArt's adaLN-single: one timestep embedding for the output layer, and its 6-way block modulation."""

    def __init__(self, dim: int, operations=nn):
        super().__init__()
        embedder = TimestepEmbedder(dim, operations=operations)
        self.emb = nn.ModuleDict({"timestep_embedder": embedder})  # `emb.timestep_embedder.*`
        self.linear = operations.Linear(dim, 6 * dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """t (B, T) timesteps in 0..1000 -> (modulation (B, T, 6, D), embedded timestep (B, T, D)) in `dtype`."""
        embedded = self.emb["timestep_embedder"](t.flatten(), dtype).unflatten(0, t.shape)
        return self.linear(F.silu(embedded)).unflatten(-1, (6, -1)), embedded


class CaptionProjection(nn.Module):
    """T5 features -> width: linear_1, GELU (tanh approximation), linear_2."""

    def __init__(self, in_features: int, dim: int, operations=nn):
        super().__init__()
        self.linear_1 = operations.Linear(in_features, dim)
        self.linear_2 = operations.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


class LTXVideoTransformer(StagedForward):
    """The LTX-Video transformer.

    Call: model(x, sigma, context, context_mask, frame_rate=25.0) -> velocity, with x (B, in_channels, F, H, W)
    the video latent normalised by the VAE's per-channel statistics, sigma in [0, 1] with 1 = noise, context
    (B, L, 4096) T5-XXL features, context_mask (B, L) bool, right-padded with at least one True per row (None: no
    padding), frame_rate the video's frames per second (it sets the temporal RoPE positions); velocity = noise - data,
    shaped like x.

    sigma is (B,), one noise level per sample, or (B, 1, F, H, W), one per latent token, laid out like x with a
    single channel: each token then gets its own timestep embedding and adaLN modulation, as the model was
    trained for image-to-video (a conditioning frame at sigma 0 among noisy ones). The per-sample form does no
    per-token work: its modulation is computed once per sample and broadcast over the tokens.

    Computed on x's device, in `compute_dtype` (x's dtype when None), and returned in x's dtype; `operations`
    supplies the layers (see `lumina_core.common.ops`). The forward reads no tensor value on the host, so it compiles
    into one graph (`lumina_core.compile`).
    """

    family = FAMILY
    is_video = True  # the sampler asks for `frames` and hands latent_shape a frame count
    per_token_sigma = True  # sigma may be (B, 1, F, H, W): the sampler's noise_mask needs it
    takes_keyframes = True  # forward takes frame_positions: the sampler may append condition frames (ltxv_keyframes)
    # The VAE normalises its latent itself (per-channel statistics), so the raw latent ComfyUI passes between
    # nodes is already the model's: the identity, as ComfyUI's LTXV latent format.
    latent_format = latents.IDENTITY
    # The dtype the forward computes in (its loader sets it; None: the input's dtype).
    compute_dtype: torch.dtype | None = None

    def __init__(self, cfg: LTXVideoConfig, operations=nn):
        super().__init__()
        self.config = cfg
        self.patchify_proj = operations.Linear(cfg.in_channels, cfg.dim)
        self.adaln_single = AdaLNSingle(cfg.dim, operations)
        self.caption_projection = CaptionProjection(cfg.caption_channels, cfg.dim, operations)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(cfg, operations) for _ in range(cfg.n_layers))
        self.scale_shift_table = nn.Parameter(torch.zeros(2, cfg.dim))
        self.norm_out = operations.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = operations.Linear(cfg.dim, cfg.out_channels)

    def latent_shape(
        self, batch_size: int, height: int, width: int, frames: int = 1, frame_rate: float = DEFAULT_FRAME_RATE
    ) -> tuple[int, ...]:
        """(B, 128, F, H, W) latent for a video of `frames` frames of height x width pixels.

        Width and height must be positive multiples of 32 and the frame count 8k + 1 (1, 9, ..., 97, 121, 257): the
        VAE compresses 32 x 32 pixels and 8 frames into one cell, keeping the first frame on its own. The RoPE
        positions cover `config.max_positions`: 2048 px per side and 20 s (at `frame_rate`).
        """
        _check_reach(self.config.max_positions, height, width, frames, frame_rate)
        scale_t, scale_h, scale_w = VAE_SCALE_FACTORS
        for name, size, multiple in (("width", width, scale_w), ("height", height, scale_h)):
            if size < multiple or size % multiple:
                raise InvalidInputError(
                    f"{name} {size} is not allowed: LTX-Video needs sizes that are positive multiples of {multiple} "
                    f"(the VAE's {multiple}x downscale); the nearest is {_nearest_multiple(size, multiple)}."
                )
        if frames < 1 or (frames - 1) % scale_t:
            raise InvalidInputError(
                f"{frames} frames is not allowed: LTX-Video needs 8k + 1 frames (1, 9, 17, ..., 97, 121, ...), as the "
                f"VAE keeps the first frame and compresses each following 8 into one latent frame; the nearest is "
                f"{_nearest_frame_count(frames)}."
            )
        return (batch_size, self.config.in_channels, (frames - 1) // scale_t + 1, height // scale_h, width // scale_w)

    # The forward's stages (models/stages.py); the network's own time is sigma x timestep_scale.

    def embed(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        frame_rate: float = DEFAULT_FRAME_RATE,
        frame_positions: torch.Tensor | None = None,
    ) -> tuple[dict, torch.Tensor]:
        """Everything before the blocks: (state, video tokens (B, F*H*W, D)); state holds what blocks and head read.

        frame_positions: (F,) pixel-frame coordinate of each latent frame of x, for the RoPE; None takes the
        video's own grid (`frame_positions(F, causal_temporal_positioning)`). Keyframe conditioning appends
        latent frames that sit elsewhere in the video (`ltxv_keyframes`)."""
        self._check_inputs(x, sigma, context, context_mask, frame_rate, frame_positions)
        dtype, device = self.compute_dtype or x.dtype, x.device
        frames, height, width = x.shape[2:]
        tokens = self.patchify_proj(x.to(dtype).flatten(2).transpose(1, 2))  # (B, C, F, H, W) -> (B, F*H*W, D)
        # (B,) -> (B, 1): one timestep for all tokens; (B, 1, F, H, W) -> (B, F*H*W), in the tokens' order
        timesteps = sigma.to(device).float().flatten(1) if sigma.ndim > 1 else sigma.to(device).float()[:, None]
        modulation, embedded = self.adaln_single(timesteps * self.config.timestep_scale, dtype)  # (B,T,6,D), (B,T,D)
        angles = rope_angles(frames, height, width, frame_rate, self.config, device, frame_positions)
        state = {
            "x": x,
            "caption": self.caption_projection(context.to(device=device, dtype=dtype)),  # (B, L, D)
            "mask": None if context_mask is None else context_mask.to(device).bool(),
            "modulation": modulation,
            "embedded": embedded,
            "rope": rope_cos_sin(angles[None], device),  # cos, sin: (1, N, 1, D/2) float32
        }
        return state, tokens

    def probe(self, state: dict, tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The first block's modulated self-attention input (B, N, D); every token counts."""
        return self.transformer_blocks[0].modulated_input(tokens, state["modulation"]), None

    def run_blocks(self, state: dict, tokens: torch.Tensor) -> torch.Tensor:
        """The blocks, then the output norm and its timestep modulation: the span the step cache skips (the published
        TeaCache for LTX-Video caches the output modulation with the blocks)."""
        for block in self.transformer_blocks:
            tokens = block(tokens, state["caption"], state["mask"], state["modulation"], state["rope"])
        embedded = state["embedded"]
        shift, scale = (cast_to(self.scale_shift_table, embedded) + embedded[:, :, None]).unbind(2)  # (B, T, D) each
        return self.norm_out(tokens) * (1 + scale) + shift

    def head(self, state: dict, tokens: torch.Tensor) -> torch.Tensor:
        """The output projection back to the latent's layout: velocity = noise - data, in x's dtype."""
        x = state["x"]
        out = self.proj_out(tokens)  # (B, F*H*W, C)
        return out.transpose(1, 2).unflatten(2, x.shape[2:]).to(x.dtype)

    def _check_inputs(self, x, sigma, context, context_mask, frame_rate, frame_positions) -> None:
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise InvalidInputError(
                f"LTX-Video expects a video latent (B, {cfg.in_channels}, frames, height, width); got {tuple(x.shape)}."
            )
        if context.ndim != 3 or context.shape[-1] != cfg.caption_channels:
            raise InvalidInputError(
                f"this LTX-Video model expects text features of width {cfg.caption_channels} (T5-XXL); got "
                f"{tuple(context.shape)}: is the text encoder the one made for this model?"
            )
        if context.shape[0] != x.shape[0] or (context_mask is not None and context_mask.shape != context.shape[:2]):
            raise InvalidInputError(
                f"batch mismatch: latent {tuple(x.shape)}, text {tuple(context.shape)}, text mask "
                f"{None if context_mask is None else tuple(context_mask.shape)}."
            )
        per_token = (x.shape[0], 1, *x.shape[2:])
        if tuple(sigma.shape) not in ((x.shape[0],), per_token):
            raise InvalidInputError(
                f"batch mismatch: sigma has shape {tuple(sigma.shape)}; for the latent {tuple(x.shape)} it must be "
                f"({x.shape[0]},), one per sample, or {per_token}, one per latent token."
            )
        if not frame_rate > 0:
            raise InvalidInputError(f"frame_rate must be a positive number of frames per second; got {frame_rate!r}.")
        if frame_positions is not None and tuple(frame_positions.shape) != (x.shape[2],):
            raise InvalidInputError(
                f"frame_positions has shape {tuple(frame_positions.shape)}; the latent has {x.shape[2]} frames, one "
                "position each."
            )


def _nearest_multiple(size: int, multiple: int) -> int:
    return max(multiple, round(size / multiple) * multiple)


def _nearest_frame_count(frames: int) -> int:
    scale_t = VAE_SCALE_FACTORS[0]
    return max(1, round((frames - 1) / scale_t) * scale_t + 1)
