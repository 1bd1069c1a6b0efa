"""Tensor names of the LTX-Video causal video VAE: where it sits in a file, and the diffusers <-> original map.

The original names (Lightricks single files and ComfyUI: `vae.*` in all-in-one checkpoints, bare in standalone VAE
files) are the attribute names of `lumina_core.vae.ltx_video.LTXVideoVAE`. They list each half's blocks flat:
`decoder.up_blocks.N` is a group of resnets (`res_x`), a width-changing resnet (`res_x_y`) or an up/downsampler
(`conv`), in execution order. diffusers nests the same modules (docs/formats.md, 'LTX-Video VAE keys'):

    decoder: mid_block, then per up block k: conv_in (res_x_y), upsamplers.0, resnets (+ time_embedder)
    encoder: per down block k: resnets, downsamplers.0, conv_out (res_x_y), then mid_block

so the map numbers diffusers' slots in that order, and groups original blocks back into diffusers ones by the same
grammar. Inside a resnet diffusers adds `conv_shortcut.conv` and drops `norm3.norm`'s inner level; the per-channel
latent statistics are `latents_mean`/`latents_std` there. Neither direction depends on the order of the tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ...errors import CheckpointError, UnsupportedModelError
from ..detect import find_marker
from ..files import Checkpoint, preview

ORIGINAL = "original"
DIFFUSERS = "diffusers"

VAE_PREFIXES = ("", "vae.")  # standalone VAE file; Lightricks/ComfyUI all-in-one checkpoint

# One tensor every LTX video VAE has, per naming: its decoder's first block is always a resnet group.
MARKERS = {
    ORIGINAL: "decoder.up_blocks.0.res_blocks.0.conv1.conv.weight",
    DIFFUSERS: "decoder.mid_block.resnets.0.conv1.conv.weight",
}

STATISTICS = "per_channel_statistics."
# The two statistics decoding uses; the original files also carry `channel`, `mean-of-stds` and
# `mean-of-stds_over_std-of-means`, which nothing reads.
USED_STATISTICS = {"latents_mean": STATISTICS + "mean-of-means", "latents_std": STATISTICS + "std-of-means"}

# Whole-name renames outside the block lists: diffusers prefix -> original prefix.
TOP_LEVEL = {
    **USED_STATISTICS,
    "decoder.time_embedder.": "decoder.last_time_embedder.",
    "decoder.scale_shift_table": "decoder.last_scale_shift_table",
}
UNCHANGED = ("encoder.conv_in.", "encoder.conv_out.", "decoder.conv_in.", "decoder.conv_out.",
             "decoder.timestep_scale_multiplier")  # fmt: skip

# Inside a resnet: (diffusers, original) renames of whole name segments.
RESNET_INNER = (("conv_shortcut.conv.", "conv_shortcut."), ("norm3.", "norm3.norm."))

# Block kinds in the original's flat lists.
GROUP, RESNET, SAMPLER = "res_x", "res_x_y", "conv"

# diffusers slot -> (part, pattern, position inside its diffusers block, original rest template). The group index is the
# diffusers block index; the encoder's mid block sorts after every down block, the decoder's before every up block.
MID = {"encoder": 10**6, "decoder": -1}
SLOTS = (
    ("encoder", re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(.+)$"), 0, "res_blocks.{}"),
    ("encoder", re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)$"), 1, "{}"),
    ("encoder", re.compile(r"^encoder\.down_blocks\.(\d+)\.conv_out\.(.+)$"), 2, "{}"),
    ("encoder", re.compile(r"^encoder\.mid_block()\.resnets\.(.+)$"), 0, "res_blocks.{}"),
    ("decoder", re.compile(r"^decoder\.mid_block()\.resnets\.(.+)$"), 0, "res_blocks.{}"),
    ("decoder", re.compile(r"^decoder\.mid_block()\.time_embedder\.(.+)$"), 0, "time_embedder.{}"),
    ("decoder", re.compile(r"^decoder\.up_blocks\.(\d+)\.conv_in\.(.+)$"), 0, "{}"),
    ("decoder", re.compile(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$"), 1, "{}"),
    ("decoder", re.compile(r"^decoder\.up_blocks\.(\d+)\.resnets\.(.+)$"), 2, "res_blocks.{}"),
    ("decoder", re.compile(r"^decoder\.up_blocks\.(\d+)\.time_embedder\.(.+)$"), 2, "time_embedder.{}"),
)
# The same slots named from the original side: (part, kind, position) -> diffusers template for (group, rest).
DIFFUSERS_NAMES = {
    ("encoder", GROUP, 0): "encoder.down_blocks.{}.{}",  # rest keeps "resnets."
    ("encoder", SAMPLER, 1): "encoder.down_blocks.{}.downsamplers.0.{}",
    ("encoder", RESNET, 2): "encoder.down_blocks.{}.conv_out.{}",
    ("decoder", RESNET, 0): "decoder.up_blocks.{}.conv_in.{}",
    ("decoder", SAMPLER, 1): "decoder.up_blocks.{}.upsamplers.0.{}",
    ("decoder", GROUP, 2): "decoder.up_blocks.{}.{}",
}
ORIGINAL_BLOCK = re.compile(r"^(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(.+)$")


def _rename_segments(rest: str, pairs: Iterable[tuple[str, str]]) -> str:
    for old, new in pairs:
        rest = re.sub(rf"(^|\.){re.escape(old)}", lambda m, new=new: m[1] + new, rest)
    return rest


def _resnet_to_original(rest: str) -> str:
    return _rename_segments(rest, RESNET_INNER)


def _resnet_to_diffusers(rest: str) -> str:
    return _rename_segments(rest, ((original, diffusers) for diffusers, original in RESNET_INNER))


def _top_level(key: str, table: dict[str, str]) -> str | None:
    if key.startswith(UNCHANGED):
        return key
    hits = [new + key[len(old) :] for old, new in table.items() if key.startswith(old)]
    return hits[0] if len(hits) == 1 else None


def map_keys_diffusers_to_original(keys: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """({diffusers name: original name}, [names no rule matches]) for the keys of one AutoencoderKLLTXVideo."""
    mapping: dict[str, str] = {}
    unmatched: list[str] = []
    slotted: dict[str, tuple[str, tuple[int, int], str]] = {}  # key -> (part, slot, original rest)
    for key in keys:
        if (renamed := _top_level(key, TOP_LEVEL)) is not None:
            mapping[key] = renamed
            continue
        hits = [(part, m, p, template) for part, pattern, p, template in SLOTS if (m := pattern.match(key))]
        if len(hits) != 1:
            unmatched.append(key)
            continue
        part, match, position, template = hits[0]
        group = int(match[1]) if match[1] else MID[part]
        slotted[key] = (part, (group, position), template.format(_resnet_to_original(match[2])))
    for part in MID:
        order = sorted({slot for p, slot, _ in slotted.values() if p == part})
        index = {slot: i for i, slot in enumerate(order)}
        blocks = "encoder.down_blocks" if part == "encoder" else "decoder.up_blocks"
        for key, (p, slot, rest) in slotted.items():
            if p == part:
                mapping[key] = f"{blocks}.{index[slot]}.{rest}"
    return mapping, unmatched


def block_kinds(keys: Iterable[str]) -> dict[str, list[str]]:
    """{"encoder": kinds, "decoder": kinds}: each original block's kind (res_x / res_x_y / conv), by index."""
    rests: dict[tuple[str, int], set[str]] = {}
    for key in keys:
        if m := ORIGINAL_BLOCK.match(key):
            rests.setdefault((m[1].split(".")[0], int(m[2])), set()).add(m[3])
    kinds: dict[str, list[str]] = {"encoder": [], "decoder": []}
    for part in kinds:
        count = max((i for p, i in rests if p == part), default=-1) + 1
        for i in range(count):
            names = rests.get((part, i), set())
            if any(n.startswith(("res_blocks.", "time_embedder.")) for n in names):
                kinds[part].append(GROUP)
            elif any(n.startswith("conv1.") for n in names):
                kinds[part].append(RESNET)
            elif names and all(n.startswith("conv.") for n in names):
                kinds[part].append(SAMPLER)
            else:
                raise CheckpointError(f"LTX VAE {part} block {i} holds {preview(sorted(names)) or 'no tensors'}; "
                                      "expected a resnet group, a resnet or an up/downsampler.")  # fmt: skip
    return kinds


