"""Build a module without allocating weights, then give it the checkpoint's tensors, strictly."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import CheckpointError
from .files import _preview


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Construct a module on the meta device: shapes only, no memory, no random init."""
    with torch.device("meta"):
        return factory()


def assign_tensors(
    module: nn.Module,
    tensors: dict[str, Callable[[], torch.Tensor]],
    source: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Fill a meta-device module with tensors read one at a time, checking names and shapes first.

    tensors maps each parameter/buffer name to a function that reads it, so at most one tensor beyond
    the module's own weights is in memory. Raises CheckpointError naming `source` on any mismatch.
    """
    expected = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: the weights do not fit the model built from their shapes. Missing: "
            f"{_preview(missing) or 'none'}. Unexpected: {_preview(unexpected) or 'none'}."
        )
    state = {}
    for name, read in tensors.items():
        tensor = read()
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{source}: tensor '{name}' has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[name].shape)}: the file mixes parts of different models, or is damaged."
            )
        state[name] = tensor.to(device=device, dtype=dtype or tensor.dtype)
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)
