"""Loader nodes: transformer, Gemma and T5 text encoders, VAE, and the GGUF loader (transformers and text encoders)."""

from __future__ import annotations

import lumina_core
from lumina_core.gguf.reader import read_metadata
from lumina_core.gguf.text import text_architecture
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
    DESCRIPTION = ("Loads a Lumina-Image 2.0, Lumina-Next or LTX-Video diffusion transformer from any layout "
                   "(original, ComfyUI, diffusers).")  # fmt: skip
    RETURN_TYPES = ("LUMINA_MODEL",)
    RETURN_NAMES = ("model",)
    FOLDER = "lumina_diffusion_models"
    FILE_TOOLTIP = ("From models/diffusion_models, models/unet or models/checkpoints (all-in-one files work). "
                    "The family is detected from the tensors.")  # fmt: skip

    def _load(self, path, dtype, policy):
        family = inspect_transformer(path).family  # a wrong file fails here, before any weights are read
        model = lumina_core.load_transformer(path, dtype=dtype, device=home_device(policy))
        return Handle(model, "transformer", family, policy, path)


class _TextEncoderLoader(_FileLoader):
    """Loads a text encoder and checks it serves one of SERVES; the other loader is named when it does not."""

    RETURN_TYPES = ("LUMINA_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    FOLDER = "lumina_text_encoders"
    FILE_TOOLTIP = "From models/text_encoders, models/clip or models/checkpoints."
    SERVES: tuple[str, ...] = ()

    def _load(self, path, dtype, policy):
        encoder = lumina_core.load_text_encoder(path, dtype=dtype, device=home_device(policy), **self._options())
        if encoder.family not in self.SERVES:
            other = next((cls for cls in _TextEncoderLoader.__subclasses__() if encoder.family in cls.SERVES), None)
            where = f"load it with {other.DISPLAY_NAME}" if other else "no loader of this pack takes it"
            raise lumina_core.InvalidInputError(f"{path} holds the text encoder of {encoder.family}: {where}.")
        return Handle(encoder, "text_encoder", encoder.family, policy, path)

    def _options(self) -> dict:
        return {}


class LoadGemma(_TextEncoderLoader):
    DISPLAY_NAME = "Load Gemma Text Encoder (Lumina)"
    DESCRIPTION = ("Loads Gemma-2-2B for Lumina-Image 2.0 (ComfyUI gemma_2_2b_fp16, an HF folder's file, or an "
                   "all-in-one checkpoint) or Gemma-2B for Lumina-Next; the generation is detected from the "
                   "tensors.")  # fmt: skip
    SERVES = ("lumina2", "lumina_next")


class LoadT5(_TextEncoderLoader):
    DISPLAY_NAME = "Load T5 Text Encoder (LTX-Video)"
    DESCRIPTION = ("Loads T5-XXL for LTX-Video: ComfyUI's t5xxl_fp16 / t5xxl_fp8_e4m3fn(_scaled) files or an HF "
                   "file; single files use the T5 tokenizer ComfyUI ships. fp8 files compute in bf16.")  # fmt: skip
    SERVES = ("ltxv",)

    def _options(self) -> dict:
        return {"tokenizer_dirs": bridge.t5_tokenizer_dirs()}


class LoadLuminaVAE(_FileLoader):
    DISPLAY_NAME = "Load Lumina VAE"
    DESCRIPTION = ("Loads the FLUX autoencoder (Lumina-Image 2.0), the SDXL one (Lumina-Next) or LTX-Video's causal "
                   "video VAE: ae.safetensors, sdxl_vae.safetensors, a diffusers VAE, or the VAE part of an "
                   "all-in-one file such as ltx-video-2b-v0.9.5.safetensors.")  # fmt: skip
    RETURN_TYPES = ("LUMINA_VAE",)
    RETURN_NAMES = ("vae",)
    FOLDER = "lumina_vae"
    FILE_TOOLTIP = "From models/vae or models/checkpoints."
    TAKES_DTYPE = False  # the VAE keeps its stored precision (fp16 files load as fp32: SDXL's overflows)

    def _load(self, path, dtype, policy):
        vae = lumina_core.load_vae(path, device=home_device(policy))
        return Handle(vae, "vae", getattr(vae, "family", "kl_vae"), policy, path)


class GGUFLoader:
    DISPLAY_NAME = "Load GGUF (Lumina)"
    DESCRIPTION = ("Loads a GGUF file: a Lumina-Image 2.0, Lumina-Next or LTX-Video transformer (quantized layers stay "
                   "packed and are dequantized one at a time) or a Gemma / Gemma-2 / T5 text encoder made by "
                   "llama.cpp. The file's contents pick the output; connect that one.")  # fmt: skip
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LUMINA_MODEL", "LUMINA_TEXT_ENCODER")
    RETURN_NAMES = ("model", "text_encoder")
    FUNCTION = "load"
    FOLDERS = ("lumina_diffusion_models", "lumina_text_encoders")

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted({name for key in cls.FOLDERS for name in bridge.list_files(key, {".gguf"})})
        tooltip = ".gguf files from the diffusion model and text encoder folders; connect the output that matches."
        inputs = {"file": (files, {"tooltip": tooltip}), "weight_dtype": DTYPE_INPUT, "device": POLICY_INPUT}
        return {"required": inputs}

    def load(self, file: str, device: str, weight_dtype: str = "auto"):
        path = self._resolve(file)
        dtype = weight_dtype_for(weight_dtype, device)
        if text_architecture(str(read_metadata(path).get("general.architecture", ""))):
            encoder = lumina_core.load_text_encoder(
                path, dtype=dtype, device=home_device(device), tokenizer_dirs=bridge.t5_tokenizer_dirs()
            )
            unused = _Unconnected(f"{file} holds a text encoder: connect GGUFLoader's text_encoder output, not model.")
            return (unused, Handle(encoder, "text_encoder", encoder.family, device, path))
        family = inspect_transformer(path).family  # a wrong file fails here, before any weights are read
        model = lumina_core.load_transformer(path, dtype=dtype, device=home_device(device))
        unused = _Unconnected(f"{file} holds a diffusion transformer: connect GGUFLoader's model output.")
        return (Handle(model, "transformer", family, device, path), unused)

    def _resolve(self, file: str) -> str:
        for key in self.FOLDERS:  # only .gguf files the dropdown lists (no path traversal)
            if file in bridge.list_files(key, {".gguf"}):
                return bridge.resolve_file(key, file)
        raise ValueError(f"'{file}' is not a .gguf file in the diffusion model or text encoder folders: pick one from "
                         "the list.")  # fmt: skip


class _Unconnected:
    """What GGUFLoader gives on the output its file does not fill: any use says which output to connect."""

    def __init__(self, message: str):
        self._message = message

    def __getattr__(self, name: str):
        raise lumina_core.InvalidInputError(self._message)
