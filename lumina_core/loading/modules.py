"""Build a module without allocating weights, then give it the checkpoint's tensors, strictly.

Precision: the weights of Linear and Conv layers (the bulk of every model) are kept in their storage dtype, fp8
included, when the layers cast them per call (`lumina_core.common.ops`); every other tensor (norm gains,
embeddings, biases, tables, pad tokens) is small and is stored in the compute dtype. So an fp8 file takes
about its own size in memory and computes in bf16.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..common import ops
from ..common.ops import CASTABLE_WEIGHT_LAYERS, FP8_DTYPES
from ..errors import CheckpointError
from ..gguf.quantized import QuantizedLinear, QuantizedTensor
from .files import preview

# Written beside ComfyUI's scaled-fp8 weights: the file-wide marker, and per-layer input scales for fp8 matmuls,
# which a computation in bf16 / fp32 does not use.
SCALED_FP8_MARKER = "scaled_fp8"
SCALE_WEIGHT, SCALE_INPUT = "scale_weight", "scale_input"


@dataclass(frozen=True)
class Precision:
    """How a model's tensors are kept and computed: see the module docstring.

    storage: the dtype of Linear / Conv weights; None keeps each as stored. compute: the dtype the model runs
    in, and that every other tensor is stored in. operations: the layer namespace the model is built with.
    """

    storage: torch.dtype | None
    compute: torch.dtype
    operations: object

    def dtype_for(self, layer: nn.Module | None, leaf: str, stored: torch.dtype) -> torch.dtype:
        """The in-memory dtype of tensor `leaf` of `layer`, stored in the file as `stored`."""
        if leaf in (SCALE_WEIGHT, SCALE_INPUT):
            return torch.float32
        if leaf == "weight" and isinstance(layer, CASTABLE_WEIGHT_LAYERS):
            return self.storage or stored
        return self.compute


def scaled_fp8_dtype(stored: Mapping[str, torch.dtype]) -> torch.dtype | None:
    """The fp8 dtype of a ComfyUI scaled-fp8 file, from its tensors' stored dtypes: the dtype of its marker tensor
    (a float32 marker means e4m3fn, as ComfyUI reads it); None for any other file."""
    markers = [dtype for name, dtype in stored.items() if name.rpartition(".")[2] == SCALED_FP8_MARKER]
    if not markers:
        return None
    return markers[0] if markers[0] in FP8_DTYPES else torch.float8_e4m3fn


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Construct a module on the meta device: shapes only, no memory, no random init."""
    with torch.device("meta"):
        return factory()


def build_with_precision(
    factory: Callable[[object], nn.Module],
    stored: Mapping[str, torch.dtype],
    dtype: torch.dtype | None = None,
    compute_dtype: torch.dtype | None = None,
    operations=None,
) -> tuple[nn.Module, Precision]:
    """Build `factory(operations)` on the meta device, with the layers its precision needs.

    stored: tensor name -> dtype in the file (from the headers). dtype: the storage dtype of Linear / Conv weights
    (None: as stored; fp8 stores a float file's weights in fp8). compute_dtype: None takes dtype, or for fp8 bf16,
    or without dtype the file's most common dtype (bf16 for an fp8 file). operations: None picks `torch.nn` when
    every weight ends up in the compute dtype, else `lumina_core.common.ops.cast_ops` (`scaled_fp8_ops` for
    ComfyUI's scaled-fp8 files); a host passes its own (ComfyUI's `comfy.ops`).
    """
    weights = {name: d for name, d in stored.items() if not _bookkeeping(name) and not name.endswith(SCALE_WEIGHT)}
    compute = compute_dtype or _compute_dtype(dtype, weights)
    scaled = any(name == SCALED_FP8_MARKER or name.endswith("." + SCALE_WEIGHT) for name in stored)
    module = build_on_meta(lambda: factory(nn))
    if operations is None:
        castable = {f"{name}.weight" for name, layer in module.named_modules()
                    if isinstance(layer, CASTABLE_WEIGHT_LAYERS)}  # fmt: skip
        uniform = all((dtype or stored[name]) == compute for name in castable & stored.keys())
        operations = ops.scaled_fp8_ops if scaled else nn if uniform else ops.cast_ops
    if operations is not nn:
        module = build_on_meta(lambda: factory(operations))
    return module, Precision(dtype, compute, operations)


def _compute_dtype(dtype: torch.dtype | None, stored: Mapping[str, torch.dtype]) -> torch.dtype:
    if dtype is None:
        floats = Counter(d for d in stored.values() if d.is_floating_point)
        dtype = floats.most_common(1)[0][0] if floats else torch.float32
    return torch.bfloat16 if dtype in FP8_DTYPES else dtype