def _diffusers_slots(part: str, kinds: list[str]) -> list[tuple[int | None, int]]:
    """(diffusers block index or None for the mid block, position) for each original block of `part`."""
    slots: list[tuple[int | None, int]] = []
    group = -1
    if part == "decoder":
        # mid_block, then blocks of [res_x_y] [conv] res_x
        for i, kind in enumerate(kinds):
            if i == 0:
                slots.append((None, 0))
                continue
            position = {RESNET: 0, SAMPLER: 1, GROUP: 2}[kind]
            if not slots or slots[-1][0] is None or position <= slots[-1][1]:
                group += 1
            slots.append((group, position))
        return slots
    # blocks of res_x [conv] [res_x_y], then mid_block (the last res_x)
    for i, kind in enumerate(kinds):
        position = {GROUP: 0, SAMPLER: 1, RESNET: 2}[kind]
        if i == len(kinds) - 1:
            slots.append((None, 0))
            continue
        if not slots or position <= slots[-1][1]:
            group += 1
        slots.append((group, position))
    return slots


def map_keys_original_to_diffusers(keys: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """({original name: diffusers name}, [names no rule matches]) for the keys of one original-format LTX VAE
    (prefix removed); `per_channel_statistics` entries other than the two used ones count as unmatched."""
    keys = list(keys)
    kinds = block_kinds(keys)
    slots = {part: _diffusers_slots(part, part_kinds) for part, part_kinds in kinds.items()}
    inverse_top = {new: old for old, new in TOP_LEVEL.items()}
    mapping: dict[str, str] = {}
    unmatched: list[str] = []
    for key in keys:
        if (renamed := _top_level(key, inverse_top)) is not None:
            mapping[key] = renamed
            continue
        m = ORIGINAL_BLOCK.match(key)
        if not m:
            unmatched.append(key)
            continue
        part, index = m[1].split(".")[0], int(m[2])
        group, position = slots[part][index]
        rest = _resnet_to_diffusers(m[3]).replace("res_blocks.", "resnets.", 1)
        if group is None:
            mapping[key] = f"{part}.mid_block.{rest}"
        else:
            mapping[key] = DIFFUSERS_NAMES[(part, kinds[part][index], position)].format(group, rest)
    return mapping, unmatched


def detect_ltx_vae(keys: Iterable[str]) -> tuple[str, str] | None:
    """(prefix, naming) of the LTX video VAE among `keys`, or None when they hold none."""
    return find_marker(keys, VAE_PREFIXES, MARKERS)


def is_unused(original_key: str) -> bool:
    """Statistics the original files carry but decoding never reads."""
    return original_key.startswith(STATISTICS) and original_key not in USED_STATISTICS.values()


@dataclass(frozen=True)
class LtxVaeTensors:
    """The LTX VAE inside a checkpoint, seen under original names (unused statistics left out)."""

    part: Checkpoint  # the checkpoint's VAE tensors, prefix removed
    names: dict[str, str]  # original name -> name in `part`
    naming: str  # ORIGINAL or DIFFUSERS: how `part` names them
    detected: str  # e.g. "original-format LTX-Video VAE under 'vae.'", for messages

    def shape(self, key: str) -> tuple[int, ...]:
        return self.part.shape(self.names[key])

    def load(self, key: str) -> torch.Tensor:
        return self.part.load(self.names[key])

    def dtype(self, key: str) -> torch.dtype:
        return self.part.dtype(self.names[key])


def find_ltx_vae(checkpoint: Checkpoint) -> LtxVaeTensors | None:
    """The LTX video VAE tensors of `checkpoint` in either naming, or None when it holds none."""
    found = detect_ltx_vae(checkpoint.keys)
    if found is None:
        return None
    prefix, naming = found
    part = checkpoint.subset(prefix)
    detected = f"{naming}-format LTX-Video VAE" + (f" under '{prefix}'" if prefix else "")
    if naming == ORIGINAL:
        return LtxVaeTensors(part, {k: k for k in part.keys if not is_unused(k)}, naming, detected)
    mapping, unmatched = map_keys_diffusers_to_original(part.keys)
    if unmatched:
        raise UnsupportedModelError(
            f"{checkpoint.path}: a {detected}, but {len(unmatched)} tensor names are not AutoencoderKLLTXVideo "
            f"weights: {preview(unmatched)}."
        )
    return LtxVaeTensors(part, {original: stored for stored, original in mapping.items()}, naming, detected)
