"""Load LoRA (Lumina): a LoRA file as patches on a clone of the loaded model, applied by ComfyUI's own LoRA code.

The model the loader made (which ComfyUI caches) is never changed: the node clones its ModelPatcher and puts the
patches on the clone; ComfyUI applies them when it loads the clone to sample and takes them off when it loads
another. The core matches the names (`lumina_core.lora.targets`: every key style of each family, a split q/k/v as
its rows of the fused qkv, sized by the model's own head counts), so ComfyUI's parser gets a key map to our layers
and turns every format it knows (LoRA, DoRA, LoHa, LoKr, GLoRA, full diffs) into weight patches. GGUF layers keep
packed bytes that ComfyUI cannot patch: a plain LoRA goes beside them as the core's low-rank side path, any other
format is merged once into a dequantized float copy of the layer; both reach the clone as object patches.

Outside ComfyUI (tests, scripts) the node applies the LoRA with the core (`lumina_core.lora.apply_loras`).
"""

from __future__ import annotations

import os

import torch

from ..lumina_core.common.ops import cast_ops, default_compute_dtype
from ..lumina_core.errors import CheckpointError
from ..lumina_core.gguf.quantized import QuantizedLinear
from ..lumina_core.lora import apply_loras
from ..lumina_core.lora.apply import effective_weight
from ..lumina_core.lora.checks import check_family, check_size, nothing_matches, warn_unused
from ..lumina_core.lora.side_path import LowRankLinear
from ..lumina_core.lora.targets import DOTTED_PREFIXES, key_modules, name_table, target_rows, weighted_modules
from ..lumina_core.validation import check_float
from . import comfy_bridge as bridge
from .handles import Handle

CATEGORY = "Lumina"


