"""Lumina-Next key names: original (the naming our modules use) <-> diffusers (docs/formats.md, 'Lumina-Next keys').

One table of exact name pairs serves both directions. Block keys are matched after removing their
`layers.N.` prefix, so lookups are exact and independent of order. Nothing is fused or split, but
diffusers keeps the shared query projection and query norm twice, once in `attn1` (self-attention)
and once in `attn2` (cross-attention): each original key lists every diffusers copy, the first is
read and the loader checks that the others are equal to it.
"""

from __future__ import annotations

import re

import torch

TOP_LEVEL: dict[str, str] = {
    "x_embedder.weight": "patch_embedder.proj.weight",
    "x_embedder.bias": "patch_embedder.proj.bias",
    "t_embedder.mlp.0.weight": "time_caption_embed.timestep_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "time_caption_embed.timestep_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "time_caption_embed.timestep_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "time_caption_embed.timestep_embedder.linear_2.bias",
    "cap_embedder.0.weight": "time_caption_embed.caption_embedder.0.weight",
    "cap_embedder.0.bias": "time_caption_embed.caption_embedder.0.bias",
    "cap_embedder.1.weight": "time_caption_embed.caption_embedder.1.weight",
    "cap_embedder.1.bias": "time_caption_embed.caption_embedder.1.bias",
    "final_layer.adaLN_modulation.1.weight": "norm_out.linear_1.weight",
    "final_layer.adaLN_modulation.1.bias": "norm_out.linear_1.bias",
    "final_layer.linear.weight": "norm_out.linear_2.weight",
    "final_layer.linear.bias": "norm_out.linear_2.bias",
}

# Original block key -> its diffusers copies (more than one: identical duplicates).
BLOCK: dict[str, tuple[str, ...]] = {
    "attention.wq.weight": ("attn1.to_q.weight", "attn2.to_q.weight"),
    "attention.wk.weight": ("attn1.to_k.weight",),
    "attention.wv.weight": ("attn1.to_v.weight",),
    "attention.wk_y.weight": ("attn2.to_k.weight",),
    "attention.wv_y.weight": ("attn2.to_v.weight",),
    "attention.wo.weight": ("attn2.to_out.0.weight",),  # attn1.to_out is an identity in diffusers
    "attention.gate": ("gate",),
    "attention.q_norm.weight": ("attn1.norm_q.weight", "attn2.norm_q.weight"),
    "attention.q_norm.bias": ("attn1.norm_q.bias", "attn2.norm_q.bias"),
    "attention.k_norm.weight": ("attn1.norm_k.weight",),
    "attention.k_norm.bias": ("attn1.norm_k.bias",),
    "attention.ky_norm.weight": ("attn2.norm_k.weight",),
    "attention.ky_norm.bias": ("attn2.norm_k.bias",),
    "attention_norm1.weight": ("norm1.norm.weight",),
    "attention_norm2.weight": ("norm2.weight",),
    "ffn_norm1.weight": ("ffn_norm1.weight",),
    "ffn_norm2.weight": ("ffn_norm2.weight",),
    "attention_y_norm.weight": ("norm1_context.weight",),
    "adaLN_modulation.1.weight": ("norm1.linear.weight",),
    "adaLN_modulation.1.bias": ("norm1.linear.bias",),
    "feed_forward.w1.weight": ("feed_forward.linear_1.weight",),
    "feed_forward.w2.weight": ("feed_forward.linear_2.weight",),
    "feed_forward.w3.weight": ("feed_forward.linear_3.weight",),
}

# diffusers keys the model does not use (models.lumina_next.UNUSED_KEYS under its diffusers name).
UNUSED_DIFFUSERS_KEYS = frozenset({"pad_token"})

# diffusers config.json fields -> LuminaNextConfig fields that tensor shapes cannot tell.
DIFFUSERS_CONFIG = {"patch_size": "patch_size", "norm_eps": "norm_eps", "sample_size": "sample_size"}

_BLOCK_PREFIX = re.compile(r"^(layers\.\d+\.)(.+)$")
_TOP_LEVEL_INVERSE = {diffusers: original for original, diffusers in TOP_LEVEL.items()}
_BLOCK_INVERSE = {copy: original for original, copies in BLOCK.items() for copy in copies}


def map_diffusers_keys(keys: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Plan the conversion of diffusers names.

    Returns (plan, unmatched): plan maps each original key to the diffusers keys holding identical copies
    of its tensor (read the first, compare the rest); unmatched lists keys no entry covers, and the copies
    of a duplicated tensor whose other copy is missing. Unused keys (pad_token) are in neither.
    """
    plan: dict[str, list[str]] = {}
    unmatched = []
    for key in keys:
        block = _BLOCK_PREFIX.match(key)
        if block and block[2] in _BLOCK_INVERSE:
            plan.setdefault(block[1] + _BLOCK_INVERSE[block[2]], []).append(key)
        elif key in _TOP_LEVEL_INVERSE:
            plan[_TOP_LEVEL_INVERSE[key]] = [key]
        elif key not in UNUSED_DIFFUSERS_KEYS:
            unmatched.append(key)
    for original, sources in list(plan.items()):
        block = _BLOCK_PREFIX.match(original)
        expected = BLOCK[block[2]] if block else (TOP_LEVEL[original],)
        if len(sources) != len(expected):
            unmatched.extend(plan.pop(original))
        else:  # the table's order, whatever the file's
            sources.sort(key=lambda s: expected.index(_BLOCK_PREFIX.match(s)[2] if block else s))
    return plan, unmatched


def alternative_names(key: str) -> list[tuple[str, None]]:
    """Every diffusers copy of the original tensor `key` (for the LoRA loader; nothing is fused, so no parts)."""
    block = _BLOCK_PREFIX.match(key)
    if block:
        return [(block[1] + copy, None) for copy in BLOCK.get(block[2], ())]
    return [(TOP_LEVEL[key], None)] if key in TOP_LEVEL else []


def to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original-keyed state dict to diffusers names, writing every copy of the duplicated tensors."""
    out = {}
    for key, tensor in state_dict.items():
        block = _BLOCK_PREFIX.match(key)
        if block:
            out.update({block[1] + copy: tensor for copy in BLOCK[block[2]]})
        elif key in UNUSED_DIFFUSERS_KEYS:
            out[key] = tensor  # pad_token has the same name in both layouts
        else:
            out[TOP_LEVEL[key]] = tensor
    return out
