"""`load_vae`: tell from a file's tensor names which VAE it holds, and load it with the module for that family."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..loading import files
from ..loading.keymaps import ltx_vae
from . import autoencoder, ltx_video


def load_vae(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu", **options: object
) -> nn.Module:
    """Load the VAE in `path`, in eval mode without gradients.

    An LTX-Video causal video VAE (original, ComfyUI or diffusers names; `.family == "ltxv"`) loads with
    `lumina_core.vae.ltx_video.load_ltx_vae`, whose keyword options are LTXVideoVAEConfig fields; anything else
    with `lumina_core.vae.autoencoder.load_vae` (FLUX / SD KL autoencoders; options num_groups, scale, shift),
    which names what the file holds when it is not a VAE. Both take `compute_dtype` and `operations` as
    `load_transformer` does.
    """
    checkpoint = _open(path)
    if ltx_vae.detect_ltx_vae(checkpoint.keys) is not None:
        vae = ltx_video.load_ltx_vae(path, dtype, device, checkpoint=checkpoint, **options)
    else:
        vae = autoencoder.load_vae(path, dtype, device, **options)
    vae.source = os.fspath(path)  # decode names it when it makes NaN/inf pixels (lumina_core.nonfinite)
    return vae


def is_video_vae(path: str | os.PathLike) -> bool:
    """Whether `path` holds LTX-Video's video VAE, from the tensor names alone (nothing is loaded)."""
    return ltx_vae.detect_ltx_vae(_open(path).keys) is not None


def _open(path: str | os.PathLike) -> files.Checkpoint:
    folder = os.fspath(path)
    if os.path.isdir(os.path.join(folder, "vae")):  # a diffusers pipeline folder
        folder = os.path.join(folder, "vae")
    return files.open_checkpoint(folder)
