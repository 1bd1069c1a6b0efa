"""Tensor names of the LDM/FLUX KL autoencoder: where a VAE sits in a file, and the diffusers <-> original map.

The original names (FLUX `ae.safetensors`; `vae.*` in ComfyUI all-in-one files; `first_stage_model.*` in SD
files) are the attribute names of `lumina_core.vae.Autoencoder`, so only diffusers `AutoencoderKL` names need
mapping. Besides renaming, diffusers differs in two ways:
- it numbers decoder levels from the lowest resolution: `decoder.up_blocks.k` is `decoder.up.{L-1-k}`;
- it stores the mid-attention q/k/v/out projections as Linear weights [C, C], the original as 1x1 convs
  [C, C, 1, 1].

Each rule pairs two module-path templates; one table serves both directions and no result depends on rule order
(a name matching two rules is an error).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ...errors import UnsupportedModelError
from ..detect import find_marker
from ..files import Checkpoint, preview, read_json

ORIGINAL = "original"
DIFFUSERS = "diffusers"

# Where the VAE sits: a bare VAE file, a ComfyUI all-in-one checkpoint, an SD/SDXL single-file checkpoint.
VAE_PREFIXES = ("", "vae.", "first_stage_model.")

# One tensor every LDM KL autoencoder has, per naming.
MARKERS = {
    ORIGINAL: "encoder.down.0.block.0.conv1.weight",
    DIFFUSERS: "encoder.down_blocks.0.resnets.0.conv1.weight",
}

# Key prefixes of what people load by mistake instead of a VAE, for the error message.
OTHER_PARTS = (
    ("model.diffusion_model.", "a diffusion model in ComfyUI/SD checkpoint layout"),
    ("x_embedder.", "a diffusion transformer"),
    ("layers.0.attention.", "a diffusion transformer"),
    ("text_encoders.", "text encoders"),
    ("model.layers.", "a language-model text encoder"),
    ("encoder.block.", "a T5 text encoder"),
)

# Values each template placeholder may take.
FIELDS = {
    "part": r"encoder|decoder",
    "i": r"\d+",
    "j": r"\d+",
    "layer": r"norm1|conv1|norm2|conv2",
    "qkv": r"q|k|v",
}


@dataclass(frozen=True)
class Rule:
    diffusers: str  # module path template, e.g. "encoder.down_blocks.{i}.resnets.{j}.{layer}"
    original: str
    reverse_level: bool = False  # {i} counts decoder levels from the other end

    def template(self, naming: str) -> str:
        return self.diffusers if naming == DIFFUSERS else self.original


RULES = (
    Rule("{part}.conv_in", "{part}.conv_in"),
    Rule("{part}.conv_norm_out", "{part}.norm_out"),
    Rule("{part}.conv_out", "{part}.conv_out"),
    Rule("encoder.down_blocks.{i}.resnets.{j}.{layer}", "encoder.down.{i}.block.{j}.{layer}"),
    Rule("encoder.down_blocks.{i}.resnets.{j}.conv_shortcut", "encoder.down.{i}.block.{j}.nin_shortcut"),
    Rule("encoder.down_blocks.{i}.downsamplers.0.conv", "encoder.down.{i}.downsample.conv"),
    Rule("decoder.up_blocks.{i}.resnets.{j}.{layer}", "decoder.up.{i}.block.{j}.{layer}", reverse_level=True),
    Rule(
        "decoder.up_blocks.{i}.resnets.{j}.conv_shortcut", "decoder.up.{i}.block.{j}.nin_shortcut", reverse_level=True
    ),
    Rule("decoder.up_blocks.{i}.upsamplers.0.conv", "decoder.up.{i}.upsample.conv", reverse_level=True),
    Rule("{part}.mid_block.resnets.0.{layer}", "{part}.mid.block_1.{layer}"),
    Rule("{part}.mid_block.resnets.1.{layer}", "{part}.mid.block_2.{layer}"),
    Rule("{part}.mid_block.attentions.0.group_norm", "{part}.mid.attn_1.norm"),
    Rule("{part}.mid_block.attentions.0.to_{qkv}", "{part}.mid.attn_1.{qkv}"),
    Rule("{part}.mid_block.attentions.0.to_out.0", "{part}.mid.attn_1.proj_out"),
    Rule("quant_conv", "quant_conv"),
    Rule("post_quant_conv", "post_quant_conv"),
)

# Original names of the attention projections stored as 1x1 convs [C, C, 1, 1] (diffusers: Linear [C, C]).
ATTENTION_PROJECTION = re.compile(r"^(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")

DECODER_LEVEL = {DIFFUSERS: re.compile(r"^decoder\.up_blocks\.(\d+)\."), ORIGINAL: re.compile(r"^decoder\.up\.(\d+)\.")}


def _compile(template: str) -> re.Pattern[str]:
    # "a.{i}.b" -> r"^a\.(?P<i>\d+)\.b\.(?P<param>weight|bias)$"
    body = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m[1]}>{FIELDS[m[1]]})", re.escape(template))
    return re.compile(rf"^{body}\.(?P<param>weight|bias)$")


PATTERNS = {naming: [(rule, _compile(rule.template(naming))) for rule in RULES] for naming in (ORIGINAL, DIFFUSERS)}


# diffusers config.json field -> `load_vae` argument
DIFFUSERS_CONFIG_FIELDS = {"norm_num_groups": "num_groups", "scaling_factor": "scale", "shift_factor": "shift"}


def detect_vae(keys: Iterable[str]) -> tuple[str, str] | None:
    """(prefix, naming) of the VAE among `keys`, or None when they hold no LDM KL autoencoder."""
    return find_marker(keys, VAE_PREFIXES, MARKERS)


def describe_other_parts(keys: Iterable[str]) -> list[str]:
    """What the file holds instead of a VAE, as far as the `OTHER_PARTS` prefixes tell."""
    keys = list(keys)
    return list(dict.fromkeys(what for prefix, what in OTHER_PARTS if any(k.startswith(prefix) for k in keys)))


def _matches(key: str, naming: str) -> list[tuple[Rule, re.Match[str]]]:
    return [(rule, m) for rule, pattern in PATTERNS[naming] if (m := pattern.match(key))]


def matching_rules(key: str, naming: str) -> list[Rule]:
    """Every rule whose `naming` side matches `key` (exactly one for a valid name)."""
    return [rule for rule, _ in _matches(key, naming)]


def _count_decoder_levels(keys: list[str], naming: str) -> int:
    levels = [int(m[1]) for k in keys if (m := DECODER_LEVEL[naming].match(k))]
    return max(levels, default=-1) + 1


def _map_keys(keys: Iterable[str], source: str, target: str) -> tuple[dict[str, str], list[str]]:
    keys = list(keys)
    levels = _count_decoder_levels(keys, source)
    mapping: dict[str, str] = {}
    unmatched: list[str] = []
    for key in keys:
        found = _matches(key, source)
        if not found:
            unmatched.append(key)
            continue
        if len(found) > 1:
            raise ValueError(f"{key} matches {len(found)} VAE key rules; RULES in {__name__} must be disjoint.")
        rule, match = found[0]
        fields = match.groupdict()
        if rule.reverse_level:
            fields["i"] = str(levels - 1 - int(fields["i"]))
        mapping[key] = rule.template(target).format(**fields) + "." + fields["param"]
    return mapping, unmatched


def map_keys_diffusers_to_original(keys: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """({diffusers name: original name}, [names no rule matches]) for the keys of one diffusers AutoencoderKL."""
    return _map_keys(keys, DIFFUSERS, ORIGINAL)


def map_keys_original_to_diffusers(keys: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """({original name: diffusers name}, [names no rule matches]) for the keys of one original-format VAE."""
    return _map_keys(keys, ORIGINAL, DIFFUSERS)


def to_original_shape(original_key: str, shape: Iterable[int]) -> tuple[int, ...]:
    """The shape the original model stores under `original_key`: Linear [C, C] -> 1x1 conv [C, C, 1, 1]."""
    shape = tuple(shape)
    if ATTENTION_PROJECTION.match(original_key) and len(shape) == 2:
        return (*shape, 1, 1)
    return shape


def to_diffusers_shape(original_key: str, shape: Iterable[int]) -> tuple[int, ...]:
    """The shape diffusers stores for the tensor named `original_key`: 1x1 conv [C, C, 1, 1] -> Linear [C, C]."""
    shape = tuple(shape)
    if ATTENTION_PROJECTION.match(original_key) and len(shape) == 4:
        return shape[:2]
    return shape


@dataclass(frozen=True)
class VaeTensors:
    """The VAE inside a checkpoint, seen under original names and shapes.

    Attention projections stored as Linear [C, C] read as 1x1 convs under either naming: the data is the same.
    """

    part: Checkpoint  # the checkpoint's VAE tensors, prefix removed
    names: dict[str, str]  # original name -> name in `part`
    detected: str  # e.g. "diffusers-format VAE under 'vae.'", for messages

    def shape(self, key: str) -> tuple[int, ...]:
        return to_original_shape(key, self.part.shape(self.names[key]))

    def load(self, key: str) -> torch.Tensor:
        return self.part.load(self.names[key]).reshape(self.shape(key))

    def dtype(self, key: str) -> torch.dtype:
        return self.part.dtype(self.names[key])


def find_vae(checkpoint: Checkpoint) -> VaeTensors:
    """The VAE tensors of `checkpoint` in any supported layout, or an error saying what the file holds instead."""
    found = detect_vae(checkpoint.keys)
    if found is None:
        others = describe_other_parts(checkpoint.keys)
        looks_like = f"it looks like {' and '.join(others)}" if others else "no known VAE tensor names"
        raise UnsupportedModelError(
            f"{checkpoint.describe()} holds no VAE: {looks_like}. Expected an LDM/FLUX autoencoder with "
            f"{MARKERS[ORIGINAL]} (bare or under {' or '.join(p for p in VAE_PREFIXES if p)}) or diffusers "
            f"{MARKERS[DIFFUSERS]}. Load the VAE file itself (such as ae.safetensors)."
        )
    prefix, naming = found
    part = checkpoint.subset(prefix)
    detected = f"{naming}-format VAE" + (f" under '{prefix}'" if prefix else "")
    if naming == ORIGINAL:
        return VaeTensors(part, {k: k for k in part.keys}, detected)
    mapping, unmatched = map_keys_diffusers_to_original(part.keys)
    if unmatched:
        raise UnsupportedModelError(
            f"{checkpoint.path}: a {detected}, but {len(unmatched)} tensor names are not AutoencoderKL weights: "
            f"{preview(unmatched)}. Expected only the keys of a diffusers AutoencoderKL with a mid attention block."
        )
    return VaeTensors(part, {original: stored for stored, original in mapping.items()}, detected)


def read_diffusers_config(folder: str) -> dict[str, object]:
    """`load_vae` defaults from a diffusers folder's config.json (`num_groups`, `scale`, `shift`); {} if none."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        return {}
    config = read_json(config_path, "a diffusers AutoencoderKL config")
    found = {arg: config[field] for field, arg in DIFFUSERS_CONFIG_FIELDS.items() if field in config}
    if "shift" in found and found["shift"] is None:  # diffusers writes null for "no shift"
        found["shift"] = 0.0
    return found
