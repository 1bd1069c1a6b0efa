"""Z-Image key names: original (Tongyi-MAI / ComfyUI, the naming our modules use) <-> diffusers.

diffusers' `ZImageTransformer2DModel` keeps most original names. It differs only in the patch embedder and
final layer, which it keeps in dicts keyed by "<patch>-<frame patch>" ("2-1" for the released model), in the
attention output and q/k norms, and in splitting the fused `attention.qkv` (q, k, v rows, in that order) into
`attention.to_q/to_k/to_v`. Every other name is the same on both sides and listed as such, so each table is
the complete list of a model's names (what a LoRA key mapper needs). Lookups are exact and order-free (the
planner is Lumina 2's, `lumina2.plan_renames`).
"""

from __future__ import annotations

import torch

from .lumina2 import FUSED_QKV, inverse, other_names, plan_renames, rename_to_diffusers

DIFFUSERS_PATCH = "2-1"  # the `all_x_embedder` / `all_final_layer` key of patch 2, frame patch 1

TOP_LEVEL: dict[str, str] = {
    "x_embedder.weight": f"all_x_embedder.{DIFFUSERS_PATCH}.weight",
    "x_embedder.bias": f"all_x_embedder.{DIFFUSERS_PATCH}.bias",
    "final_layer.linear.weight": f"all_final_layer.{DIFFUSERS_PATCH}.linear.weight",
    "final_layer.linear.bias": f"all_final_layer.{DIFFUSERS_PATCH}.linear.bias",
    "final_layer.adaLN_modulation.1.weight": f"all_final_layer.{DIFFUSERS_PATCH}.adaLN_modulation.1.weight",
    "final_layer.adaLN_modulation.1.bias": f"all_final_layer.{DIFFUSERS_PATCH}.adaLN_modulation.1.bias",
    **{name: name for name in (
        "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias",
        "cap_embedder.0.weight", "cap_embedder.1.weight", "cap_embedder.1.bias", "x_pad_token", "cap_pad_token",
    )},
}  # fmt: skip

UNMODULATED_BLOCK: dict[str, str] = {  # context_refiner.N
    "attention.out.weight": "attention.to_out.0.weight",
    "attention.q_norm.weight": "attention.norm_q.weight",
    "attention.k_norm.weight": "attention.norm_k.weight",
    **{name: name for name in (
        "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight", "attention_norm1.weight",
        "attention_norm2.weight", "ffn_norm1.weight", "ffn_norm2.weight",
    )},
}  # fmt: skip
MODULATED_BLOCK: dict[str, str] = {  # noise_refiner.N and layers.N
    **UNMODULATED_BLOCK,
    "adaLN_modulation.0.weight": "adaLN_modulation.0.weight",
    "adaLN_modulation.0.bias": "adaLN_modulation.0.bias",
}
SPLIT_QKV = ("attention.to_q.weight", "attention.to_k.weight", "attention.to_v.weight")  # fused: FUSED_QKV

# diffusers config.json fields -> ZImageConfig fields that tensor shapes cannot tell.
DIFFUSERS_CONFIG = {
    "axes_dims": "axes_dims",
    "rope_theta": "rope_theta",
    "t_scale": "time_scale",
    "norm_eps": "norm_eps",
}

__all__ = ["FUSED_QKV", "MODULATED_BLOCK", "SPLIT_QKV", "TOP_LEVEL", "UNMODULATED_BLOCK", "alternative_names",
           "map_diffusers_keys"]  # fmt: skip


def _block_table(prefix: str) -> dict[str, str]:
    return UNMODULATED_BLOCK if prefix.startswith("context_refiner.") else MODULATED_BLOCK


def map_diffusers_keys(keys: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """(plan, unmatched) as `lumina2.map_diffusers_keys`: original key -> the diffusers keys forming it."""
    return plan_renames(keys, inverse(TOP_LEVEL), lambda prefix: inverse(_block_table(prefix)), SPLIT_QKV)


def alternative_names(key: str) -> list[tuple[str, int | None]]:
    """The diffusers names of the original tensor `key` (what Z-Image LoRA trainers write too), each with its row
    block in a fused qkv (`lumina2.qkv_rows`: q, k and v have the width each here) or None for the whole tensor."""
    return other_names(key, TOP_LEVEL, _block_table, (SPLIT_QKV,), {})


def to_diffusers(state_dict: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """Rename an original-keyed state dict to diffusers names, splitting each fused qkv (q has dim rows)."""
    return rename_to_diffusers(state_dict, dim, TOP_LEVEL, _block_table, SPLIT_QKV)
