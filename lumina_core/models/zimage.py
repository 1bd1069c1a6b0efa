"""Z-Image and Z-Image-Turbo (Tongyi-MAI, 2025): the S3-DiT, a single-stream Next-DiT of 6B parameters.

Z-Image is Lumina-Image 2.0's network (`lumina2.py`: caption and noise refiners, then joint blocks) with other
sizes and five changes, each checked against diffusers' `ZImageTransformer2DModel` (0.42.1, the parity oracle
in tests) and ComfyUI's `NextDiT` with `z_image_modulation`:
- the timestep embedding is 256 wide (the adaLN input) behind a 1024-wide MLP, and t is scaled by 1000 first;
- the blocks' modulation is one Linear on that embedding, without SiLU (key `adaLN_modulation.0`; the final
  layer keeps its SiLU, `adaLN_modulation.1`);
- captions start at RoPE position 1 (Lumina 2: 0), so the image's first axis is 1 + the caption slots;
- every caption is followed by a learned `cap_pad_token` up to a multiple of 32 tokens, and the image by a
  learned `x_pad_token`; these pad tokens are real tokens: they attend and are attended to (only the slots
  beyond a sample's own padded length are masked), caption pads at the positions after the caption, image pads
  at (0, 0, 0);
- no grouped-query attention at the released size (30 heads, 30 kv heads), FFN 8/3 x width, RoPE theta 256
  with axes (32, 48, 48).

Released model (Z-Image and Z-Image-Turbo share it): width 3840, 30 layers, 2 refiners of each kind, head 128,
FFN 10240, caption features 2560 (Qwen3-4B), FLUX VAE latent (16 channels), patch 2.

Key names: original / ComfyUI files use Lumina 2's (fused `attention.qkv`, `attention.out`, q/k `_norm`), plus
`x_pad_token`, `cap_pad_token` and `layers.N.adaLN_modulation.0`; diffusers names are in `loading/keymaps/zimage.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .lumina2 import Lumina2Config, Lumina2Transformer, shape_fields
from .lumina2 import default_axes_dims as lumina2_axes_dims

FAMILY = "zimage"

# Present in some single files (Lumina 2's unused final RMSNorm), never used by the forward pass.
UNUSED_KEYS = frozenset({"norm_final.weight"})
# Stored as (1, D) by diffusers, ComfyUI and the original code, as (D,) by some converted files.
PAD_TOKENS = ("x_pad_token", "cap_pad_token")


@dataclass(frozen=True)
class ZImageConfig(Lumina2Config):
    """Shapes of a Z-Image transformer. Defaults are the released 6B model (diffusers' config.json)."""

    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2
    n_heads: int = 30
    n_kv_heads: int = 30
    ffn_hidden: int = 10240
    cap_feat_dim: int = 2560
    axes_dims: tuple[int, int, int] = (32, 48, 48)  # not stored in checkpoints
    rope_theta: float = 256.0  # not stored in checkpoints
    adaln_dim: int | None = 256
    t_hidden_dim: int | None = 1024
    time_scale: float = 1000.0  # diffusers' t_scale; not stored in original checkpoints
    pad_multiple: int = 32  # diffusers' SEQ_MULTI_OF, ComfyUI's pad_tokens_multiple


def config_from_shapes(shapes: dict[str, tuple[int, ...]], **stored) -> ZImageConfig:
    """The config from the tensor shapes of an original-keyed state dict.

    Shapes give the sizes (as for Lumina 2, `lumina2.shape_fields`); `stored` carries what they cannot (a
    diffusers config.json or the caller): patch_size, axes_dims (default: `default_axes_dims`), rope_theta,
    time_scale, norm_eps.
    """
    head_dim = shapes["layers.0.attention.q_norm.weight"][0]
    stored["axes_dims"] = tuple(stored.get("axes_dims") or default_axes_dims(head_dim))
    return ZImageConfig(**shape_fields(shapes, stored.pop("patch_size", 2)), **stored)


def default_axes_dims(head_dim: int) -> tuple[int, int, int]:
    """The released split scaled to the head: a quarter for the caption axis, 3/8 each for rows and columns
    ((32, 48, 48) for head 128); Lumina 2's rule where that is not three even numbers."""
    if head_dim % 16:
        return lumina2_axes_dims(head_dim)
    return (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)


class ZImageTransformer(Lumina2Transformer):
    """The Z-Image S3-DiT, called as Lumina2Transformer: model(x, sigma, context, context_mask) -> velocity, with
    context the Qwen3-4B features of `text/qwen3.py`."""

    family = FAMILY
    model_name = "Z-Image"
    text_encoder_name = "Qwen3-4B"
    caption_start = 1
    cond_silu = False
