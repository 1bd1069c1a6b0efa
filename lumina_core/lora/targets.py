"""Which layer of a loaded model each module name in a LoRA file means.

A name is one of the family's namings: original / ComfyUI (the model's own module paths), diffusers, or a trainer's
variant, as the family's key map lists them (`alternative_names`); a split q/k/v name means a row block of the fused
qkv, sized by the model's own head counts (`part_rows`). It comes under a container prefix (`diffusion_model.`,
`transformer.`, ...) or none, or with its dots flattened to underscores after a kohya-style prefix
(`lora_unet_layers_0_attention_qkv`). The table is built from the model's Linear layers, so the names resolve the same
whatever file layout the model itself was loaded from.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, partial

from torch import nn

from ..gguf.quantized import QuantizedLinear
from ..loading.modules import build_on_meta
from ..loading.transformer import FAMILIES

# Containers that keep dotted module paths, most specific first ("" = a bare name).
DOTTED_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "")
# kohya-style prefixes before an underscore-flattened path: kohya and ComfyUI (original names), OneTrainer and
# SimpleTuner (diffusers names); either naming is accepted after each.
FLAT_PREFIXES = ("lora_unet_", "lora_transformer_", "lycoris_")
# Text-encoder parts some LoRA files carry: never applied to a transformer, reported as such.
TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "te.", "te1.", "te2.")
# Other models' LoRAs, by a fragment of their names, for the error message.
FOREIGN_MODELS = (
    ("double_blocks", "FLUX"), ("single_transformer_blocks", "FLUX (diffusers)"), ("joint_blocks", "SD3"),
    ("input_blocks", "SD 1.x / SDXL"), ("down_blocks", "SD 1.x / SDXL (diffusers)"),
    ("blocks_0_self_attn", "Wan"), ("blocks.0.self_attn", "Wan"), ("transformer_blocks_0_img_mod", "Qwen-Image"),
    ("transformer_blocks.0.img_mod", "Qwen-Image"),
)  # fmt: skip


@dataclass(frozen=True)
class Target:
    module: str  # the model's module path, e.g. "layers.0.attention.qkv"
    part: int | None  # row block of a fused weight (q, k, v = 0, 1, 2), None for the whole weight


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's Linear layers (float or GGUF-quantized), by module path: what a LoRA can change."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, QuantizedLinear))}


@dataclass(frozen=True)
class NameTable:
    """The names a LoRA file may give the Linear layers of one model, without their container prefix."""

    dotted: dict[str, Target]  # "layers.0.attention.qkv", "layers.0.attn.to_q", ...
    flat: dict[str, Target]  # "layers_0_attention_qkv", ...: after a kohya-style prefix

    def resolve(self, name: str) -> Target | None:
        """The target of a LoRA module name as the file spells it, or None."""
        for prefix in FLAT_PREFIXES:
            if name.startswith(prefix):
                return self.flat.get(name[len(prefix) :])
        for prefix in DOTTED_PREFIXES:
            if name.startswith(prefix) and name[len(prefix) :] in self.dotted:
                return self.dotted[name[len(prefix) :]]
        return None

    def spelled(self) -> dict[str, Target]:
        """Every full module name a file may use, prefix included (the form ComfyUI's LoRA key maps take)."""
        dotted = {prefix + name: t for prefix in DOTTED_PREFIXES for name, t in self.dotted.items()}
        return {**dotted, **{prefix + name: t for prefix in FLAT_PREFIXES for name, t in self.flat.items()}}


def weighted_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module with a weight of its own (Linear layers, norms, embeddings), by path: what a full-weight patch
    (ComfyUI's `.diff`, LoHa on a norm) can change."""
    return {name: m for name, m in model.named_modules() if "weight" in m._parameters or isinstance(m, QuantizedLinear)}


def name_table(model: nn.Module, modules: Iterable[str] | None = None) -> NameTable:
    """Every name a LoRA file may give each of `modules` (default: the Linear layers) of `model`, in each family
    naming, dotted and flat."""
    alternative_names = FAMILIES[model.family].alternative_names
    dotted: dict[str, Target] = {}
    flat: dict[str, Target] = {}
    clashes: set[tuple[str, str]] = set()
    for module in linear_layers(model) if modules is None else modules:
        names = [(module, None)] + [
            (k.removesuffix(".weight"), part) for k, part in alternative_names(module + ".weight")
        ]
        for name, part in names:
            for kind, table, spelling in (("dotted", dotted, name), ("flat", flat, name.replace(".", "_"))):
                if table.setdefault(spelling, Target(module, part)) != Target(module, part):
                    clashes.add((kind, spelling))
    for kind, spelling in clashes:  # a spelling two layers share says nothing
        del (dotted if kind == "dotted" else flat)[spelling]
    return NameTable(dotted, flat)


def target_rows(target: Target, layer: nn.Module, model: nn.Module) -> slice:
    """The rows of `layer`'s weight a change of `target` covers: all of them, or its part of a fused weight (sized
    by `model`'s own head counts)."""
    if target.part is None:
        return slice(0, layer.out_features)
    shape = (layer.out_features, layer.in_features)
    sizes = FAMILIES[model.family].part_rows(target.module + ".weight", shape, model.config)
    start = sum(sizes[: target.part])
    return slice(start, start + sizes[target.part])


def key_modules(keys: Iterable[str]) -> set[str]:
    """The module names LoRA keys of any format may stand for: each key without its last one, two or three parts
    (`.alpha`, `.hada_w1_a`; `.lora_A.weight`; `.lora.down.weight`, `.lora_A.default.weight`)."""
    return {key.rsplit(".", cut)[0] for key in keys for cut in (1, 2, 3) if key.count(".") >= cut}


def is_text_encoder(name: str) -> bool:
    return name.startswith(TEXT_ENCODER_PREFIXES)


def family_votes(names: Iterable[str]) -> Counter[str]:
    """family id -> how many of the LoRA module `names` that family's released model has (block numbers aside)."""
    names = [_template(_strip(name)) for name in names]
    return Counter({family_id: sum(n in _family_templates(family_id) for n in names) for family_id in FAMILIES})


def foreign_model(names: Iterable[str]) -> str | None:
    """The model outside this package a LoRA was made for, when a fragment of its names says so."""
    names = list(names)
    return next((model for fragment, model in FOREIGN_MODELS if any(fragment in n for n in names)), None)


def _strip(name: str) -> str:
    for prefix in FLAT_PREFIXES + DOTTED_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _template(name: str) -> str:
    # Block numbers differ between a LoRA and the released config: "layers.17.attention" -> "layers.#.attention".
    return re.sub(r"(?<=[._])\d+(?=[._])", "#", name)


@cache
def _family_templates(family_id: str) -> frozenset[str]:
    family = FAMILIES[family_id]
    model = build_on_meta(partial(family.build, family.default_config()))
    table = name_table(model)
    return frozenset(_template(name) for name in (*table.dotted, *table.flat))
