"""Applying LoRAs to a loaded transformer without touching it, and taking them off again.

`apply_loras(model, [(lora, strength), ...])` returns a new model that shares every tensor of `model` except the
layers the LoRAs change: the module tree is copied along the paths to those layers (a few hundred small objects),
and each changed layer is replaced in the copy, never written to. So the base model (one a cache holds, say) stays
bit-identical, and `remove_loras(patched)` simply hands it back. Per changed layer:

- a float Linear gets a merged weight W' = W + sum_i strength_i * scale_i * up_i @ down_i, computed in float32 and
  stored in W's dtype (one extra copy of that weight; `merge=False` keeps W and uses the side path instead);
- a layer whose stored weight is not what it computes with (GGUF-packed, fp8 storage, scaled fp8) keeps it and gets
  the side path (`LowRankLinear`), every LoRA stacked into one pair of factors: merging into fp8 would round;
- a DoRA change needs the weight's norms, so its layer is merged even then (dequantized once, here).

DoRA: V = W + scale * up @ down, then V's columns (dora_scale (1, in)) or rows ((out, 1) / (out,)) are rescaled to the
stored magnitudes, and strength s blends W + s * (DoRA(W) - W), as ComfyUI does. Changes apply in list order, so a
DoRA after another LoRA normalises the already changed weight.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..common.ops import cast_ops, default_compute_dtype
from ..errors import CheckpointError
from ..gguf.quantized import QuantizedLinear
from ..loading.transformer import FAMILIES
from ..validation import check_float
from .checks import check_family, check_size, nothing_matches, warn_unused
from .factors import LoRA, LowRank, load_lora
from .side_path import LowRankLinear
from .targets import (
    NameTable,
    Target,
    linear_layers,
    name_table,
    target_rows,
)

MERGEABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

LoraSpec = tuple[LoRA | str | os.PathLike, float]


@dataclass(frozen=True)
class LoraState:
    """What a patched model was made from (kept on it as `lora_state`; not a module, so not in its state dict)."""

    base: nn.Module
    loras: tuple[tuple[LoRA, float], ...]


@dataclass(frozen=True)
class Patch:
    change: LowRank
    strength: float
    rows: slice  # the rows of the layer's weight it changes (a fused qkv's part, or all)


def apply_loras(model: nn.Module, loras: Sequence[LoraSpec], merge: bool = True) -> nn.Module:
    """`model` with the LoRAs applied, each at its strength (negative allowed, 0 leaves it out); `model` is untouched.

    loras: (LoRA or path, strength) pairs, applied in order. A model that already carries LoRAs is patched again
    from its base with the old list followed by the new one. Raises CheckpointError (UnsupportedModelError for a
    LoRA of another model) naming the file when a LoRA matches no layer or its shapes do not fit; warns once per
    LoRA, with a count and examples, about keys that match nothing.
    merge: False puts float layers on the side path too (no extra weight memory, two thin matmuls per layer).
    """
    base = remove_loras(model)
    new = tuple((_as_lora(lora), check_float("LoRA strength", strength)) for lora, strength in loras)
    state = LoraState(base, applied_loras(model) + new)
    layers = linear_layers(base)
    table = name_table(base)
    patches: dict[str, list[Patch]] = {}
    for lora, strength in state.loras:
        for module, patch in _plan(base, lora, strength, table, layers):
            patches.setdefault(module, []).append(patch)
    if not patches:
        return base
    dtype = default_compute_dtype(base)
    patched = _copy_along(
        base, {module: _patched_layer(layers[module], ps, merge, dtype) for module, ps in patches.items()}
    )
    patched.lora_state = state
    return patched


def remove_loras(model: nn.Module) -> nn.Module:
    """The model `apply_loras` started from (bit-identical: it was never written to); `model` itself if it has none."""
    state = getattr(model, "lora_state", None)
    return state.base if state is not None else model


def applied_loras(model: nn.Module) -> tuple[tuple[LoRA, float], ...]:
    """The (LoRA, strength) pairs a model carries, in the order they were applied."""
    state = getattr(model, "lora_state", None)
    return state.loras if state is not None else ()


def _as_lora(lora: LoRA | str | os.PathLike) -> LoRA:
    return lora if isinstance(lora, LoRA) else load_lora(lora)


def _plan(model, lora: LoRA, strength: float, table: NameTable, layers) -> list[tuple[str, Patch]]:
    """(module path, patch) for every change of `lora` this model has a layer for; raises or warns about the rest."""
    family = FAMILIES[model.family]
    check_family(model.family, lora.path, lora.modules)
    found: dict[Target, tuple[str, LowRank]] = {}
    unused = list(lora.other_keys)
    for name, change in lora.modules.items():
        target = table.resolve(name)
        if target is None:
            unused.extend(change.keys)
        elif target in found and not found[target][1].same_as(change):
            raise CheckpointError(
                f"{lora.path}: {found[target][0]} and {name} both change {target.module}"
                f"{'' if target.part is None else f' (part {target.part})'} of this {family.name} model, differently: "
                "the model holds that weight once, so the two cannot both apply. Remove one from the file."
            )
        else:
            found.setdefault(target, (name, change))  # identical copies (diffusers' duplicated projections) apply once
    if not found:
        raise CheckpointError(nothing_matches(model.family, lora.path, lora.key_count, lora.modules))
    if unused:
        warn_unused(lora.name, unused, lora.key_count, model.family, stacklevel=3)
    if strength == 0:
        return []
    return [
        (t.module, _patch(lora, name, change, strength, t, layers[t.module], model))
        for t, (name, change) in found.items()
    ]


def _patch(lora: LoRA, name: str, change: LowRank, strength: float, target: Target, layer, model) -> Patch:
    rows = target_rows(target, layer, model)
    expected = (rows.stop - rows.start, layer.in_features)
    check_size(lora.path, name, (change.up.shape[0], change.down.shape[1]), target.module, rows, layer, model.family)
    dora = change.dora_scale
    if dora is not None and tuple(dora.shape) not in ((1, expected[1]), (expected[0], 1), (expected[0],)):
        raise CheckpointError(
            f"{lora.path}: {name}.dora_scale has shape {tuple(dora.shape)}; for a ({expected[0]}, {expected[1]}) "
            f"weight DoRA stores (1, {expected[1]}) or ({expected[0]}, 1)."
        )
    return Patch(change, strength, rows)


def _patched_layer(layer: nn.Module, patches: list[Patch], merge: bool, dtype: torch.dtype) -> nn.Module:
    has_dora = any(p.change.dora_scale is not None for p in patches)
    if not has_dora and not (merge and _holds_its_weight(layer)):
        return _side_path(layer, patches, dtype)
    if _holds_its_weight(layer):
        merged = _shallow_copy(layer)
        merged.weight = nn.Parameter(merged_weight(layer.weight, patches), requires_grad=False)
        return merged
    # A DoRA needs the weight itself: the quantized (or scaled) one is dequantized once into a float layer, which
    # computes wherever its input is, as the packed layer did.
    weight = merged_weight(effective_weight(layer), patches).to(dtype)
    merged = cast_ops.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    merged.weight = nn.Parameter(weight, requires_grad=False)
    merged.bias = layer.bias
    return merged


def _holds_its_weight(layer: nn.Module) -> bool:
    """Whether the layer's stored weight is the weight it computes with, in a dtype torch computes in: then a
    merge stays exact. Not for GGUF-packed, fp8-stored or fp8-with-scale layers."""
    weight = getattr(layer, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dtype in MERGEABLE_DTYPES and not hasattr(layer, "scale_weight")


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The float32 weight a Linear layer computes with: dequantized, or stored weight x `scale_weight`."""
    if isinstance(layer, QuantizedLinear):
        return layer.dequantized_weight(torch.float32, layer.packed.device)
    weight = layer.weight.to(torch.float32)
    scale = getattr(layer, "scale_weight", None)
    return weight * scale.to(weight.device, torch.float32) if scale is not None else weight


