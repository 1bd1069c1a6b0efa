"""Which tensors of each diffusion family stay in float: in the files the converter writes, and in memory.

Files: city96's patched llama.cpp (ComfyUI-GGUF `tools/lcpp.patch`) keeps the embedders, the output layers,
Lumina 2's refiners and LTX's adaLN, caption projection and tables unquantized, because they are small or
sensitive; our converter does the same (`FLOAT_MODULES`, `keeps_float`).

Memory: whatever a file holds, the loader dequantizes once at load the layers whose `.weight` model code
reads (`LOAD_FLOAT_MODULES`: the patch and timestep embedders give the model its dtype and device), besides
every quantized tensor that is not a Linear weight; all other quantized Linear weights stay packed.
"""

from __future__ import annotations

FLOAT_MODULES: dict[str, tuple[str, ...]] = {
    "lumina2": ("t_embedder.", "x_embedder.", "cap_embedder.", "final_layer.", "context_refiner.", "noise_refiner."),
    # Z-Image files are "lumina2" files to city96's tools, which treat them alike.
    "zimage": ("t_embedder.", "x_embedder.", "cap_embedder.", "final_layer.", "context_refiner.", "noise_refiner."),
    "lumina_next": ("t_embedder.", "x_embedder.", "cap_embedder.", "final_layer."),
    "ltxv": ("adaln_single.", "caption_projection.", "patchify_proj.", "proj_out."),
}
LOAD_FLOAT_MODULES: dict[str, tuple[str, ...]] = {
    "lumina2": ("t_embedder.", "x_embedder.", "cap_embedder."),
    "zimage": ("t_embedder.", "x_embedder.", "cap_embedder."),
    "lumina_next": ("t_embedder.", "x_embedder.", "cap_embedder."),
    "ltxv": ("adaln_single.", "patchify_proj.", "caption_projection."),
}
# Never quantized by the converter: tensors this small, or with fewer than two dimensions (norms, biases,
# pad tokens, gates, LTX's scale_shift_table), gain nothing from it and lose precision.
MIN_QUANTIZED_ELEMENTS = 1024
FLOAT_NAMES = ("scale_shift_table", "pad_token", "norm")
# Parameters a model owns directly (not a layer's weight): written in F32, as city96's converter keeps them,
# because ComfyUI-GGUF loads them without dequantizing and breaks on half ones (city96/ComfyUI-GGUF#419).
PLAIN_PARAMETERS = ("scale_shift_table", "pad_token")


def keeps_float(family: str, name: str, shape: tuple[int, ...]) -> bool:
    """Whether the converter writes tensor `name` (original key) of `family` in float (F32/F16/BF16)."""
    if len(shape) != 2 or shape[0] * shape[1] <= MIN_QUANTIZED_ELEMENTS:
        return True
    return name.startswith(FLOAT_MODULES.get(family, ())) or any(part in name for part in FLOAT_NAMES)
