"""Loader nodes: transformer, Gemma text encoder, VAE, and the GGUF loader (until GGUF lands, a clear refusal)."""

from __future__ import annotations

import lumina_core
from lumina_core.loading.transformer import inspect_transformer

from . import comfy_bridge as bridge
from .handles import DEVICE_POLICIES, WEIGHT_DTYPES, Handle, home_device, weight_dtype

CATEGORY = "Lumina"
NOT_GGUF = bridge.EXTENSIONS - {".gguf"}

POLICY_INPUT = (list(DEVICE_POLICIES), {
    "default": "auto",
    "tooltip": "; ".join(f"{name}: {text}" for name, text in DEVICE_POLICIES.items()),
})  # fmt: skip
DTYPE_INPUT = (list(WEIGHT_DTYPES), {
    "default": "auto",
    "tooltip": "auto: bf16 on GPUs that support it, else fp32. fp16 overflows on Lumina-Image 2.0 (black images).",
})  # fmt: skip


class LoadLuminaTransformer:
    DISPLAY_NAME = "Load Lumina Transformer"
    DESCRIPTION = "Loads a Lumina-Image 2.0 diffusion transformer from any layout (original, ComfyUI, diffusers)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LUMINA_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = bridge.list_files("lumina_diffusion_models", NOT_GGUF)
        return {"required": {
            "file": (files, {"tooltip": "From models/diffusion_models, models/unet or models/checkpoints "
                                        "(all-in-one files work). The family is detected from the tensors."}),
            "weight_dtype": DTYPE_INPUT,
            "device": POLICY_INPUT,
        }}  # fmt: skip

    def load(self, file: str, weight_dtype: str, device: str):
        path = bridge.resolve_file("lumina_diffusion_models", file)
        family = inspect_transformer(path).family  # a wrong file fails here, before any weights are read
        model = lumina_core.load_transformer(path, dtype=_dtype(weight_dtype, device), device=home_device(device))
        return (Handle(model, "transformer", family, device, path),)


class LoadGemma:
    DISPLAY_NAME = "Load Gemma-2 Text Encoder"
    DESCRIPTION = "Loads Gemma-2-2B (ComfyUI gemma_2_2b_fp16, an HF folder's file, or an all-in-one checkpoint)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LUMINA_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = bridge.list_files("lumina_text_encoders", NOT_GGUF)
        return {"required": {
            "file": (files, {"tooltip": "From models/text_encoders, models/clip or models/checkpoints."}),
            "weight_dtype": DTYPE_INPUT,
            "device": POLICY_INPUT,
        }}  # fmt: skip

    def load(self, file: str, weight_dtype: str, device: str):
        path = bridge.resolve_file("lumina_text_encoders", file)
        encoder = lumina_core.load_text_encoder(path, dtype=_dtype(weight_dtype, device), device=home_device(device))
        return (Handle(encoder, "text_encoder", "lumina2", device, path),)


class LoadLuminaVAE:
    DISPLAY_NAME = "Load Lumina VAE"
    DESCRIPTION = "Loads the FLUX autoencoder (ae.safetensors, a diffusers VAE, or the VAE of an all-in-one file)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LUMINA_VAE",)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = bridge.list_files("lumina_vae", NOT_GGUF)
        return {"required": {
            "file": (files, {"tooltip": "From models/vae or models/checkpoints."}),
            "device": POLICY_INPUT,
        }}  # fmt: skip

    def load(self, file: str, device: str):
        path = bridge.resolve_file("lumina_vae", file)
        vae = lumina_core.load_vae(path, device=home_device(device))
        return (Handle(vae, "vae", "flux_vae", device, path),)


class GGUFLoader:
    DISPLAY_NAME = "Load GGUF (Lumina)"
    DESCRIPTION = "Loads a GGUF-quantized transformer or text encoder. Not built yet: it says so when run."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LUMINA_MODEL", "LUMINA_TEXT_ENCODER")
    RETURN_NAMES = ("model", "text_encoder")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted(set(bridge.list_files("lumina_diffusion_models", {".gguf"}))
                       | set(bridge.list_files("lumina_text_encoders", {".gguf"})))  # fmt: skip
        return {
            "required": {
                "file": (
                    files,
                    {
                        "tooltip": ".gguf files from the diffusion model and text encoder "
                        "folders; connect the output that matches the file."
                    },
                )
            }
        }

    def load(self, file: str):
        raise lumina_core.UnsupportedModelError(
            f"{file}: GGUF support is not built yet in this pack; use a .safetensors file with the "
            "Load Lumina Transformer / Load Gemma-2 Text Encoder nodes meanwhile."
        )


def _dtype(choice: str, policy: str):
    return weight_dtype(choice, policy)