def merged_weight(weight: torch.Tensor, patches: list[Patch]) -> torch.Tensor:
    """`weight` with every patch applied in order, computed in float32, returned in `weight`'s dtype (a new tensor)."""
    result = weight.to(torch.float32, copy=True)
    for patch in patches:
        block = result[patch.rows]  # a view: changing it changes result
        delta = patch.change.delta(result.device)
        if patch.change.dora_scale is None:
            block += patch.strength * delta
        else:
            block += patch.strength * (_dora(block, delta, patch.change.dora_scale) - block)
    return result.to(weight.dtype)


def _dora(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA's weight: W + delta, its columns (magnitude (1, in)) or rows ((out, 1), (out,)) rescaled to those norms."""
    changed = weight + delta
    magnitude = magnitude.to(changed.device, torch.float32)
    per_column = magnitude.ndim == 2 and magnitude.shape[0] == 1
    norms = changed.norm(dim=0, keepdim=True) if per_column else changed.norm(dim=1, keepdim=True)
    return changed * (magnitude.reshape(norms.shape) / norms.clamp_min(torch.finfo(torch.float32).tiny))


def _side_path(layer: nn.Module, patches: list[Patch], dtype: torch.dtype) -> LowRankLinear:
    device = layer.packed.device if isinstance(layer, QuantizedLinear) else layer.weight.device
    rank = sum(p.change.rank for p in patches)
    down = torch.cat([p.change.down.to(device, torch.float32) for p in patches])  # (R, in)
    up = torch.zeros(layer.out_features, rank, device=device)  # (out, R): each change's rows and rank columns
    column = 0
    for p in patches:
        factor = p.strength * p.change.scale
        up[p.rows, column : column + p.change.rank] = p.change.up.to(device, torch.float32) * factor
        column += p.change.rank
    return LowRankLinear(layer, down.to(dtype), up.to(dtype))


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object sharing `module`'s parameters, buffers and children, with its own tables of them."""
    clone = copy.copy(module)
    for table in ("_parameters", "_buffers", "_modules"):
        clone.__dict__[table] = dict(module.__dict__[table])
    return clone


def _copy_along(root: nn.Module, replacements: dict[str, nn.Module]) -> nn.Module:
    """A copy of `root` in which each path of `replacements` leads to its new module; every other object is shared."""
    copies = {"": _shallow_copy(root)}

    def copy_of(path: str) -> nn.Module:
        if path not in copies:
            parent, _, child = path.rpartition(".")
            copies[path] = _shallow_copy(copy_of(parent)._modules[child])
            copies[parent]._modules[child] = copies[path]
        return copies[path]

    for path, module in replacements.items():
        parent, _, child = path.rpartition(".")
        copy_of(parent)._modules[child] = module
    return copies[""]
