"""LTX-Video key names: original Lightricks / ComfyUI (the naming our modules use) <-> diffusers.

diffusers renames four module names and keeps everything else, with no fused or split tensors (docs/formats.md,
'LTX-Video transformer keys'). The table below lists every key as a pair; block keys are matched after removing their
`transformer_blocks.N.` prefix, so lookups are exact and independent of order.

Also here: the fields of the JSON `config` that original files keep in their safetensors metadata, and of a
diffusers `config.json`, that tensor shapes cannot tell.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ...errors import CheckpointError, UnsupportedModelError
from ..files import metadata_json

# The diffusers name of each renamed module.
_RENAMED = {"patchify_proj": "proj_in", "adaln_single": "time_embed", "q_norm": "norm_q", "k_norm": "norm_k"}


def _linear(name: str) -> tuple[str, str]:
    return f"{name}.weight", f"{name}.bias"


_TOP_LEVEL_ORIGINAL = (
    *_linear("patchify_proj"),
    *_linear("adaln_single.emb.timestep_embedder.linear_1"),
    *_linear("adaln_single.emb.timestep_embedder.linear_2"),
    *_linear("adaln_single.linear"),
    *_linear("caption_projection.linear_1"),
    *_linear("caption_projection.linear_2"),
    "scale_shift_table",
    *_linear("proj_out"),
)
_BLOCK_ORIGINAL = (
    *(key for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")
      for key in _linear(f"{attn}.{proj}")),
    *(f"{attn}.{norm}.weight" for attn in ("attn1", "attn2") for norm in ("q_norm", "k_norm")),
    *_linear("ff.net.0.proj"),
    *_linear("ff.net.2"),
    "scale_shift_table",
)  # fmt: skip


def _to_diffusers_name(key: str) -> str:
    return ".".join(_RENAMED.get(part, part) for part in key.split("."))


# Original key -> diffusers key, top-level and per block.
TOP_LEVEL: dict[str, str] = {key: _to_diffusers_name(key) for key in _TOP_LEVEL_ORIGINAL}
BLOCK: dict[str, str] = {key: _to_diffusers_name(key) for key in _BLOCK_ORIGINAL}

# diffusers config.json fields -> LTXVideoConfig fields (or head_dim, from which the head count follows).
DIFFUSERS_CONFIG = {
    "num_attention_heads": "n_heads",
    "attention_head_dim": "head_dim",
    "norm_eps": "norm_eps",
    "patch_size": "patch_size",
    "patch_size_t": "patch_size_t",
}

# Fields of the `transformer` entry of an original file's metadata `config` (the Lightricks Transformer3DModel
# constructor's arguments) -> LTXVideoConfig fields.
METADATA_CONFIG = {
    "num_attention_heads": "n_heads",
    "attention_head_dim": "head_dim",
    "norm_eps": "norm_eps",
    "positional_embedding_theta": "rope_theta",
    "positional_embedding_max_pos": "max_positions",
    "causal_temporal_positioning": "causal_temporal_positioning",
    "timestep_scale_multiplier": "timestep_scale",
}
# Constructor arguments of the original whose other values would make a different network than this module.
METADATA_REQUIRED = {"standardization_norm": "rms_norm", "positional_embedding_type": "rope", "qk_norm": "rms_norm"}

_BLOCK_PREFIX = re.compile(r"^(transformer_blocks\.\d+\.)(.+)$")
_TOP_LEVEL_INVERSE = {diffusers: original for original, diffusers in TOP_LEVEL.items()}
_BLOCK_INVERSE = {diffusers: original for original, diffusers in BLOCK.items()}


def map_diffusers_keys(keys: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Plan the conversion of diffusers names: (original key -> [its diffusers key], keys no entry covers)."""
    plan: dict[str, list[str]] = {}
    unmatched = []
    for key in keys:
        block = _BLOCK_PREFIX.match(key)
        if block and block[2] in _BLOCK_INVERSE:
            plan[block[1] + _BLOCK_INVERSE[block[2]]] = [key]
        elif key in _TOP_LEVEL_INVERSE:
            plan[_TOP_LEVEL_INVERSE[key]] = [key]
        else:
            unmatched.append(key)
    return plan, unmatched


def alternative_names(key: str) -> list[tuple[str, None]]:
    """The diffusers name of the original tensor `key` (for the LoRA loader; nothing is fused, so no parts)."""
    block = _BLOCK_PREFIX.match(key)
    if block:
        return [(block[1] + BLOCK[block[2]], None)] if block[2] in BLOCK else []
    return [(TOP_LEVEL[key], None)] if key in TOP_LEVEL else []


def to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original-keyed state dict to diffusers names."""
    out = {}
    for key, tensor in state_dict.items():
        block = _BLOCK_PREFIX.match(key)
        out[block[1] + BLOCK[block[2]] if block else TOP_LEVEL[key]] = tensor
    return out


def config_from_metadata(metadata: Mapping[str, str], path: str) -> dict:
    """The config fields an original file's safetensors metadata says (its JSON `config`); {} without one.

    Raises CheckpointError, naming the file, for unreadable JSON or a transformer this module cannot build.
    """
    stored = metadata_json(metadata, path, "the Lightricks config (transformer, vae, scheduler)")
    transformer = stored.get("transformer") if isinstance(stored, dict) else None
    if not isinstance(transformer, dict):
        return {}
    if transformer.get("use_audio_video_cross_attention") or transformer.get("_class_name") == "AVTransformer3DModel":
        raise UnsupportedModelError(
            f"{path} holds an LTX-2 audio-video transformer (its metadata config says so); this loader supports the "
            "LTX-Video 0.9.x text-to-video transformers (2B and 13B)."
        )
    for field, expected in METADATA_REQUIRED.items():
        if transformer.get(field, expected) != expected:
            raise CheckpointError(
                f"{path}: its metadata config says {field} = {transformer[field]!r}; LTX-Video 0.9.x transformers use "
                f"{expected!r}, the only kind this loader builds."
            )
    return {
        ours: transformer[theirs] for theirs, ours in METADATA_CONFIG.items() if transformer.get(theirs) is not None
    }
