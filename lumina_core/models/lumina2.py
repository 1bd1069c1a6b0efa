"""Lumina-Image 2.0: the Next-DiT with caption and image refiners (Alpha-VLLM, arXiv 2503.21758).

Written from Alpha-VLLM/Lumina-Image-2.0 `models/model.py` (summarised in docs/models.md,
'Lumina-Image 2.0 transformer'); diffusers' `Lumina2Transformer2DModel` is the parity oracle in tests. Module
attribute names equal the original checkpoint's key segments, so the original and ComfyUI files load without
renaming.

The network runs in Lumina time (t = 0 noise, t = 1 data) and predicts data - noise; `embed` and `head` wrap it
in the package's convention: sigma = 1 - t and velocity = noise - data.

Z-Image (`zimage.py`) is this network with a few knobs turned, which the config and two class attributes
carry: a narrower adaLN input with a wider timestep MLP, timesteps scaled by 1000, blocks that project the
timestep embedding without SiLU, captions starting at RoPE position 1, and learned pad tokens filling
captions and images up to a multiple of 32 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import latents
from ..common.attention import attention
from ..common.norms import RMSNorm
from ..common.ops import cast_to
from ..common.rope import apply_rope, rope_gather, rope_tables
from .nextdit import (
    FinalLayer,
    NextDiT,
    NextDiTShape,
    SandwichBlock,
    TimestepEmbedder,
    check_inputs,
    pad_to_multiple,
    patchify,
    unpatchify,
)

FAMILY = "lumina2"

# Present in original and ComfyUI files but never used by the forward pass (diffusers drops it too).
UNUSED_KEYS = frozenset({"norm_final.weight"})


@dataclass(frozen=True)
class Lumina2Config(NextDiTShape):
    """Shapes of a Lumina-Image 2.0 transformer. Defaults are the released 2B model."""

    patch_size: int = 2
    in_channels: int = 16
    dim: int = 2304
    n_layers: int = 26
    n_refiner_layers: int = 2
    n_heads: int = 24
    n_kv_heads: int = 8
    ffn_hidden: int = 9216
    cap_feat_dim: int = 2304
    norm_eps: float = 1e-5
    axes_dims: tuple[int, int, int] = (32, 32, 32)  # not stored in checkpoints; see default_axes_dims
    rope_theta: float = 10000.0
    # Knobs Z-Image turns (zimage.py); Lumina-Image 2.0's values by default.
    adaln_dim: int | None = None  # width of the timestep embedding and adaLN input; None: min(dim, 1024)
    t_hidden_dim: int | None = None  # hidden width of the timestep MLP; None: the adaLN width
    time_scale: float = 1.0  # t is multiplied by this before its sinusoidal embedding
    pad_multiple: int = 1  # > 1: learned pad tokens fill captions and images up to a multiple of this

    def __post_init__(self) -> None:
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim {self.dim}, heads {self.n_heads} and kv heads {self.n_kv_heads} do not divide.")
        if sum(self.axes_dims) != self.head_dim or any(d % 2 for d in self.axes_dims):
            raise ValueError(f"axes_dims {self.axes_dims} must be even and sum to the head dim {self.head_dim}.")
        if self.pad_multiple < 1:
            raise ValueError(f"pad_multiple must be at least 1, got {self.pad_multiple}.")

    @property
    def t_emb_dim(self) -> int:
        return self.adaln_dim or min(self.dim, 1024)


def default_axes_dims(head_dim: int) -> tuple[int, int, int]:
    """Split a head into three even RoPE blocks, the remainder going to the caption axis.

    Gives (32, 32, 32) for the released 2B (head 96) and the 3B/4B/7B sizes of the original code;
    the split is not stored in checkpoints.
    """
    block = 2 * (head_dim // 6)
    return (head_dim - 2 * block, block, block)


def config_from_shapes(shapes: dict[str, tuple[int, ...]], **stored) -> Lumina2Config:
    """Derive the config from the tensor shapes of an original-keyed state dict.

    See docs/models.md, 'Lumina-Image 2.0 config from shapes'.

    `stored` carries what shapes cannot tell when the file says it (a diffusers config.json, or the
    caller): patch_size (2 in every release), axes_dims (default_axes_dims), norm_eps, rope_theta.
    """
    head_dim = shapes["layers.0.attention.q_norm.weight"][0]
    stored["axes_dims"] = tuple(stored.get("axes_dims") or default_axes_dims(head_dim))
    return Lumina2Config(**shape_fields(shapes, stored.pop("patch_size", 2)), **stored)


def shape_fields(shapes: dict[str, tuple[int, ...]], patch_size: int) -> dict:
    """The config fields tensor shapes tell (original key names), for Lumina 2 and the models built on it."""
    dim, patch_features = shapes["x_embedder.weight"]
    head_dim = shapes["layers.0.attention.q_norm.weight"][0]
    qkv_rows = shapes["layers.0.attention.qkv.weight"][0]
    t_hidden_dim, adaln_dim = shapes["t_embedder.mlp.0.weight"][0], shapes["t_embedder.mlp.2.weight"][0]
    return dict(
        patch_size=patch_size,
        in_channels=patch_features // patch_size**2,
        dim=dim,
        n_layers=_count_blocks(shapes, "layers."),
        n_refiner_layers=_count_blocks(shapes, "noise_refiner."),
        n_heads=dim // head_dim,
        n_kv_heads=(qkv_rows - dim) // 2 // head_dim,
        ffn_hidden=shapes["layers.0.feed_forward.w1.weight"][0],
        cap_feat_dim=shapes["cap_embedder.1.weight"][1],
        adaln_dim=adaln_dim,
        t_hidden_dim=t_hidden_dim,
    )


def _count_blocks(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    return len({k[len(prefix) :].split(".", 1)[0] for k in shapes if k.startswith(prefix)})


class Attention(nn.Module):
    """Self-attention with a fused q|k|v projection, per-head RMS q/k norms, RoPE and grouped kv heads."""

    def __init__(self, cfg: Lumina2Config, operations=nn):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.qkv = operations.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=False)
        self.out = operations.Linear(cfg.dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, eps=1e-5)
        self.k_norm = RMSNorm(cfg.head_dim, eps=1e-5)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], key_mask: torch.Tensor | None):
        kv_width = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([self.n_heads * self.head_dim, kv_width, kv_width], dim=-1)
        q = self.q_norm(q.unflatten(-1, (self.n_heads, -1)))  # (B, L, H, Dh)
        k = self.k_norm(k.unflatten(-1, (self.n_kv_heads, -1)))  # (B, L, Hkv, Dh)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.out(attention(q, k, v.unflatten(-1, (self.n_kv_heads, -1)), key_mask))


class TransformerBlock(SandwichBlock):
    """A Next-DiT block over the joint sequence; refiners of the caption are not modulated."""

    def __init__(self, cfg: Lumina2Config, modulated: bool, operations=nn, cond_silu: bool = True):
        cond_dim = cfg.t_emb_dim if modulated else None
        super().__init__(cfg.dim, cfg.ffn_hidden, cfg.norm_eps, cond_dim, operations, cond_silu)
        self.attention = Attention(cfg, operations)

    def forward(self, x, rope, key_mask, t_emb=None):
        return self.run(x, t_emb, lambda h: self.attention(h, rope, key_mask))


class Lumina2Transformer(NextDiT):
    """The Lumina-Image 2.0 Next-DiT.

    Call: model(x, sigma, context, context_mask) -> velocity, with x (B, C, H, W) the normalised FLUX
    latent (H, W multiples of the patch size), sigma (B,) in [0, 1] with 1 = noise, context (B, L, cap_feat_dim)
    text features (Gemma-2 for Lumina 2), context_mask (B, L) bool, right-padded with at least one True per row, or
    None when no caption is padded; velocity = noise - data. Slots past the longest caption are attended to by nobody
    but still cost work: the sampler cuts them once per run. The forward reads no tensor value on the host, so it
    compiles into one graph (`lumina_core.compile`). Computed on x's device, in `compute_dtype` (x's dtype when
    None), and returned in x's dtype; `operations` supplies the layers (see `lumina_core.common.ops`).
    """

    family = FAMILY
    model_name = "Lumina-Image 2.0"
    text_encoder_name = "Gemma-2-2B"
    rope_positions = 512  # the original's axes_lens (300, 512, 512): 8192 px at patch 2
    # The model works in the normalised FLUX VAE latent: z_model = (z_vae - shift) * scale
    # (docs/models.md, 'Latent normalisations').
    latent_format = latents.FLUX
    caption_start = 0  # RoPE position of the first caption token on the first axis
    cond_silu = True  # the blocks' adaLN projection applies SiLU to the timestep embedding first

    def __init__(self, cfg: Lumina2Config, operations=nn):
        super().__init__()
        self.config = cfg
        self.x_embedder = operations.Linear(cfg.patch_size**2 * cfg.in_channels, cfg.dim)
        self.t_embedder = TimestepEmbedder(cfg.t_emb_dim, operations=operations, hidden_dim=cfg.t_hidden_dim)
        self.cap_embedder = nn.Sequential(
            RMSNorm(cfg.cap_feat_dim, cfg.norm_eps), operations.Linear(cfg.cap_feat_dim, cfg.dim)
        )
        if cfg.pad_multiple > 1:
            self.x_pad_token = nn.Parameter(torch.empty(1, cfg.dim))
            self.cap_pad_token = nn.Parameter(torch.empty(1, cfg.dim))
        self.context_refiner = _blocks(cfg, cfg.n_refiner_layers, False, operations, self.cond_silu)
        self.noise_refiner = _blocks(cfg, cfg.n_refiner_layers, True, operations, self.cond_silu)
        self.layers = _blocks(cfg, cfg.n_layers, True, operations, self.cond_silu)
        self.final_layer = FinalLayer(cfg.dim, cfg.patch_size**2 * cfg.in_channels, cfg.t_emb_dim, operations)

    # The forward's stages (models/stages.py).

    def embed(
        self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> tuple[dict, torch.Tensor]:
        """Everything before the main blocks: (state, the joint sequence (B, L + N', D)).

        state holds what the blocks and the head read: the input, the timestep embedding, RoPE and the joint mask.
        """
        cfg = self.config
        check_inputs(self.model_name, cfg, x, sigma, context, context_mask, self._features_message)
        dtype, device = self.compute_dtype or x.dtype, x.device
        # the network runs in Lumina time t = 1 - sigma
        t_emb = self.t_embedder((1 - sigma).to(device) * cfg.time_scale, dtype)
        caption, caption_mask, caption_slots = self._embed_caption(context.to(device, dtype), context_mask)
        image = self.x_embedder(patchify(x.to(dtype), cfg.patch_size, channels_last=True))  # (B, N, D)
        height, width = x.shape[-2] // cfg.patch_size, x.shape[-1] // cfg.patch_size
        if cfg.pad_multiple > 1:
            image = pad_to_multiple(image, self.x_pad_token, cfg.pad_multiple)  # (B, N', D)

        # The joint sequence is [caption slots ; image] for every sample. Attention only sees positions through
        # RoPE, so this equals the references' per-sample [caption_b ; image] (or [image ; caption_b]) packing
        # once the slots past each caption are masked, and needs no per-sample gather.
        longest = caption.shape[1]
        lengths = (self.caption_start + longest + 1, height, width)
        tables = rope_tables(lengths, cfg.axes_dims, cfg.rope_theta, device)
        cos, sin = rope_gather(tables, self._positions(caption_slots, longest, height, width, image.shape[1]))
        caption_rope, image_rope = (cos[:, :longest], sin[:, :longest]), (cos[:, longest:], sin[:, longest:])

        for block in self.context_refiner:
            caption = block(caption, caption_rope, caption_mask)
        for block in self.noise_refiner:
            image = block(image, image_rope, None, t_emb)
        joint = torch.cat([caption, image], dim=1)
        joint_mask = None if caption_mask is None else nn.functional.pad(caption_mask, (0, image.shape[1]), value=True)
        return {"x": x, "t_emb": t_emb, "cos": cos, "sin": sin, "mask": joint_mask, "caption": longest}, joint

    def probe(self, state: dict, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first main block's modulated attention input (B, L + N', D), and 1 / 0 weights for the tokens that
        take part / the masked slots (None: all take part)."""
        mask = state["mask"]
        return self.layers[0].modulated_input(joint, state["t_emb"]), None if mask is None else mask.float()

    def run_blocks(self, state: dict, joint: torch.Tensor) -> torch.Tensor:
        """The main blocks over the joint sequence: the span the step cache skips."""
        for block in self.layers:
            joint = block(joint, (state["cos"], state["sin"]), state["mask"], state["t_emb"])
        return joint

    def head(self, state: dict, joint: torch.Tensor) -> torch.Tensor:
        """The final layer on the image tokens: velocity = noise - data, shaped like x and in its dtype."""
        x, patch, longest = state["x"], self.config.patch_size, state["caption"]
        height, width = x.shape[-2] // patch, x.shape[-1] // patch
        out = self.final_layer(joint[:, longest : longest + height * width], state["t_emb"])
        return -unpatchify(out, height, width, patch).to(x.dtype)  # the network predicts data - noise

    def _embed_caption(
        self, context: torch.Tensor, context_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Embedded caption slots (B, L, D), their key mask (None when no caption is padded) and slots per sample (B,).

        Sample b has its L_b tokens, then (with pad_multiple m > 1) the learned caption pad token up to the next
        multiple of m: S_b slots, which all attend and are attended to; the slots beyond S_b are masked out
        everywhere. L is the longest caption rounded up to m, which is the largest S_b when the captions are cut
        after their longest real token (the sampler does): no tensor value is read on the host.
        """
        multiple, width = self.config.pad_multiple, context.shape[1]
        longest = -(-width // multiple) * multiple
        if context_mask is None:
            lengths = torch.full((context.shape[0],), width, device=context.device)
        else:
            lengths = context_mask.to(context.device).sum(dim=1)
        slots = (lengths + multiple - 1) // multiple * multiple  # (B,)
        if width < longest:  # the pad tokens need slots the text encoder did not fill
            context = nn.functional.pad(context, (0, 0, 0, longest - width))
        caption = self.cap_embedder(context)
        index = torch.arange(longest, device=context.device)
        if multiple > 1:
            is_token = (index[None] < lengths[:, None])[..., None]  # (B, L, 1)
            caption = torch.where(is_token, caption, cast_to(self.cap_pad_token, like=caption))
        mask = None if context_mask is None else index[None] < slots[:, None]
        return caption, mask, slots

    def _positions(
        self, caption_slots: torch.Tensor, longest: int, height: int, width: int, image_slots: int
    ) -> torch.Tensor:
        """(B, longest + image_slots, 3) RoPE ids, with s = caption_start and S_b the caption slots of sample b:
        caption slot i -> (s + i, 0, 0); patch (r, c) -> (s + S_b, r, c); image pad tokens -> (0, 0, 0)."""
        batch, device, start = caption_slots.shape[0], caption_slots.device, self.caption_start
        caption = torch.zeros(batch, longest, 3, dtype=torch.long, device=device)
        caption[..., 0] = start + torch.arange(longest, device=device)
        rows, cols = torch.meshgrid(
            torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
        )
        image = torch.zeros(batch, image_slots, 3, dtype=torch.long, device=device)
        image[:, : height * width, 1], image[:, : height * width, 2] = rows.flatten(), cols.flatten()
        image[:, : height * width, 0] = start + caption_slots[:, None]
        return torch.cat([caption, image], dim=1)

    def _features_message(self, context: torch.Tensor) -> str:
        return (
            f"this {self.model_name} model expects text features of width {self.config.cap_feat_dim} "
            f"({self.text_encoder_name}); got {tuple(context.shape)}{_foreign_width(context)}: is the text encoder "
            "the one made for this model?"
        )


def _blocks(cfg: Lumina2Config, count: int, modulated: bool, operations, cond_silu: bool) -> nn.ModuleList:
    return nn.ModuleList(TransformerBlock(cfg, modulated, operations, cond_silu) for _ in range(count))


# Feature widths of the text encoders this package loads, to name the model a wrong conditioning was made for.
_KNOWN_WIDTHS = {
    2048: "Gemma-2B (Gemma 1) features, which Lumina-Next uses",
    2304: "Gemma-2-2B features, which Lumina-Image 2.0 uses",
    2560: "Qwen3-4B features, which Z-Image uses",
    4096: "T5-XXL features, which LTX-Video uses",
}


def _foreign_width(context: torch.Tensor) -> str:
    known = _KNOWN_WIDTHS.get(context.shape[-1]) if context.ndim == 3 else None
    return f", the width of {known}" if known else ""
