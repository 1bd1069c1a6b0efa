"""Find the first NaN or inf of a run and say where it came from, so a broken file never becomes a black image.

The sampler checks the conditioning before the first step, every model output and the latent after every step;
the VAEs check what they decode. Each check is one reduction (a sum is NaN or inf when any value is), and the
costly part, counting the bad values and looking through the weights for one that holds them, runs only once
something has gone wrong. A weight holding NaN/inf is named outright: it is the one cause that needs no guessing.
"""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn

from .conditioning import FAMILY_NAMES, Conditioning
from .errors import DecodeError, SamplingError


def is_finite(x: torch.Tensor) -> bool:
    """Whether every value of x is finite; one reduction, no tensor of x's size (a sum of finite values only
    overflows for values that are broken anyway, and `count_nonfinite` then decides)."""
    return bool(torch.isfinite(x.sum(dtype=torch.float32))) or count_nonfinite(x) is None


def count_nonfinite(x: torch.Tensor) -> str | None:
    """'3 NaN and 1 inf among 4096 values', or None when all are finite."""
    x = x.detach()
    if not x.is_floating_point():
        return None
    nan = int(torch.isnan(x).sum())
    inf = int(torch.isinf(x).sum())
    if nan == inf == 0:
        return None
    parts = [f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "inf")) if n]
    return f"{' and '.join(parts)} among {x.numel()} values"


def first_nonfinite_weight(module: nn.Module) -> str | None:
    """'name holds N NaN among M values' for the first float parameter or buffer holding NaN/inf, or None (packed
    GGUF bytes and meta tensors are skipped)."""
    for name, tensor in chain(module.named_parameters(), module.named_buffers()):
        if tensor is None or not tensor.is_floating_point() or tensor.device.type == "meta":
            continue
        found = count_nonfinite(tensor if tensor.element_size() > 1 else tensor.float())  # fp8: no isnan kernel
        if found is not None:
            return f"{name} holds {found}"
    return None


def model_name(model: nn.Module) -> str:
    family = getattr(model, "family", None)
    return getattr(model, "model_name", None) or FAMILY_NAMES.get(family, (family or type(model).__name__,))[0]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_conditioning(conditioning: Conditioning, role: str) -> None:
    """Before sampling: text features holding NaN/inf can only come from the text encoder."""
    if is_finite(conditioning.embeds):
        return
    found = count_nonfinite(conditioning.embeds)
    raise SamplingError(
        f"the {role} conditioning holds NaN/inf ({found}, {dtype_name(conditioning.embeds.dtype)}) before "
        "sampling: the text encoder made it so. Likely causes, most likely first: a NaN/inf in the text encoder's "
        "weights (a damaged file: download it again), float16 overflow in the encoder (load it in bfloat16 or "
        "float32), text features built by hand."
    )


def model_output_error(
    model: nn.Module, output: torch.Tensor, dtype: torch.dtype, where: str, passes: str
) -> SamplingError:
    """The error for a non-finite model output from finite inputs, `where` e.g. 'at step 3 of 4 (sigma 0.8571)'."""
    head = (
        f"the {model_name(model)} transformer returned NaN/inf {where} in its {passes} ({count_nonfinite(output)}) "
        f"from finite inputs, computing in {dtype_name(dtype)}"
    )
    return SamplingError(f"{head}. {_causes(model, dtype, 'transformer')}")


def check_decoded(vae: nn.Module, latent: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Raise DecodeError naming the stage (VAE decode) and the VAE's file when a decode made NaN/inf; returns images.

    Called by every VAE's decode before the [0, 1] clamp (which would turn inf into white and hide it).
    """
    if is_finite(images):
        return images
    source = getattr(vae, "source", None) or "the VAE"
    weight = next((p for p in vae.parameters() if p.device.type != "meta"), None)
    dtype = weight.dtype if weight is not None else images.dtype
    if not is_finite(latent):
        raise DecodeError(
            f"VAE decode ({source}): the latent to decode already holds NaN/inf ({count_nonfinite(latent)}); the step "
            "that made it (sampling, or a node that edited the latent) went wrong, not the VAE."
        )
    head = (
        f"VAE decode ({source}) made NaN/inf pixels ({count_nonfinite(images)}) from a finite latent, computing in "
        f"{dtype_name(dtype)}"
    )
    raise DecodeError(f"{head}. {_causes(vae, dtype, 'VAE')}")


def _causes(module: nn.Module, dtype: torch.dtype, part: str) -> str:
    source = getattr(module, "source", None)
    weight = first_nonfinite_weight(module)
    if weight is not None:
        where = f"{source} is damaged" if source else "its file is damaged"
        return f"Cause: its weight {weight}: {where}; download or convert it again."
    causes = [
        f"weights that are finite but far out of range (a damaged or badly converted {part} file"
        + (f": {source}" if source else "")
        + ")",
        "inputs it was not made for (text features from another encoder, a latent from another model's VAE)",
    ]
    if dtype == torch.float16:
        causes.insert(0, f"float16 overflows in this {part}: load it in bfloat16 or float32")
    numbered = "; ".join(f"({i}) {cause}" for i, cause in enumerate(causes, 1))
    return f"Its weights are finite. Likely causes, most likely first: {numbered}."
