"""ComfyUI's scaled-fp8 checkpoints: fp8 weights stored divided by a per-layer scale.

Beside each fp8 Linear weight `X.weight` such a file stores the float32 scalar `X.scale_weight` (stored weight
times it is the real weight) and optionally `X.scale_input` (for fp8 matmuls; not needed to read the weight),
plus a `scaled_fp8` marker tensor at the root of the model's tensors. Loaders read the weights through
`read_weight` and skip the other names (`is_auxiliary`).
"""

from __future__ import annotations

import torch

from .files import Checkpoint

SCALE_WEIGHT, SCALE_INPUT, MARKER = ".scale_weight", ".scale_input", "scaled_fp8"


def is_auxiliary(name: str) -> bool:
    """Whether a tensor name is a scale or the marker rather than a model weight."""
    return name == MARKER or name.endswith((SCALE_WEIGHT, SCALE_INPUT))


def read_weight(checkpoint: Checkpoint, key: str) -> torch.Tensor:
    """The tensor, times its `scale_weight` when it has one (computed in float32)."""
    tensor = checkpoint.load(key)
    scale_key = key.removesuffix(".weight") + SCALE_WEIGHT
    if scale_key not in checkpoint:
        return tensor
    return tensor.float() * checkpoint.load(scale_key).float()
