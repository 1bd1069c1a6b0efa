"""Will a sampling run fit in memory? A lower bound on what it needs, against what the device has free.

The estimate counts what one transformer block holds at once for every token (the residual stream, its normed
copy, the q/k/v projections and the two feed-forward halves), for the batch the model sees (doubled with
guidance), plus the solver's float32 latents. It leaves out the attention scores (the fused kernels never hold
them), so it is what the run needs at least: a run it refuses cannot fit, and one it accepts may still be tight.
The point is to say so before minutes of work end in an allocator error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch
from torch import nn

from ..errors import InvalidInputError
from ..nonfinite import dtype_name

# Activations one block holds per token, in units of the model width D and of the feed-forward width F.
BLOCK_WIDTHS_D, BLOCK_WIDTHS_F = 4, 2
# Latent-sized float32 tensors a solver keeps alive: x, noise, the velocity, and its stages (dopri5 has 7).
SOLVER_LATENTS = 10


def sampling_bytes(model: nn.Module, latent_shape: tuple[int, ...], guided: bool, dtype: torch.dtype) -> int:
    """Bytes a sampling run needs at least beyond the weights, for a latent (B, C, ...) and the model's config."""
    config = getattr(model, "config", None)
    dim = getattr(config, "dim", None)
    if dim is None:  # not one of our transformers: nothing to estimate from
        return 0
    ffn = getattr(config, "ffn_hidden", 4 * dim)
    patch = getattr(config, "patch_size", 1) ** 2 * getattr(config, "patch_size_t", 1) ** (len(latent_shape) - 4)
    batch, _, *dims = latent_shape
    tokens = math.prod(dims) // patch
    per_token = (BLOCK_WIDTHS_D * dim + BLOCK_WIDTHS_F * ffn) * torch.empty((), dtype=dtype).element_size()
    activations = (2 if guided else 1) * batch * tokens * per_token
    return activations + SOLVER_LATENTS * math.prod(latent_shape) * 4


def available_bytes(device: torch.device) -> int | None:
    """Memory a run may still take on `device`: free CUDA memory plus PyTorch's reusable cache, or the system's
    available RAM for the CPU; None where it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        return _available_ram()
    return None


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(
    model: nn.Module,
    latent_shape: tuple[int, ...],
    guided: bool,
    dtype: torch.dtype,
    device: torch.device,
    make_room: Callable[[int, torch.device], None] | None = None,
    extra_bytes: int = 0,
) -> None:
    """Raise InvalidInputError when the run cannot fit on `device`, with the estimate and what is available.

    make_room(bytes, device): the host's way to free memory first (ComfyUI unloads cached models); called only
    when the estimate exceeds what is free now. extra_bytes: more the run will hold, e.g. weights not loaded yet.
    """
    needed = sampling_bytes(model, latent_shape, guided, dtype) + extra_bytes
    available = available_bytes(device)
    if available is None or needed <= available:
        return
    if make_room is not None:
        make_room(needed, device)
        available = available_bytes(device)
        if available is None or needed <= available:
            return
    raise InvalidInputError(
        f"this run needs at least {_size(needed)} of {device.type} memory ({'the weights and ' if extra_bytes else ''}"
        f"the activations for the latent {tuple(latent_shape)}{', doubled for guidance' if guided else ''}, in "
        f"{dtype_name(dtype)}), but only {_size(available)} is available: use a smaller size or batch, or free memory."
    )


def _size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"