def check_fits(module: nn.Module, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise CheckpointError naming `source` and every missing, unexpected or mis-shaped tensor.

    A layer's `scale_weight` may be missing (it stays 1), and scaled-fp8 bookkeeping the module does not use (the
    file's marker, input scales) is ignored; a `scale_weight` the module has no place for is an error, as its
    weight would otherwise be used unscaled.
    """
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(k for k in expected.keys() - shapes.keys() if not k.endswith("." + SCALE_WEIGHT))
    unexpected = sorted(k for k in shapes.keys() - expected.keys() if not _bookkeeping(k))
    wrong = [f"{k} {tuple(shapes[k])} (expected {expected[k]})" for k in sorted(expected.keys() & shapes.keys())
             if tuple(shapes[k]) != expected[k]]  # fmt: skip
    foreign_scales = [k for k in unexpected if k.endswith("." + SCALE_WEIGHT)]
    if foreign_scales:
        raise CheckpointError(
            f"{source}: holds ComfyUI scaled-fp8 weights (their scale_weight, e.g. {foreign_scales[0]}) but the model "
            "was built with layers that do not apply them; load it with operations=None (the loader then picks "
            "scaled_fp8_ops) or with the host's scaled-fp8 layers."
        )
    problems = [f"{what}: {preview(items)}" for what, items in
                (("Missing", missing), ("Unexpected", unexpected), ("Wrong shape", wrong)) if items]  # fmt: skip
    if problems:
        raise CheckpointError(
            f"{source}: the weights do not fit the model built from their shapes (a damaged file, parts of "
            f"different models, or a variant this loader does not know). {'. '.join(problems)}."
        )


def _bookkeeping(name: str) -> bool:
    return name == SCALED_FP8_MARKER or name.endswith("." + SCALE_INPUT)


def assign_tensors(
    module: nn.Module,
    readers: Mapping[str, Callable[[], torch.Tensor | QuantizedTensor]],
    shapes: Mapping[str, tuple[int, ...]],
    source: str,
    precision: Precision,
    device: torch.device | str = "cpu",
    keep_float: tuple[str, ...] = (),
) -> nn.Module:
    """Fill a meta-device module with tensors read one at a time, after checking names and shapes.

    readers maps each parameter/buffer name to a function that reads it from the file's memory map, so no second
    full copy of the weights is made; each tensor is kept in `precision.dtype_for` it. Returns the module in eval
    mode without gradients, its `compute_dtype` set. A reader may return a GGUF `QuantizedTensor`: the weight of a
    Linear then stays packed in a `QuantizedLinear` (the operations' own `QuantizedLinear` class when they have
    one), unless "<layer name>." starts with one of `keep_float`; any other quantized tensor (norms, embeddings,
    tables, pad tokens) is dequantized once, here, into the compute dtype.
    """
    check_fits(module, shapes, source)
    expected = module.state_dict().keys()
    quantized_class = getattr(precision.operations, "QuantizedLinear", QuantizedLinear)
    state = {}
    for name, read in readers.items():
        if name not in expected:  # scaled-fp8 bookkeeping the layers do not use
            continue
        tensor = read()
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        if isinstance(tensor, QuantizedTensor):
            layer = None
            if leaf == "weight":
                layer = _quantized_linear(module, owner_name, tensor, device, keep_float, quantized_class)
            if layer is not None:
                state[f"{owner_name}.packed"] = layer.packed
                continue
            tensor = tensor.dequantize(precision.compute, device)
        state[name] = tensor.to(device=device, dtype=precision.dtype_for(owner, leaf, tensor.dtype))
    for name in expected - state.keys() - readers.keys():  # a layer's scale_weight the file does not store
        state[name] = torch.ones((), device=device)
    module.load_state_dict(state, strict=True, assign=True)
    module.compute_dtype = precision.compute
    return module.eval().requires_grad_(False)


def _quantized_linear(
    module: nn.Module,
    owner_name: str,
    weight: QuantizedTensor,
    device: torch.device | str,
    keep_float: tuple[str, ...],
    quantized_class: type[QuantizedLinear],
) -> QuantizedLinear | None:
    """Swap the Linear `owner_name` for a QuantizedLinear holding `weight`; None where it must be float."""
    owner = module.get_submodule(owner_name)
    if not isinstance(owner, nn.Linear) or f"{owner_name}.".startswith(keep_float):
        return None
    layer = quantized_class.from_linear(owner, weight, device)
    parent_name, _, child = owner_name.rpartition(".")
    setattr(module.get_submodule(parent_name), child, layer)
    return layer