class LoadLuminaLoRA:
    DISPLAY_NAME = "Load LoRA (Lumina)"
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("LUMINA_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied; the input model is left as it is.",)
    DESCRIPTION = (
        "Applies a LoRA from the loras folder to a Lumina-Image 2.0, Lumina-Next, Z-Image or LTX-Video model (float or "
        "GGUF). "
        "Chain several for several LoRAs."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("LUMINA_MODEL", {"tooltip": "A transformer from Load Lumina Transformer or Load GGUF."}),
                "lora_name": (bridge.list_files("loras"), {
                    "tooltip": "A LoRA for this model's family, in any common key style (diffusers / peft, ComfyUI, "
                    "kohya; LoRA, DoRA, LoHa, LoKr): the tensor names decide, never the file name."}),
                "strength": ("FLOAT", {
                    "default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                    "tooltip": "How strongly to apply it: negative reverses it, 0 gives the model unchanged."}),
            }
        }  # fmt: skip

    def load(self, model: Handle, lora_name: str, strength: float):
        strength = check_float("strength", strength, -100.0, 100.0)
        if strength == 0:
            return (model,)
        path = bridge.resolve_file("loras", lora_name)
        if not bridge.IN_COMFYUI:
            patched = apply_loras(model.model, [(path, strength)])
            return (Handle(patched, bridge.patcher(patched, model.kind), model.kind, model.family, model.source),)
        return (Handle(model.model, lora_patcher(model, path, strength), model.kind, model.family, model.source),)


def lora_patcher(model: Handle, path: str, strength: float):
    """A clone of `model`'s ModelPatcher carrying the LoRA at `path`: ComfyUI weight patches for float layers,
    object patches (side path or a merged float copy) for GGUF layers."""
    module, family = model.model, model.family
    state = bridge.read_lora(path)
    check_family(family, path, key_modules(state))
    prefix = bridge.module_prefix(model.patcher, module)
    key_map = lora_key_map(module, prefix)
    patches = bridge.lora_patches(state, key_map)
    if not patches:
        raise CheckpointError(nothing_matches(family, path, len(state), state))
    matched = {name for name, key in key_map.items() if key in patches}
    unused = [key for key in state if not key_modules([key]) & matched]
    if unused:
        warn_unused(os.path.basename(path), unused, len(state), family)
    file_names = {key_map[name]: name for name in key_modules(state) if name in key_map}
    weight_patches, packed = {}, {}
    for key, patch in patches.items():
        name, offset = (key, None) if isinstance(key, str) else key
        owner, _, leaf = name[len(prefix) :].rpartition(".")
        _check_size(path, file_names.get(key, name), patch, module, owner, offset)
        if leaf == "weight" and isinstance(module.get_submodule(owner), QuantizedLinear):
            packed.setdefault(prefix + owner, []).append((name, offset, patch))
        else:
            weight_patches[key] = patch
    dtype = default_compute_dtype(module)
    swaps = {name: _packed_layer(model.patcher, name, changes, strength, dtype) for name, changes in packed.items()}
    return bridge.patched_clone(model.patcher, weight_patches, strength, swaps)


def _check_size(path: str, name: str, patch, model: torch.nn.Module, owner: str, offset) -> None:
    """A plain LoRA change must fit its Linear layer (ComfyUI would log a shape error per key and sample without it)."""
    factors = bridge.plain_lora(patch)
    layer = model.get_submodule(owner)
    if factors is None or not hasattr(layer, "in_features"):
        return
    down, up, _ = factors
    rows = slice(0, layer.out_features) if offset is None else slice(offset[1], offset[1] + offset[2])
    check_size(path, name, (up.shape[0], down.shape[1]), owner, rows, layer, model.family)


def lora_key_map(module: torch.nn.Module, prefix: str) -> dict[str, object]:
    """ComfyUI's LoRA key map for our model: every name a file may use (container prefix included) -> the state-dict
    key it patches, or (key, (0, first row, rows)) for a part of a fused weight; and, as ComfyUI's own key maps
    do, `diffusion_model.<key>` for the tensors that are not weights (biases, tables)."""
    layers = weighted_modules(module)
    key_map: dict[str, object] = {}
    for name, target in name_table(module, layers).spelled().items():
        key = f"{prefix}{target.module}.weight"
        if target.part is None:
            key_map[name] = key
        else:
            rows = target_rows(target, layers[target.module], module)
            key_map[name] = (key, (0, rows.start, rows.stop - rows.start))
    for key in module.state_dict():
        if not key.endswith((".weight", ".packed")):
            key_map.update({f"{container}{key}": f"{prefix}{key}" for container in DOTTED_PREFIXES if container})
    return key_map


def _packed_layer(patcher, name: str, changes: list, strength: float, dtype: torch.dtype) -> torch.nn.Module:
    """What the GGUF layer `name` becomes on the clone: the side path with these plain LoRAs stacked on what an
    earlier LoRA node put there, or, for any other kind of change, a float copy with everything merged in once."""
    current = bridge.current_module(patcher, name)
    layer = current.layer if isinstance(current, LowRankLinear) else current
    factors = [bridge.plain_lora(patch) for _, _, patch in changes]
    if isinstance(layer, QuantizedLinear) and all(f is not None for f in factors):
        downs = [] if layer is current else [current.down]
        ups = [] if layer is current else [current.up]
        for (_, offset, _), (down, up, scale) in zip(changes, factors):
            rows = slice(0, layer.out_features) if offset is None else slice(offset[1], offset[1] + offset[2])
            full = torch.zeros(layer.out_features, up.shape[1], dtype=torch.float32, device=up.device)
            full[rows] = up.float() * (strength * scale)
            downs.append(down.float())
            ups.append(full)
        device = layer.packed.device
        return LowRankLinear(layer, torch.cat(downs).to(device, dtype), torch.cat(ups, dim=1).to(device, dtype))
    weight = effective_weight(layer) if layer is current else _merged_side_path(current)
    for key, offset, patch in changes:
        weight = bridge.merged(weight, key, patch, strength, offset)
    merged = cast_ops.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    merged.weight = torch.nn.Parameter(weight.to(dtype), requires_grad=False)
    merged.bias = layer.bias
    return merged


def _merged_side_path(side_path: LowRankLinear) -> torch.Tensor:
    """The float32 weight a side-path layer computes with: its layer's plus up @ down."""
    weight = effective_weight(side_path.layer)
    return weight + side_path.up.to(weight.device, torch.float32) @ side_path.down.to(weight.device, torch.float32)
