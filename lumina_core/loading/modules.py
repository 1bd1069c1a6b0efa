"""Build a module without allocating weights, then give it the checkpoint's tensors, strictly."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from .files import preview

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Construct a module on the meta device: shapes only, no memory, no random init."""
    with torch.device("meta"):
        return factory()


def check_fits(module: nn.Module, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise CheckpointError naming `source` and every missing, unexpected or mis-shaped tensor."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(expected.keys() - shapes.keys())
    unexpected = sorted(shapes.keys() - expected.keys())
    wrong = [f"{k} {tuple(shapes[k])} (expected {expected[k]})" for k in sorted(expected.keys() & shapes.keys())
             if tuple(shapes[k]) != expected[k]]  # fmt: skip
    problems = [f"{what}: {preview(items)}" for what, items in
                (("Missing", missing), ("Unexpected", unexpected), ("Wrong shape", wrong)) if items]  # fmt: skip
    if problems:
        raise CheckpointError(
            f"{source}: the weights do not fit the model built from their shapes (a damaged file, parts of "
            f"different models, or a variant this loader does not know). {'. '.join(problems)}."
        )


def assign_tensors(
    module: nn.Module,
    readers: Mapping[str, Callable[[], torch.Tensor]],
    shapes: Mapping[str, tuple[int, ...]],
    source: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Fill a meta-device module with tensors read one at a time, after checking names and shapes.

    readers maps each parameter/buffer name to a function that reads it from the file's memory map, so
    no second full copy of the weights is made; dtype None keeps each tensor's stored dtype, except that
    fp8 (a storage format torch cannot compute in) becomes bf16. Returns the module in eval mode without gradients.
    """
    check_fits(module, shapes, source)
    state = {}
    for name, read in readers.items():
        tensor = read()
        target = dtype or (torch.bfloat16 if tensor.dtype in FP8_DTYPES else tensor.dtype)
        state[name] = tensor.to(device=device, dtype=target)
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)
