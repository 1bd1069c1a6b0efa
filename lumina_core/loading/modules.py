"""Build a module without allocating weights, then give it the checkpoint's tensors, strictly."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from ..gguf.quantized import QuantizedLinear, QuantizedTensor
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
    readers: Mapping[str, Callable[[], torch.Tensor | QuantizedTensor]],
    shapes: Mapping[str, tuple[int, ...]],
    source: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    keep_float: tuple[str, ...] = (),
) -> nn.Module:
    """Fill a meta-device module with tensors read one at a time, after checking names and shapes.

    readers maps each parameter/buffer name to a function that reads it from the file's memory map, so
    no second full copy of the weights is made; dtype None keeps each tensor's stored dtype, except that
    fp8 (a storage format torch cannot compute in) becomes bf16. Returns the module in eval mode without gradients.
    A reader may return a GGUF `QuantizedTensor`: the weight of an `nn.Linear` then stays packed in a
    `QuantizedLinear` (unless "<layer name>." starts with one of `keep_float`); any other quantized tensor
    (norms, embeddings, tables, pad tokens) is dequantized once, here, into dtype (None: float32).
    """
    check_fits(module, shapes, source)
    state = {}
    for name, read in readers.items():
        tensor = read()
        if isinstance(tensor, QuantizedTensor):
            layer = _quantized_linear(module, name, tensor, device, keep_float)
            if layer is not None:
                state[name.removesuffix("weight") + "packed"] = layer.packed
                continue
            tensor = tensor.dequantize(dtype or torch.float32, device)
        target = dtype or (torch.bfloat16 if tensor.dtype in FP8_DTYPES else tensor.dtype)
        state[name] = tensor.to(device=device, dtype=target)
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def _quantized_linear(
    module: nn.Module, name: str, weight: QuantizedTensor, device: torch.device | str, keep_float: tuple[str, ...]
) -> QuantizedLinear | None:
    """Swap the nn.Linear owning `name` for a QuantizedLinear holding `weight`; None where it must be float."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    if leaf != "weight" or type(owner) is not nn.Linear or f"{owner_name}.".startswith(keep_float):
        return None
    layer = QuantizedLinear.from_linear(owner, weight, device)
    parent_name, _, child = owner_name.rpartition(".")
    setattr(module.get_submodule(parent_name), child, layer)
    return layer
