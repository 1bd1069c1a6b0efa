"""Reading LoRA files: every key style trainers write, normalised to low-rank factor pairs.

A LoRA changes a Linear weight W (out, in) into W + strength * scale * up @ down, with down (rank, in), up (out, rank)
and scale = alpha / rank (1 without an alpha; alpha / sqrt(rank) for rank-stabilised LoRA). The key endings tell the
style, never the file name:

    <module>.lora_A.weight, .lora_B.weight      peft / diffusers (also `.lora_A.default.weight`, peft's own saves)
    <module>.lora_down.weight, .lora_up.weight  kohya, ComfyUI and most trainers
    <module>.lora.down.weight, .lora.up.weight  older diffusers
    <module>.alpha                              the alpha, a scalar (kohya, ComfyUI)
    <module>.dora_scale                         DoRA's magnitude: (1, in) per input column, (out, 1) or (out,) per row

diffusers and peft keep the alpha out of the tensors, in the safetensors metadata `lora_adapter_metadata` (JSON with
`lora_alpha`, `alpha_pattern`, `use_rslora`, keys prefixed by the pipeline component such as `transformer.`).
Module names keep their container prefix here (`diffusion_model.`, `transformer.`, `lora_unet_`); `targets` resolves
them against a loaded model.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..errors import CheckpointError
from ..gguf.quantized import QuantizedTensor
from ..loading.files import open_checkpoint, preview

DOWN, UP, ALPHA, DORA = "down", "up", "alpha", "dora_scale"
# Key ending -> factor role; no ending is a suffix of another one's module part, so the longest match is the only one.
ENDINGS = {
    ".lora_A.weight": DOWN, ".lora_B.weight": UP, ".lora_A.default.weight": DOWN, ".lora_B.default.weight": UP,
    ".lora_down.weight": DOWN, ".lora_up.weight": UP, ".lora.down.weight": DOWN, ".lora.up.weight": UP,
    ".alpha": ALPHA, ".dora_scale": DORA,
}  # fmt: skip
# Key endings of the LyCORIS and full-weight formats ComfyUI's own LoRA code applies and this package does not.
OTHER_FORMATS = {
    ".hada_w1_a": "LoHa", ".lokr_w1": "LoKr", ".lokr_w1_a": "LoKr", ".a1.weight": "GLoRA", ".oft_blocks": "OFT",
    ".oft_R.weight": "BOFT", ".diff": "full weight difference", ".diff_b": "full bias difference",
    ".set_weight": "replacement weight",
}  # fmt: skip
PEFT_METADATA = "lora_adapter_metadata"
PEFT_COMPONENT = "transformer."  # diffusers prefixes a pipeline's adapter config with the component it belongs to


@dataclass(frozen=True)
class LowRank:
    """The change a LoRA makes to one Linear weight (or to one row block of a fused one)."""

    down: torch.Tensor  # (rank, in)
    up: torch.Tensor  # (out, rank)
    alpha: float | None
    dora_scale: torch.Tensor | None = None  # DoRA magnitude, see the module docstring for its shapes
    rank_stabilised: bool = False  # rsLoRA: scale alpha / sqrt(rank)
    keys: tuple[str, ...] = ()  # the file keys it was read from, for messages

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        if self.alpha is None:
            return 1.0
        return self.alpha / (math.sqrt(self.rank) if self.rank_stabilised else self.rank)

    def delta(self, device: torch.device | str) -> torch.Tensor:
        """scale * up @ down in float32 on `device`: (out, in)."""
        up, down = (t.to(device=device, dtype=torch.float32) for t in (self.up, self.down))
        return (up * self.scale) @ down

    def same_as(self, other: LowRank) -> bool:
        def equal(a, b):
            return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))

        return self.scale == other.scale and all(
            equal(a, b) for a, b in ((self.down, other.down), (self.up, other.up), (self.dora_scale, other.dora_scale))
        )


@dataclass(frozen=True)
class LoRA:
    """A LoRA file's low-rank changes, by module name as the file spells it (container prefix included)."""

    path: str
    modules: dict[str, LowRank]
    other_keys: tuple[str, ...]  # keys that are not low-rank factors (another format, a text encoder part, strays)
    key_count: int

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def load_lora(path: str | os.PathLike) -> LoRA:
    """Read a LoRA file (safetensors, `torch.save` or GGUF) and group its tensors into `LowRank` changes.

    The key style is recognised from the key endings (see the module docstring). Raises CheckpointError, naming the
    file, for a file without low-rank factors (a model checkpoint, or a LyCORIS format only ComfyUI applies) and for
    factors whose shapes do not pair up.
    """
    checkpoint = open_checkpoint(path)
    grouped: dict[str, dict[str, str]] = {}
    other = []
    for key in checkpoint.keys:
        ending = next((e for e in ENDINGS if key.endswith(e)), None)
        if ending is None:
            other.append(key)
        else:
            grouped.setdefault(key[: -len(ending)], {})[ENDINGS[ending]] = key
    alpha_of = _metadata_alphas(checkpoint.metadata, checkpoint.path)
    modules = {}
    for module, roles in grouped.items():
        if DOWN not in roles or UP not in roles:
            other.extend(roles.values())
            continue
        modules[module] = _read_module(checkpoint, module, roles, alpha_of)
    if not modules:
        raise CheckpointError(_no_factors_message(checkpoint.path, checkpoint.keys))
    return LoRA(checkpoint.path, modules, tuple(other), len(checkpoint))


