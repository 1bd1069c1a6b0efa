"""Layer classes a host can supply, and casting of a module's own parameters where they are used.

Every model of the package builds its Linear / Conv / norm / embedding layers from an `operations` namespace
(default: `torch.nn`), the way ComfyUI's model code does, so that a host can hand in layers that keep their
weights in a storage dtype or on another device and cast them per call (ComfyUI's `comfy.ops`). Parameters a
model owns directly (pad tokens, scale-shift tables, gates, norm gains) are cast with `cast_to` at their use,
so the forward never assumes that the weights sit on the input's device or in its dtype.

The package's own namespaces of such layers:
- `cast_ops`: every layer keeps its weights as stored (fp8 included, on any device) and casts them to its
  input's device and dtype in each call. The loaders pick it when the storage dtype is not the compute dtype.
- `scaled_fp8_ops`: as `cast_ops`, and each Linear has a float32 `scale_weight` (1 unless the file stores
  one): the real weight is the stored one times it, as in ComfyUI's scaled-fp8 files.

Models written by others (`transformers`' text encoders) get the host's layers with `adopt_operations`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)  # storage formats: torch computes in neither
# Layers whose weight may stay in a storage-only dtype (fp8) because every call casts it: the bulk of a model.
CASTABLE_WEIGHT_LAYERS = (nn.Linear, nn.Conv2d, nn.Conv3d)


def cast_to(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`tensor` on `like`'s device and in its dtype; the same tensor when it already is."""
    return tensor.to(device=like.device, dtype=like.dtype)


def _weight_and_bias(layer: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    weight = None if layer.weight is None else cast_to(layer.weight, like)
    bias = None if layer.bias is None else cast_to(layer.bias, like)
    return weight, bias


class cast_ops:  # noqa: N801 - a namespace used like `torch.nn`, named as ComfyUI names its own
    """Layers that keep their weights as stored and cast weight and bias to the input's device and dtype."""

    class Linear(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, *_weight_and_bias(self, x))

    class Conv2d(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._conv_forward(x, *_weight_and_bias(self, x))

    class Conv3d(nn.Conv3d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._conv_forward(x, *_weight_and_bias(self, x))

    class LayerNorm(nn.LayerNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.layer_norm(x, self.normalized_shape, *_weight_and_bias(self, x), self.eps)

    class GroupNorm(nn.GroupNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.group_norm(x, self.num_groups, *_weight_and_bias(self, x), self.eps)

    class Embedding(nn.Embedding):
        """Rows are looked up on the ids' device, in the table's dtype (tables are stored in the compute dtype)."""

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            table = self.weight.to(ids.device)
            return F.embedding(ids, table, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq)


class scaled_fp8_ops(cast_ops):  # noqa: N801
    """`cast_ops` whose Linear layers carry a float32 `scale_weight` (ComfyUI's scaled-fp8 files store one per
    fp8 weight): the weight used is stored weight x scale, multiplied in float32 and rounded once to the input's
    dtype, which is what dequantising the file at load would give."""

    class Linear(cast_ops.Linear):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            device = kwargs.get("device")
            self.scale_weight = nn.Parameter(torch.ones((), device=device), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale = self.scale_weight.to(x.device, torch.float32)
            weight = (self.weight.to(x.device, torch.float32) * scale).to(x.dtype)
            return F.linear(x, weight, None if self.bias is None else cast_to(self.bias, x))


def adopt_operations(module: nn.Module, operations) -> nn.Module:
    """Give a module built by other code (transformers' text encoders) the host's layers, in place.

    Call it on the meta device, before the weights are assigned: every `nn.Linear` and `nn.Embedding` (exactly
    those classes) becomes `operations`' class of the same shape. Every other module that holds parameters of
    its own (transformers' RMS norms, Gemma's scaled embedding) is made to follow its input: its parameters
    are moved to the input's device for each call, in their own dtype, so its own arithmetic is unchanged.
    """
    for name, child in list(module.named_modules()):
        if type(child) in (nn.Linear, nn.Embedding):
            if operations is not nn:
                parent_name, _, attribute = name.rpartition(".")
                setattr(module.get_submodule(parent_name), attribute, _host_layer(child, operations))
        elif child is not module and any(True for _ in child.parameters(recurse=False)):
            child.__class__ = _following_input(type(child))
    return module


def _host_layer(layer: nn.Linear | nn.Embedding, operations) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return operations.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    return operations.Embedding(layer.num_embeddings, layer.embedding_dim, padding_idx=layer.padding_idx,
                                device="meta")  # fmt: skip


@functools.cache
def _following_input(cls: type[nn.Module]) -> type[nn.Module]:
    """`cls` with a forward that first puts the module's own parameters and buffers on its input's device."""

    def forward(self, x, *args, **kwargs):
        with _tensors_on(self, x.device):
            return cls.forward(self, x, *args, **kwargs)

    return type(cls.__name__, (cls,), {"forward": forward, "__doc__": cls.__doc__})


@contextmanager
def _tensors_on(module: nn.Module, device: torch.device) -> Iterator[None]:
    stores = (module._parameters, module._buffers)
    saved = [(store, name, tensor) for store in stores for name, tensor in store.items()
             if tensor is not None and tensor.device != device]  # fmt: skip
    for store, name, tensor in saved:
        store[name] = tensor.to(device)
    try:
        yield
    finally:
        for store, name, tensor in saved:
            store[name] = tensor


def default_compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a module runs in unless its caller says otherwise: its `compute_dtype` (set by the loaders),
    else the dtype of its first floating-point parameter that is not fp8 storage, else float32."""
    dtype = getattr(module, "compute_dtype", None)
    if dtype is not None:
        return dtype
    floating = (p.dtype for p in module.parameters() if p.dtype.is_floating_point and p.dtype not in FP8_DTYPES)
    return next(floating, torch.float32)


def default_device(module: nn.Module) -> torch.device:
    """Where a module runs unless its caller says otherwise: the device of its first parameter (the CPU for a
    module without any). A host that loads models partially (ComfyUI) passes its device explicitly instead."""
    param = next(module.parameters(), None)
    return torch.device("cpu") if param is None else param.device


def placement(
    module: nn.Module, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) to run `module` in: the caller's choice, else `default_device` / `default_compute_dtype`."""
    return (torch.device(device) if device is not None else default_device(module),
            dtype or default_compute_dtype(module))  # fmt: skip
