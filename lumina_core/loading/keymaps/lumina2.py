"""Lumina-Image 2.0 key names: original (the naming our modules use) <-> diffusers.

One table of exact (original, diffusers) name pairs serves both directions. Block keys are matched
after removing their `layers.N.` / `noise_refiner.N.` / `context_refiner.N.` prefix, so lookups are
exact and independent of order. diffusers splits the fused `attention.qkv` into `attn.to_q/k/v`: those
three are concatenated along dim 0, in q, k, v order, into the one original tensor.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

TOP_LEVEL: dict[str, str] = {
    "x_embedder.weight": "x_embedder.weight",
    "x_embedder.bias": "x_embedder.bias",
    "t_embedder.mlp.0.weight": "time_caption_embed.timestep_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "time_caption_embed.timestep_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "time_caption_embed.timestep_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "time_caption_embed.timestep_embedder.linear_2.bias",
    "cap_embedder.0.weight": "time_caption_embed.caption_embedder.0.weight",
    "cap_embedder.1.weight": "time_caption_embed.caption_embedder.1.weight",
    "cap_embedder.1.bias": "time_caption_embed.caption_embedder.1.bias",
    "final_layer.adaLN_modulation.1.weight": "norm_out.linear_1.weight",
    "final_layer.adaLN_modulation.1.bias": "norm_out.linear_1.bias",
    "final_layer.linear.weight": "norm_out.linear_2.weight",
    "final_layer.linear.bias": "norm_out.linear_2.bias",
}

BLOCK: dict[str, str] = {
    "attention.out.weight": "attn.to_out.0.weight",
    "attention.q_norm.weight": "attn.norm_q.weight",
    "attention.k_norm.weight": "attn.norm_k.weight",
    "feed_forward.w1.weight": "feed_forward.linear_1.weight",
    "feed_forward.w2.weight": "feed_forward.linear_2.weight",
    "feed_forward.w3.weight": "feed_forward.linear_3.weight",
    "attention_norm2.weight": "norm2.weight",
    "ffn_norm1.weight": "ffn_norm1.weight",
    "ffn_norm2.weight": "ffn_norm2.weight",
}
MODULATED_BLOCK: dict[str, str] = {
    **BLOCK,
    "attention_norm1.weight": "norm1.norm.weight",
    "adaLN_modulation.1.weight": "norm1.linear.weight",
    "adaLN_modulation.1.bias": "norm1.linear.bias",
}
UNMODULATED_BLOCK: dict[str, str] = {**BLOCK, "attention_norm1.weight": "norm1.weight"}  # context refiner

# diffusers config.json fields -> Lumina2Config fields that tensor shapes cannot tell.
DIFFUSERS_CONFIG = {"axes_dim_rope": "axes_dims", "patch_size": "patch_size", "norm_eps": "norm_eps"}

FUSED_QKV = "attention.qkv.weight"
SPLIT_QKV = ("attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight")

_BLOCK_PREFIX = re.compile(r"^((?:layers|noise_refiner|context_refiner)\.\d+\.)(.+)$")


def _block_table(prefix: str) -> dict[str, str]:
    return UNMODULATED_BLOCK if prefix.startswith("context_refiner.") else MODULATED_BLOCK


def inverse(table: dict[str, str]) -> dict[str, str]:
    return {diffusers: original for original, diffusers in table.items()}


def map_diffusers_keys(keys: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Plan the conversion of diffusers names.

    Returns (plan, unmatched): plan maps each original key to the diffusers keys whose tensors,
    concatenated along dim 0 in the listed order, form it; unmatched lists keys no entry covers.
    """
    return plan_renames(keys, inverse(TOP_LEVEL), lambda prefix: inverse(_block_table(prefix)), SPLIT_QKV)


def plan_renames(
    keys: list[str],
    top_level: dict[str, str],
    block_table: Callable[[str], dict[str, str]],
    split_qkv: tuple[str, str, str],
) -> tuple[dict[str, list[str]], list[str]]:
    """`map_diffusers_keys` for any Next-DiT naming: top_level and block_table(block prefix) map diffusers names
    to original ones, and the three split_qkv names of a block are concatenated into its fused `attention.qkv`."""
    plan: dict[str, list[str]] = {}
    unmatched = []
    tables: dict[str, dict[str, str]] = {}
    for key in keys:
        block = _BLOCK_PREFIX.match(key)
        table = tables.setdefault(block[1], block_table(block[1])) if block else {}
        if block and block[2] in split_qkv:
            sources = plan.setdefault(block[1] + FUSED_QKV, [None, None, None])
            sources[split_qkv.index(block[2])] = key
        elif block and block[2] in table:
            plan[block[1] + table[block[2]]] = [key]
        elif key in top_level:
            plan[top_level[key]] = [key]
        else:
            unmatched.append(key)
    incomplete = [k for k, sources in plan.items() if None in sources]
    for key in incomplete:
        unmatched.extend(s for s in plan.pop(key) if s is not None)
    return plan, unmatched


def to_diffusers(state_dict: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """Rename an original-keyed state dict to diffusers names, splitting each fused qkv (q has dim rows)."""
    return rename_to_diffusers(state_dict, dim, TOP_LEVEL, _block_table, SPLIT_QKV)


def rename_to_diffusers(
    state_dict: dict[str, torch.Tensor],
    dim: int,
    top_level: dict[str, str],
    block_table: Callable[[str], dict[str, str]],
    split_qkv: tuple[str, str, str],
) -> dict[str, torch.Tensor]:
    """`to_diffusers` for any Next-DiT naming (tables original -> diffusers, as in `plan_renames`)."""
    out = {}
    for key, tensor in state_dict.items():
        block = _BLOCK_PREFIX.match(key)
        if block and block[2] == FUSED_QKV:
            kv_rows = (tensor.shape[0] - dim) // 2
            for name, part in zip(split_qkv, tensor.split([dim, kv_rows, kv_rows])):
                out[block[1] + name] = part.contiguous()
        elif block:
            out[block[1] + block_table(block[1])[block[2]]] = tensor
        else:
            out[top_level[key]] = tensor
    return out