def _load(checkpoint, key: str) -> torch.Tensor:
    tensor = checkpoint.load(key)
    return tensor.dequantize() if isinstance(tensor, QuantizedTensor) else tensor


def _read_module(checkpoint, module: str, roles: dict[str, str], alpha_of) -> LowRank:
    down, up = _load(checkpoint, roles[DOWN]), _load(checkpoint, roles[UP])
    if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
        raise CheckpointError(
            f"{checkpoint.path}: {roles[DOWN]} {tuple(down.shape)} and {roles[UP]} {tuple(up.shape)} are not a "
            "low-rank pair for a Linear layer: expected down (rank, in) and up (out, rank) with the same rank."
        )
    alpha, rank_stabilised = alpha_of(module)
    if ALPHA in roles:
        # kohya stores alpha 0 for "no scaling" (alpha = rank); a scale of 0 would silently disable the LoRA.
        alpha = float(_load(checkpoint, roles[ALPHA]).float().item()) or None
    dora = _load(checkpoint, roles[DORA]) if DORA in roles else None
    return LowRank(down, up, alpha, dora, rank_stabilised, tuple(roles.values()))


def _metadata_alphas(metadata: Mapping[str, str], path: str) -> Callable[[str], tuple[float | None, bool]]:
    """module name -> (alpha, rank-stabilised) from diffusers' `lora_adapter_metadata`; (None, False) without it."""
    raw = metadata.get(PEFT_METADATA)
    if not isinstance(raw, str):
        return lambda module: (None, False)
    try:
        config = json.loads(raw)
    except ValueError as err:
        raise CheckpointError(
            f"{path}: its '{PEFT_METADATA}' metadata is not readable JSON ({err}); expected diffusers' LoRA adapter "
            "config (lora_alpha, alpha_pattern). Re-save the LoRA, or remove the entry."
        ) from None
    if not isinstance(config, dict):
        return lambda module: (None, False)
    fields = {k.removeprefix(PEFT_COMPONENT): v for k, v in config.items() if k.startswith(PEFT_COMPONENT)} or config
    alpha, patterns = fields.get("lora_alpha"), fields.get("alpha_pattern") or {}
    rank_stabilised = bool(fields.get("use_rslora"))

    def alpha_for(module: str) -> tuple[float | None, bool]:
        name = module.removeprefix(PEFT_COMPONENT)
        # peft matches a pattern against the end of the module path ("^" anchors it at the start)
        for pattern, value in patterns.items():
            bare = pattern.removeprefix("^")
            if name == bare or (not pattern.startswith("^") and name.endswith("." + bare)):
                return float(value), rank_stabilised
        return (float(alpha) if alpha is not None else None), rank_stabilised

    return alpha_for


def _no_factors_message(path: str, keys: list[str]) -> str:
    formats = sorted({name for ending, name in OTHER_FORMATS.items() for k in keys if k.endswith(ending)})
    if formats:
        return (
            f"{path} holds {' and '.join(formats)} changes (e.g. {preview(sorted(keys), 3)}), not low-rank LoRA "
            "factors: lumina_core applies LoRA and DoRA. In ComfyUI the Lumina LoRA node applies these formats through "
            "ComfyUI's own LoRA code."
        )
    return (
        f"{path} holds no LoRA factors (keys ending in .lora_A/.lora_B, .lora_down/.lora_up or .lora.down/.lora.up "
        f".weight); found {len(keys)} tensors such as {preview(sorted(keys), 3)}. Is it a model checkpoint rather than "
        "a LoRA?"
    )
