"""Lumina-Image 2.0 key names: original (the naming our modules use) <-> diffusers.

One table of exact (original, diffusers) name pairs serves both directions. Block keys are matched
after removing their `layers.N.` / `noise_refiner.N.` / `context_refiner.N.` prefix, so lookups are
exact and independent of order. diffusers splits the fused `attention.qkv` into `attn.to_q/k/v`: those
three are concatenated along dim 0, in q, k, v order, into the one original tensor. q has `dim` rows
(every head); k and v share the rest equally (grouped-query attention: 2304 + 768 + 768 in the release).

LoRA trainers add a third naming for the attention projections: the original `attention.` module with
diffusers-style leaves, `attention.to_q/to_k/to_v` (parts of the fused qkv) and `attention.to_out.0`.
`alternative_names` lists every other name of an original tensor, for the LoRA loader.
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
# LoRA trainers' names (Z-Image's diffusers naming) for the fused qkv's parts and the output projection.
TRAINER_SPLIT_QKV = ("attention.to_q.weight", "attention.to_k.weight", "attention.to_v.weight")
TRAINER_BLOCK = {"attention.out.weight": "attention.to_out.0.weight"}

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


def qkv_rows(fused_rows: int, dim: int) -> list[int]:
    """Rows of q, k and v in a fused qkv weight of `fused_rows` rows: q has dim, k and v half the rest each."""
    kv_rows = (fused_rows - dim) // 2
    return [dim, kv_rows, kv_rows]


def part_rows(key: str, shape: tuple[int, ...], config) -> list[int]:
    """Row counts of the parts `alternative_names` numbers in the original tensor `key` of `shape` (out, in) of a
    model with `config`: a fused qkv's q, k and v by the model's own head counts (n_heads x head_dim, then
    n_kv_heads x head_dim twice; 2304 + 768 + 768 in Lumina-Image 2.0, thirds in Z-Image), else the whole tensor."""
    if not key.endswith(FUSED_QKV):
        return [shape[0]]
    kv_rows = config.n_kv_heads * config.head_dim
    return [config.n_heads * config.head_dim, kv_rows, kv_rows]


def alternative_names(key: str) -> list[tuple[str, int | None]]:
    """The other names of the original tensor `key`: diffusers' and LoRA trainers'.

    Each comes with the index of the row block it is within the original tensor (q, k, v = 0, 1, 2 of a
    fused qkv, split by `qkv_rows`), or None when it names the whole tensor.
    """
    return other_names(key, TOP_LEVEL, _block_table, (SPLIT_QKV, TRAINER_SPLIT_QKV), TRAINER_BLOCK)


def other_names(
    key: str,
    top_level: dict[str, str],
    block_table: Callable[[str], dict[str, str]],
    split_qkvs: tuple[tuple[str, str, str], ...],
    extra_block: dict[str, str],
) -> list[tuple[str, int | None]]:
    """`alternative_names` for any Next-DiT naming: tables original -> other name as in `rename_to_diffusers`,
    every triple of names for a fused qkv's parts, and further block names (original -> name)."""
    block = _BLOCK_PREFIX.match(key)
    if block is None:
        return [(top_level[key], None)] if key in top_level else []
    prefix, rest = block.groups()
    if rest == FUSED_QKV:
        return [(prefix + name, part) for names in split_qkvs for part, name in enumerate(names)]
    names = [block_table(prefix).get(rest), extra_block.get(rest)]
    return [(prefix + name, None) for name in names if name is not None]


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
            for name, part in zip(split_qkv, tensor.split(qkv_rows(tensor.shape[0], dim))):
                out[block[1] + name] = part.contiguous()
        elif block:
            out[block[1] + block_table(block[1])[block[2]]] = tensor
        else:
            out[top_level[key]] = tensor
    return out
