"""lumina_core: Lumina-Image 2.0, Lumina-Next and LTX-Video in plain PyTorch, from any checkpoint layout (GGUF too).

Public API:
    load_transformer(path, dtype=None, device="cpu")  -> model(x, sigma, context, context_mask, **options) -> velocity
    load_text_encoder(path, dtype=None, device="cpu") -> encoder.encode(prompts, ...) -> Conditioning
    load_vae(path, dtype=None, device="cpu")          -> vae.decode(latent) -> images (B, 3, H, W) or frames
                                                         (B, 3, T, H, W) in [0, 1]
    sample(model, positive, negative, ...)           -> final latent (model space)
    load_lora(path); apply_loras(model, [(lora, strength), ...]) -> a patched copy; remove_loras(patched) -> model

`x` is (B, C, H, W) for the image families and (B, 128, F, H, W) for LTX-Video; `model.family` says which.
Names are imported on first use, so `import lumina_core` stays cheap (transformers loads only with
the text encoder).
"""

from importlib import import_module

from .conditioning import Conditioning
from .errors import (
    CheckpointError,
    DecodeError,
    InvalidInputError,
    LuminaCoreError,
    SamplingError,
    UnsupportedModelError,
)

_LAZY = {  # name -> the submodule defining it, relative to this package (which may be vendored under another name)
    "load_transformer": ".loading.transformer",
    "load_text_encoder": ".text",
    "load_vae": ".vae",
    "sample": ".sampling",
    "SYSTEM_PROMPTS": ".text.prompts",
    "load_lora": ".lora",
    "apply_loras": ".lora",
    "remove_loras": ".lora",
}

__all__ = [
    "Conditioning", "CheckpointError", "DecodeError", "InvalidInputError", "LuminaCoreError", "SamplingError",
    "UnsupportedModelError", *_LAZY,
]  # fmt: skip


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'lumina_core' has no attribute {name!r}")
