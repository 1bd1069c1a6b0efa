"""Loader nodes: transformer, Gemma text encoder, VAE, and the GGUF loader (until GGUF lands, a clear refusal)."""

from __future__ import annotations

import lumina_core
from lumina_core.loading.transformer import inspect_transformer

from . import comfy_bridge as bridge
from .handles import DEVICE_POLICIES, WEIGHT_DTYPES, Handle, home_device
from .handles import weight_dtype as weight_dtype_for

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


class _FileLoader:
    """A node that loads one model file from a model folder. Subclasses set the folder and `_load`."""

    CATEGORY = CATEGORY
    FUNCTION = "load"
    FOLDER = ""  # one of comfy_bridge.FOLDERS
    FILE_TOOLTIP = ""
    TAKES_DTYPE = True

    @classmethod
    def INPUT_TYPES(cls):
        inputs = {"file": (bridge.list_files(cls.FOLDER, NOT_GGUF), {"tooltip": cls.FILE_TOOLTIP})}
        if cls.TAKES_DTYPE:
            inputs["weight_dtype"] = DTYPE_INPUT
        return {"required": {**inputs, "device": POLICY_INPUT}}

    def load(self, file: str, device: str, weight_dtype: str = "auto"):
        path = bridge.resolve_file(self.FOLDER, file)
        return (self._load(path, weight_dtype_for(weight_dtype, device), device),)

    def _load(self, path: str, dtype, policy: str) -> Handle:
        raise NotImplementedError


class LoadLuminaTransformer(_FileLoader):
    DISPLAY_NAME = "Load Lumina Transformer"
    DESCRIPTION = ("Loads a Lumina-Image 2.0 or Lumina-Next diffusion transformer from any layout (original, "
                   "ComfyUI, diffusers).")  # fmt: skip
    RETURN_TYPES = ("LUMINA_MODEL",)
    RETURN_NAMES = ("model",)
    FOLDER = "lumina_diffusion_models"
    FILE_TOOLTIP = ("From models/diffusion_models, models/unet or models/checkpoints (all-in-one files work). "
                    "The family is detected from the tensors.")  # fmt: skip

    def _load(self, path, dtype, policy):
        family = inspect_transformer(path).family  # a wrong file fails here, before any weights are read
        model = lumina_core.load_transformer(path, dtype=dtype, device=home_device(policy))
        return Handle(model, "transformer", family, policy, path)


class LoadGemma(_FileLoader):
    DISPLAY_NAME = "Load Gemma Text Encoder (Lumina)"
    DESCRIPTION = ("Loads Gemma-2-2B for Lumina-Image 2.0 (ComfyUI gemma_2_2b_fp16, an HF folder's file, or an "
                   "all-in-one checkpoint) or Gemma-2B for Lumina-Next; the generation is detected from the "
                   "tensors.")  # fmt: skip
    RETURN_TYPES = ("LUMINA_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    FOLDER = "lumina_text_encoders"
    FILE_TOOLTIP = "From models/text_encoders, models/clip or models/checkpoints."

    def _load(self, path, dtype, policy):
        encoder = lumina_core.load_text_encoder(path, dtype=dtype, device=home_device(policy))
        if encoder.family == "ltxv":
            raise lumina_core.InvalidInputError(
                f"{path} holds a T5 text encoder (LTX-Video): load it with Load T5 Text Encoder (LTX-Video)."
            )
        return Handle(encoder, "text_encoder", encoder.family, policy, path)


class LoadT5(_FileLoader):
    DISPLAY_NAME = "Load T5 Text Encoder (LTX-Video)"
    DESCRIPTION = ("Loads T5-XXL for LTX-Video: ComfyUI's t5xxl_fp16 / t5xxl_fp8_e4m3fn(_scaled) files or an HF "
                   "file; single files use the T5 tokenizer ComfyUI ships. fp8 files compute in bf16.")  # fmt: skip
    RETURN_TYPES = ("LUMINA_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    FOLDER = "lumina_text_encoders"
    FILE_TOOLTIP = "From models/text_encoders, models/clip or models/checkpoints."

    def _load(self, path, dtype, policy):
        encoder = lumina_core.load_text_encoder(
            path, dtype=dtype, device=home_device(policy), tokenizer_dirs=bridge.t5_tokenizer_dirs()
        )
        if encoder.family != "ltxv":
            raise lumina_core.InvalidInputError(
                f"{path} holds a Gemma text encoder ({encoder.family}): load it with Load Gemma Text Encoder (Lumina)."
            )
        return Handle(encoder, "text_encoder", encoder.family, policy, path)


class LoadLuminaVAE(_FileLoader):
    DISPLAY_NAME = "Load Lumina VAE"
    DESCRIPTION = ("Loads the FLUX autoencoder (Lumina-Image 2.0) or the SDXL one (Lumina-Next): ae.safetensors, "
                   "sdxl_vae.safetensors, a diffusers VAE, or the VAE of an all-in-one file.")  # fmt: skip
    RETURN_TYPES = ("LUMINA_VAE",)
    RETURN_NAMES = ("vae",)
    FOLDER = "lumina_vae"
    FILE_TOOLTIP = "From models/vae or models/checkpoints."
    TAKES_DTYPE = False  # the VAE keeps its stored precision (fp16 files load as fp32: SDXL's overflows)

    def _load(self, path, dtype, policy):
        return Handle(lumina_core.load_vae(path, device=home_device(policy)), "vae", "flux_vae", policy, path)


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
