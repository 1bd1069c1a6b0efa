"""`load_latent_upsampler`: LTX-Video's latent upsamplers from their original or diffusers files.

The layout is recognised from tensor names (`keymaps/ltxv_upsampler.py`), the config from tensor shapes, checked
against a stored config when the file has one, and the module is filled tensor by tensor from the memory map.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from functools import partial

import torch

from ..errors import CheckpointError, UnsupportedModelError
from ..models.ltxv_upsampler import LatentUpsampler, config_from_shapes
from .detect import describe_contents
from .files import open_checkpoint, read_json, shard_owner
from .keymaps import ltxv_upsampler as keymap
from .modules import assign_tensors, build_with_precision

SUBFOLDER = "latent_upsampler"  # where a diffusers pipeline folder keeps it


def load_latent_upsampler(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    *,
    compute_dtype: torch.dtype | None = None,
    operations=None,
) -> LatentUpsampler:
    """Load an LTX-Video latent upsampler in eval mode, without gradients.

    path: an original single file (`ltxv-spatial-upscaler-0.9.8.safetensors`, config in its metadata), a
    diffusers `latent_upsampler/` folder (config.json) or pipeline folder holding one, or a bare safetensors file
    with the same names. dtype None keeps the stored dtype; `compute_dtype` and `operations` (the layer namespace,
    e.g. ComfyUI's comfy.ops) as for `load_transformer` (`loading.modules.build_with_precision`).
    """
    folder = shard_owner(os.fspath(path))
    if os.path.isdir(os.path.join(folder, SUBFOLDER)):
        folder = os.path.join(folder, SUBFOLDER)
    checkpoint = open_checkpoint(folder)
    present = set(checkpoint.keys)
    if not all(marker in present for marker in keymap.MARKERS):
        raise UnsupportedModelError(
            f"{checkpoint.path} holds {describe_contents(checkpoint)}; load_latent_upsampler loads LTX-Video latent "
            "upsamplers (ltxv-spatial-upscaler-0.9.7/0.9.8). Load transformers with load_transformer (the Load "
            "Lumina Transformer node) and VAEs with load_vae."
        )
    if any(marker in present for marker in keymap.LTX2_MARKERS):
        raise UnsupportedModelError(
            f"{checkpoint.path} holds an LTX-2 latent upsampler (a rational resampler: {keymap.LTX2_MARKERS[0]}); "
            "this loader reads the LTX-Video 0.9.7/0.9.8 upsamplers."
        )
    source = f"{checkpoint.path} (an LTX-Video latent upsampler)"
    shapes = {key: checkpoint.shape(key) for key in checkpoint.keys}
    try:
        config = config_from_shapes(shapes)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{source}: the tensors do not form an LTX latent upsampler ({err}).") from None
    config_path = os.path.join(folder, "config.json")
    config_json = read_json(config_path, "a diffusers LTXLatentUpsamplerModel config") if (
        os.path.isdir(folder) and os.path.isfile(config_path)) else None  # fmt: skip
    derived = asdict(config)
    for field, value in keymap.stored_config(checkpoint.metadata, config_json, source).items():
        if value != derived[field]:
            raise CheckpointError(
                f"{source}: its stored config says {field} = {value!r} but its tensors make {derived[field]!r}: a "
                "damaged or mislabelled file."
            )
    stored = {key: checkpoint.dtype(key) for key in checkpoint.keys}
    model, precision = build_with_precision(partial(LatentUpsampler, config), stored, dtype, compute_dtype, operations)
    readers = {key: partial(checkpoint.load, key) for key in checkpoint.keys}
    return assign_tensors(model, readers, shapes, source, precision, device)
