"""Tensor names of LTX-Video's latent upsamplers, and the configs stored beside them.

The original release (Lightricks' `ltxv-spatial-upscaler-0.9.7/0.9.8.safetensors`, `ltxv-temporal-upscaler-0.9.7`,
the files ComfyUI and Lightricks' ComfyUI-LTXVideo load) and diffusers' `LTXLatentUpsamplerModel` name every tensor
the same way, and so does `lumina_core.models.ltxv_upsampler`: the map between the layouts is the identity, and
`KEYS` lists the names one config has. The layouts differ in their container: the original is one safetensors file
whose metadata `config` JSON holds the constructor's arguments; diffusers saves a folder (`latent_upsampler/` in a
pipeline) with `config.json`. Both configs carry the same field names, checked against the shapes when present.

LTX-2's upsamplers share most names but resample by a rational factor (`upsampler.conv`, `upsampler.blur_down`);
they are recognised and refused.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..files import metadata_json

# Present in every LTX latent upsampler (spatial or temporal, 2-D or 3-D), absent from every other model.
MARKERS = ("initial_conv.weight", "post_upsample_res_blocks.0.conv2.weight")
LTX2_MARKERS = ("upsampler.conv.weight", "upsampler.blur_down.kernel")

# Fields of a stored config (metadata `config` JSON, diffusers config.json) that the shapes also tell.
CONFIG_FIELDS = ("in_channels", "mid_channels", "num_blocks_per_stage", "dims", "spatial_upsample", "temporal_upsample")

_CONV = ("weight", "bias")
_BLOCK = tuple(f"{layer}.{p}" for layer in ("conv1", "norm1", "conv2", "norm2") for p in _CONV)


def keys(num_blocks_per_stage: int) -> list[str]:
    """Every tensor name of an upsampler with this many residual blocks per stage."""
    names = [f"{layer}.{p}" for layer in ("initial_conv", "initial_norm", "upsampler.0", "final_conv") for p in _CONV]
    for stage in ("res_blocks", "post_upsample_res_blocks"):
        names += [f"{stage}.{i}.{name}" for i in range(num_blocks_per_stage) for name in _BLOCK]
    return sorted(names)


def stored_config(metadata: Mapping[str, object], config_json: Mapping | None, source: str) -> dict:
    """The CONFIG_FIELDS an original file's metadata `config` or a diffusers config.json states; {} without either."""
    stored = config_json
    if stored is None:
        stored = metadata_json(metadata, source, "the upsampler's constructor arguments")
    if not isinstance(stored, Mapping):
        return {}
    return {field: stored[field] for field in CONFIG_FIELDS if field in stored}
