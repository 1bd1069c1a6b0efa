"""Lumina-Next: the Next-DiT 2B text-to-image transformer (Alpha-VLLM, arXiv 2406.18583).

Written from Alpha-VLLM/Lumina-T2X `lumina_next_t2i_mini/models/nextdit.py` (summarised in docs/models.md,
'Lumina-Next transformer'); diffusers' `LuminaNextDiT2DModel` is the parity oracle in tests. Module attribute
names equal the original checkpoint's key segments, so the original (`consolidated.*`) and ComfyUI files load
without renaming.

Unlike Lumina-Image 2.0 there is no joint caption/image sequence: image tokens attend to themselves
(2-D RoPE, grouped kv heads) and, with the same rotated queries, to Gemma-2B (Gemma 1) caption tokens in
a tanh-gated cross-attention inside the same module. The pooled caption joins the timestep in the
scale-only adaLN modulation. The output has 2 x in_channels channels (learn-sigma); the first half is
the prediction.

The network runs in Lumina time (t = 0 noise, t = 1 data) and predicts data - noise; `embed` and `head` wrap it
in the package's convention: sigma = 1 - t and velocity = noise - data.

Inference options, plain keyword arguments of every call (`model(x, sigma, context, mask, **options)`):

- rope_scaling: "time_aware" (default; the original demo's "Time-aware" method), "linear", "ntk" or None.
  Scaled RoPE for images larger than the training size, with scale factor s (see rope_scale):
  "linear" divides the RoPE frequencies by s (position interpolation: the layout stays coherent),
  "ntk" multiplies theta by s (keeps high frequencies, i.e. local detail), "time_aware" uses "linear"
  while t < scaling_watershed (early, noisy steps that fix the layout) and "ntk" after it. The branch
  is chosen from the first sample's t, as the references do. None (or s = 1) leaves RoPE as trained.
- scaling_watershed: 0.3 (the original demo; diffusers' pipeline uses 1.0, i.e. always linear).
- rope_scale: None derives s = sqrt(H * W) / base_resolution from the image size in pixels (8 x the
  latent), floored at 1 so sizes up to the training size keep trained positions (the original demo
  scales only extrapolated sizes). A float is used as given (diffusers computes it unfloored).
- base_resolution: the training side in pixels; None = config.sample_size * 8 = 1024. It sets s and
  the training token count N0 = (base_resolution / 16) ** 2 = 4096 used below.
- proportional_attention: True (the original demo and diffusers). Image self-attention uses the
  softmax scale sqrt(log(N) / log(N0) / head_dim) for N image tokens instead of head_dim ** -0.5, so
  attention entropy stays as trained when N grows; at the training size both agree. N counts image
  tokens (queries) also under context drop. Cross-attention always uses head_dim ** -0.5.
- context_drop_ratio: 1 (off). With r > 1, image keys and values are merged by averaging every r x r
  window of the token grid (ragged edge windows average what they hold) before self-attention, so
  attention runs over N / r**2 keys while every query stays; merged keys are normalised before the
  average and rotated at their window's centroid. An approximation (the paper's "context drop") that
  trades some detail for speed at high resolution; bench/bench_context_drop.py measures it.

`check_run`, which the sampler calls once per run, checks the options and warns when the image has more than
4 x N0 tokens (beyond 2048 x 2048 for the released model), past the range the paper's extrapolation was shown
for. The forward itself reads no tensor value on the host, so it compiles into one graph (`lumina_core.compile`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import latents
from ..common.attention import attention
from ..common.norms import RMSNorm
from ..common.ops import cast_to
from ..common.rope import apply_rope, rope_angles, rope_cos_sin
from ..errors import InvalidInputError
from .nextdit import (
    VAE_DOWNSCALE,
    FinalLayer,
    NextDiT,
    NextDiTShape,
    SandwichBlock,
    TimestepEmbedder,
    check_inputs,
    patchify,
    unpatchify,
)

FAMILY = "lumina_next"
GEMMA_WIDTH, GEMMA2_WIDTH = 2048, 2304  # Gemma-2B (Lumina-Next) and Gemma-2-2B (Lumina-Image 2.0) features
MAX_EXTRAPOLATION = 4  # image tokens over the training count before a warning (the paper goes to 4x)
ROPE_SCALINGS = ("time_aware", "linear", "ntk", None)

# Stored in original and diffusers files; the original uses it only to pad variable-size image batches,
# which this module does not take (every latent in a batch has one size), and diffusers never reads it.
UNUSED_KEYS = frozenset({"pad_token"})


@dataclass(frozen=True)
class LuminaNextConfig(NextDiTShape):
    """Shapes of a Lumina-Next transformer. Defaults are the released 2B (`NextDiT_2B_GQA_patch2`)."""

    patch_size: int = 2
    in_channels: int = 4
    out_channels: int = 8  # 2 x in_channels with learn-sigma (the released model); the first half is used
    dim: int = 2304
    n_layers: int = 24
    n_heads: int = 32
    n_kv_heads: int = 8
    ffn_hidden: int = 6144
    cap_feat_dim: int = GEMMA_WIDTH
    qk_norm: bool = True
    norm_eps: float = 1e-5  # not stored in checkpoints; every release uses 1e-5
    rope_theta: float = 10000.0  # not stored in checkpoints
    sample_size: int = 128  # training latent side (1024 px); diffusers' config.json says it, other files do not

    def __post_init__(self) -> None:
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim {self.dim}, heads {self.n_heads} and kv heads {self.n_kv_heads} do not divide.")
        if self.head_dim % 4:
            raise ValueError(f"the 2-D RoPE needs a head dim divisible by 4; got {self.head_dim}.")
        if self.out_channels not in (self.in_channels, 2 * self.in_channels):
            raise ValueError(
                f"{self.out_channels} output channels for {self.in_channels} input channels: expected the same "
                "number or twice as many (learn-sigma)."
            )


def config_from_shapes(shapes: dict[str, tuple[int, ...]], **stored) -> LuminaNextConfig:
    """Derive the config from the tensor shapes of an original-keyed state dict.

    See docs/models.md, 'Lumina-Next config from shapes'.

    `stored` carries what shapes cannot tell when the file says it (a diffusers config.json, or the
    caller): patch_size (2 in every release), norm_eps, rope_theta, sample_size.
    """
    dim, patch_features = shapes["x_embedder.weight"]
    adaln_rows = shapes["layers.0.adaLN_modulation.1.weight"][0]
    if adaln_rows != 4 * dim:
        raise ValueError(
            f"layers.0.adaLN_modulation.1.weight has {adaln_rows} rows, Lumina-Next has 4 x {dim} (scale and gate "
            "only); 6 x dim is the older Lumina-T2I layout, which this loader does not support"
        )
    n_heads = shapes["layers.0.attention.gate"][0]
    patch_size = stored.pop("patch_size", 2)
    return LuminaNextConfig(
        patch_size=patch_size,
        in_channels=patch_features // patch_size**2,
        out_channels=shapes["final_layer.linear.weight"][0] // patch_size**2,
        dim=dim,
        n_layers=len({k.split(".")[1] for k in shapes if k.startswith("layers.")}),
        n_heads=n_heads,
        n_kv_heads=shapes["layers.0.attention.wk.weight"][0] // (dim // n_heads),
        ffn_hidden=shapes["layers.0.feed_forward.w1.weight"][0],
        cap_feat_dim=shapes["layers.0.attention.wk_y.weight"][1],
        qk_norm="layers.0.attention.q_norm.weight" in shapes,
        **stored,
    )


def merge_tokens(x: torch.Tensor, grid: tuple[int, int], ratio: int) -> torch.Tensor:
    """Average every ratio x ratio window of a token grid (context drop).

    x: (B, h*w, ...) tokens in row-major grid order; grid: (h, w). Returns (B, ceil(h/r)*ceil(w/r), ...);
    windows cut by the grid's edge average only the tokens they hold.
    """
    (batch, _), rest = x.shape[:2], x.shape[2:]
    planes = x.reshape(batch, *grid, -1).permute(0, 3, 1, 2)  # (B, h*w, ...) -> (B, C, h, w)
    merged = F.avg_pool2d(planes, ratio, ceil_mode=True)  # (B, C, ceil(h/r), ceil(w/r))
    return merged.flatten(2).transpose(1, 2).reshape(batch, -1, *rest)


def grid_positions(height: int, width: int) -> torch.Tensor:
    """(1, height*width, 2) float64 (row, col) patch positions in row-major order, on the CPU."""
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    return torch.stack([rows, cols], dim=-1).flatten(0, 1)[None]


def rope_2d(positions: torch.Tensor, head_dim: int, theta: float, linear_factor: float, ntk_factor: float):
    """cos/sin (B, L, 1, head_dim/2) for (B, L, 2) (row, col) positions in the Lumina-Next layout.

    Row and column pairs interleave inside a head: pair 2k turns with the row at frequency k and pair
    2k+1 with the column (docs/models.md, 'Lumina-Next RoPE'), unlike the concatenated axis blocks of Lumina 2.
    """
    half = head_dim // 2
    angles = rope_angles(positions, (half, half), theta, linear_factor, ntk_factor)  # (B, L, [rows | cols])
    angles = angles.unflatten(-1, (2, half // 2)).transpose(-1, -2).flatten(-2)  # -> row0, col0, row1, ...
    return rope_cos_sin(angles, "cpu")


class Attention(nn.Module):
    """Image self-attention plus tanh-gated cross-attention to the caption, sharing queries and output.

    Query and key norms are LayerNorms across all heads (with bias), applied before the head split.
    """

    def __init__(self, cfg: LuminaNextConfig, operations=nn):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        kv_width = cfg.n_kv_heads * cfg.head_dim
        self.wq = operations.Linear(cfg.dim, cfg.dim, bias=False)
        self.wk = operations.Linear(cfg.dim, kv_width, bias=False)
        self.wv = operations.Linear(cfg.dim, kv_width, bias=False)
        self.wk_y = operations.Linear(cfg.cap_feat_dim, kv_width, bias=False)
        self.wv_y = operations.Linear(cfg.cap_feat_dim, kv_width, bias=False)
        self.wo = operations.Linear(cfg.dim, cfg.dim, bias=False)
        self.gate = nn.Parameter(torch.zeros(cfg.n_heads))  # one per query head; zero-initialised in training
        norm = (lambda width: operations.LayerNorm(width, eps=1e-5)) if cfg.qk_norm else (lambda width: nn.Identity())
        self.q_norm, self.k_norm, self.ky_norm = norm(cfg.dim), norm(kv_width), norm(kv_width)

    def forward(
        self,
        x: torch.Tensor,
        caption: torch.Tensor,
        caption_mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        key_rope: tuple[torch.Tensor, torch.Tensor],
        query_scale: float | None,
        merge: tuple[tuple[int, int], int] | None,
    ) -> torch.Tensor:
        """x (B, N, D) image tokens, caption (B, L, cap_feat_dim) normed features; returns (B, N, D).

        key_rope rotates the (possibly merged) self-attention keys; merge is (grid, ratio) or None. query_scale
        multiplies the self-attention queries (proportional attention), or None: a factor on q rather than SDPA's
        `scale`, which would fix the size in a compiled graph.
        """
        q = apply_rope(self.q_norm(self.wq(x)).unflatten(-1, (self.n_heads, -1)), *rope)  # (B, N, H, Dh)
        k = self.k_norm(self.wk(x)).unflatten(-1, (self.n_kv_heads, -1))  # (B, N, Hkv, Dh)
        v = self.wv(x).unflatten(-1, (self.n_kv_heads, -1))
        if merge is not None:
            k, v = merge_tokens(k, *merge), merge_tokens(v, *merge)  # (B, N / r^2, Hkv, Dh)
        image_q = q if query_scale is None else q * query_scale
        image_out = attention(image_q, apply_rope(k, *key_rope), v)  # (B, N, H*Dh)

        k_y = self.ky_norm(self.wk_y(caption)).unflatten(-1, (self.n_kv_heads, -1))  # no RoPE on caption keys
        v_y = self.wv_y(caption).unflatten(-1, (self.n_kv_heads, -1))
        caption_out = attention(q, k_y, v_y, caption_mask).unflatten(-1, (self.n_heads, -1))  # (B, N, H, Dh)
        gated = caption_out * cast_to(self.gate, caption_out).tanh()[:, None]
        return self.wo(image_out + gated.flatten(-2))


class TransformerBlock(SandwichBlock):
    """A Next-DiT block whose attention also reads the (normed) caption; modulated by c = t + pooled caption."""

    def __init__(self, cfg: LuminaNextConfig, operations=nn):
        super().__init__(cfg.dim, cfg.ffn_hidden, cfg.norm_eps, cfg.t_emb_dim, operations)
        self.attention = Attention(cfg, operations)
        self.attention_y_norm = RMSNorm(cfg.cap_feat_dim, cfg.norm_eps)

    def forward(self, x, caption, caption_mask, cond, **attention_args):
        caption = self.attention_y_norm(caption)
        return self.run(x, cond, lambda h: self.attention(h, caption, caption_mask, **attention_args))


class LuminaNextTransformer(NextDiT):
    """The Lumina-Next Next-DiT.

    Call: model(x, sigma, context, context_mask, **options) -> velocity, with x (B, in_channels, H, W) the
    SDXL latent times 0.13025 (H, W multiples of the patch size), sigma (B,) in [0, 1] with 1 = noise,
    context (B, L, cap_feat_dim) Gemma-2B features (second-to-last hidden state), context_mask (B, L) bool,
    right-padded with at least one True per row, or None when no caption is padded; velocity = noise - data, shaped
    like x and in its dtype, computed on x's device in `compute_dtype` (x's dtype when None). The options are those
    of the module docstring; `operations` supplies the layers.
    """

    family = FAMILY
    model_name = "Lumina-Next"
    rope_positions = 384  # the original's 384 x 384 RoPE table: 6144 px at patch 2
    # Guidance touches only the first 3 of the 4 latent channels, as the reference sampler does
    # (docs/sampling.md, 'Lumina-Next guidance').
    cfg_channels = 3
    # The model works in the scaled SDXL VAE latent: z_model = z_vae * 0.13025
    # (docs/models.md, 'Latent normalisations').
    latent_format = latents.SDXL

    def __init__(self, cfg: LuminaNextConfig, operations=nn):
        super().__init__()
        self.config = cfg
        self.x_embedder = operations.Linear(cfg.patch_size**2 * cfg.in_channels, cfg.dim)
        self.t_embedder = TimestepEmbedder(cfg.t_emb_dim, operations=operations)
        self.cap_embedder = nn.Sequential(
            operations.LayerNorm(cfg.cap_feat_dim, eps=1e-5), operations.Linear(cfg.cap_feat_dim, cfg.t_emb_dim)
        )
        self.layers = nn.ModuleList(TransformerBlock(cfg, operations) for _ in range(cfg.n_layers))
        self.final_layer = FinalLayer(cfg.dim, cfg.patch_size**2 * cfg.out_channels, cfg.t_emb_dim, operations)

    def check_run(
        self, latent_shape: tuple[int, ...], *, base_resolution: int | None = None, **options
    ) -> None:  # fmt: skip
        """What a sampler checks once per run, before any step: the options, and a warning for sizes far beyond the
        training size (past the range the paper's extrapolation was shown for)."""
        base_resolution = base_resolution or self.config.sample_size * VAE_DOWNSCALE
        _check_options(
            options.get("rope_scaling", "time_aware"), options.get("rope_scale"), base_resolution,
            options.get("context_drop_ratio", 1), self.config.patch_size,
        )  # fmt: skip
        height, width = latent_shape[-2:]
        n_tokens = (height // self.config.patch_size) * (width // self.config.patch_size)
        trained_tokens = (base_resolution // (VAE_DOWNSCALE * self.config.patch_size)) ** 2
        if n_tokens > MAX_EXTRAPOLATION * trained_tokens:
            warnings.warn(
                f"Lumina-Next: a {width * VAE_DOWNSCALE}x{height * VAE_DOWNSCALE} image has {n_tokens} image tokens, "
                f"{n_tokens / trained_tokens:.1f}x the {trained_tokens} of the {base_resolution}px training size; "
                f"beyond {MAX_EXTRAPOLATION}x, expect repeated or broken structure.",
                stacklevel=3,
            )

    # The forward's stages (models/stages.py).

    def embed(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        *,
        rope_scaling: str | None = "time_aware",
        scaling_watershed: float = 0.3,
        rope_scale: float | None = None,
        base_resolution: int | None = None,
        proportional_attention: bool = True,
        context_drop_ratio: int = 1,
    ) -> tuple[dict, torch.Tensor]:
        """Everything before the blocks: (state, image tokens (B, N, D)); state holds what blocks and head read."""
        cfg = self.config
        check_inputs("Lumina-Next", cfg, x, sigma, context, context_mask, self._features_message)
        if base_resolution is None:
            base_resolution = cfg.sample_size * VAE_DOWNSCALE
        _check_options(rope_scaling, rope_scale, base_resolution, context_drop_ratio, cfg.patch_size)
        dtype, device = self.compute_dtype or x.dtype, x.device
        height, width = x.shape[-2] // cfg.patch_size, x.shape[-1] // cfg.patch_size
        n_tokens, trained_tokens = height * width, (base_resolution // (VAE_DOWNSCALE * cfg.patch_size)) ** 2

        context = context.to(device=device, dtype=dtype)
        caption_mask = None if context_mask is None else context_mask.to(device).bool()
        # Conditioning c = t embedding + embedding of the mask-weighted mean caption feature.
        t = (1 - sigma).to(device)  # the network runs in Lumina time t = 1 - sigma
        if caption_mask is None:
            pooled = context.float().mean(dim=1).to(dtype)
        else:
            weights = caption_mask.float()[..., None]
            pooled = ((context.float() * weights).sum(dim=1) / weights.sum(dim=1)).to(dtype)  # (B, cap_feat_dim)
        cond = self.t_embedder(t, dtype) + self.cap_embedder(pooled)  # (B, t_emb_dim)

        if rope_scale is None:
            rope_scale = max(1.0, math.sqrt(x.shape[-2] * x.shape[-1]) * VAE_DOWNSCALE / base_resolution)
        positions = grid_positions(height, width)
        merge = None if context_drop_ratio == 1 else ((height, width), context_drop_ratio)
        scaled = (rope_scaling, rope_scale, t, scaling_watershed, device)
        rope = _scaled_rope(positions, cfg, *scaled)
        # Merged keys are rotated at the centroid of their window.
        key_rope = rope if merge is None else _scaled_rope(merge_tokens(positions, *merge), cfg, *scaled)
        # Proportional attention: softmax scale sqrt(log N / log N0) / sqrt(head_dim), as a factor on the queries.
        # log2, not log: torch traces log2 of a symbolic size, so a new size does not specialise a compiled graph.
        query_scale = math.sqrt(math.log2(n_tokens) / math.log2(trained_tokens)) if proportional_attention else None
        image = self.x_embedder(patchify(x.to(dtype), cfg.patch_size, channels_last=False))  # (B, N, D)
        state = {
            "x": x, "context": context, "mask": caption_mask, "cond": cond, "rope": rope, "key_rope": key_rope,
            "query_scale": query_scale, "merge": merge,
        }  # fmt: skip
        return state, image

    def probe(self, state: dict, image: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The first block's modulated attention input (B, N, D); every token counts."""
        return self.layers[0].modulated_input(image, state["cond"]), None

    def run_blocks(self, state: dict, image: torch.Tensor) -> torch.Tensor:
        """The blocks: the span the step cache skips."""
        attention = {k: state[k] for k in ("rope", "key_rope", "query_scale", "merge")}
        for block in self.layers:
            image = block(image, state["context"], state["mask"], state["cond"], **attention)
        return image

    def head(self, state: dict, image: torch.Tensor) -> torch.Tensor:
        """The final layer: velocity = noise - data, shaped like x and in its dtype."""
        x, patch = state["x"], self.config.patch_size
        out = unpatchify(self.final_layer(image, state["cond"]), x.shape[-2] // patch, x.shape[-1] // patch, patch)
        # learn-sigma: the second half is the unused variance; the network predicts data - noise
        return -out[:, : self.config.in_channels].to(x.dtype)

    def _features_message(self, context: torch.Tensor) -> str:
        cfg = self.config
        found = {
            GEMMA2_WIDTH: ", the width of Gemma-2-2B features, which Lumina-Image 2.0 uses",
            GEMMA_WIDTH: ", the width of Gemma-2B (Gemma 1) features, which the released Lumina-Next uses",
        }.get(context.shape[-1] if context.ndim == 3 else None, "")
        return (
            f"this Lumina-Next model expects text features of width {cfg.cap_feat_dim} (Gemma-2B, Gemma 1 for "
            f"the released model; Lumina-Image 2.0 uses Gemma-2-2B, width {GEMMA2_WIDTH}); got "
            f"{tuple(context.shape)}{found}. Encode the prompt with the text encoder made for this model."
        )


def _check_options(rope_scaling, rope_scale, base_resolution, context_drop_ratio, patch_size) -> None:
    if rope_scaling not in ROPE_SCALINGS:
        raise InvalidInputError(f"rope_scaling must be one of {ROPE_SCALINGS}; got {rope_scaling!r}.")
    if rope_scale is not None and not rope_scale > 0:
        raise InvalidInputError(f"rope_scale must be a positive number, or None to derive it; got {rope_scale!r}.")
    if base_resolution < 2 * VAE_DOWNSCALE * patch_size:
        raise InvalidInputError(
            f"base_resolution is the training image side in pixels (1024 for the released model); got "
            f"{base_resolution!r}, which leaves fewer than 2x2 training tokens."
        )
    if not isinstance(context_drop_ratio, int) or context_drop_ratio < 1:
        raise InvalidInputError(
            f"context_drop_ratio must be a whole number >= 1 (1 = off, 2 merges 2x2 key/value windows); "
            f"got {context_drop_ratio!r}."
        )


def _scaled_rope(
    positions: torch.Tensor,
    cfg: LuminaNextConfig,
    rope_scaling: str | None,
    scale: float,
    t: torch.Tensor,
    watershed: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the positions under the RoPE scaling (module docstring), on `device`.

    The time-aware branch follows the first sample's t, as the references do (a CFG batch shares one t). Both of its
    tables are made and one is picked on the device, so the choice needs no host sync.
    """

    def rope(linear: float, ntk: float) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = rope_2d(positions, cfg.head_dim, cfg.rope_theta, linear, ntk)
        return cos.to(device), sin.to(device)

    if rope_scaling is None or scale == 1:
        return rope(1.0, 1.0)
    if rope_scaling == "linear":
        return rope(scale, 1.0)
    if rope_scaling == "ntk":
        return rope(1.0, scale)
    (linear_cos, linear_sin), (ntk_cos, ntk_sin) = rope(scale, 1.0), rope(1.0, scale)
    early = t[0] < watershed  # the layout phase: linear interpolation; NTK after it
    return torch.where(early, linear_cos, ntk_cos), torch.where(early, linear_sin, ntk_sin)
