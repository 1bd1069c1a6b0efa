"""Loader nodes: transformer, Gemma / Qwen3 and T5 text encoders, VAE, LTX-Video latent upsampler, and the GGUF
loader (transformers and text encoders).

Each loads its model into ComfyUI's offload device for that kind of model, built with ComfyUI's cast layers,
and hands it on in a ModelPatcher (see `comfy_bridge`); the nodes that run a model ask ComfyUI to load it.
"""

from __future__ import annotations

from .. import lumina_core
from ..lumina_core.gguf.reader import read_metadata
from ..lumina_core.gguf.text import text_architecture
from ..lumina_core.loading.transformer import inspect_transformer, stored_weights
from ..lumina_core.loading.upsampler import load_latent_upsampler
from ..lumina_core.text.load import stored_scaled_fp8
from . import comfy_bridge as bridge
from .handles import FP8_WEIGHT_DTYPES, WEIGHT_DTYPES, Handle

CATEGORY = "Lumina"
NOT_GGUF = bridge.EXTENSIONS - {".gguf"}

DTYPE_TOOLTIP = ("auto: ComfyUI's choice for the device (bf16 where it computes in it, else fp32; its --bf16-unet, "
                 "--fp8_e4m3fn-unet ... flags apply). fp16 overflows on Lumina-Image 2.0 (black images).")  # fmt: skip
DTYPE_INPUT = (list(WEIGHT_DTYPES), {"default": "auto", "tooltip": DTYPE_TOOLTIP})
DIFFUSION_DTYPE_INPUT = ([*WEIGHT_DTYPES, *FP8_WEIGHT_DTYPES], {
    "default": "auto",
    "tooltip": DTYPE_TOOLTIP + " fp8 keeps the weights in fp8 (half the memory of bf16) and computes in bf16; fp8 "
    "files stay fp8 when ComfyUI's auto choice keeps them.",
})  # fmt: skip
TEXT_ENCODER_DTYPE_INPUT = (list(WEIGHT_DTYPES), {
    "default": "auto",
    "tooltip": "auto: the weights as stored (fp8 files stay fp8), computed in bf16 where the device supports it, "
    "else fp32.",
})  # fmt: skip


def _dtype(choice: str):
    return {**WEIGHT_DTYPES, **FP8_WEIGHT_DTYPES}[choice]


def load_diffusion_model(path: str, choice: str) -> Handle:
    """A diffusion transformer with ComfyUI's precision and layers for it, in a ModelPatcher."""
    family = inspect_transformer(path).family  # a wrong file fails here, before any weights are read
    stored = stored_weights(path)
    precision = bridge.diffusion_precision(_dtype(choice), stored.dtype, stored.parameters, stored.scaled_fp8)
    offload = bridge.devices("diffusion")[1]
    model = lumina_core.load_transformer(path, device=offload, **precision.loader_options())
    return Handle(model, bridge.patcher(model, "diffusion"), "diffusion", family, path)


def load_text_encoder(path: str, choice: str) -> Handle:
    """A text encoder with ComfyUI's layers for text encoders, in a ModelPatcher."""
    precision = bridge.text_encoder_precision(_dtype(choice), stored_scaled_fp8(path))
    offload = bridge.devices("text_encoder")[1]
    encoder = lumina_core.load_text_encoder(
        path, device=offload, tokenizer_dirs=bridge.bundled_tokenizer_dirs(), **precision.loader_options()
    )
    return Handle(encoder, bridge.patcher(encoder.model, "text_encoder"), "text_encoder", encoder.family, path)


def load_as_vae(load, path: str):
    """`load(path, ...)` on ComfyUI's VAE offload device with a VAE's precision and layers (the VAE, and the latent
    upsampler that works beside it)."""
    return load(path, device=bridge.devices("vae")[1], **bridge.vae_precision().loader_options())


class _FileLoader:
    """A node that loads one model file from a model folder. Subclasses set the folder and `_load`."""

    CATEGORY = CATEGORY
    FUNCTION = "load"
    FOLDER = ""  # one of comfy_bridge.FOLDERS
    FILE_TOOLTIP = ""
    DTYPE_INPUT = DTYPE_INPUT  # None: no weight dtype choice

    @classmethod
    def INPUT_TYPES(cls):
        inputs = {"file": (bridge.list_files(cls.FOLDER, NOT_GGUF), {"tooltip": cls.FILE_TOOLTIP})}
        if cls.DTYPE_INPUT is not None:
            inputs["weight_dtype"] = cls.DTYPE_INPUT
        return {"required": inputs}

    def load(self, file: str, weight_dtype: str = "auto"):
        return (self._load(bridge.resolve_file(self.FOLDER, file), weight_dtype),)

    def _load(self, path: str, weight_dtype: str) -> Handle:
        raise NotImplementedError


class LoadLuminaTransformer(_FileLoader):
    DISPLAY_NAME = "Load Lumina Transformer"
    DESCRIPTION = ("Loads a Lumina-Image 2.0, Lumina-Next, Z-Image (Z-Image-Turbo) or LTX-Video diffusion transformer "
                   "from any layout (original, ComfyUI, diffusers).")  # fmt: skip
    RETURN_TYPES = ("LUMINA_MODEL",)
    RETURN_NAMES = ("model",)
    FOLDER = "lumina_diffusion_models"
    FILE_TOOLTIP = ("From models/diffusion_models, models/unet or models/checkpoints (all-in-one files work). "
                    "The family is detected from the tensors.")  # fmt: skip
    DTYPE_INPUT = DIFFUSION_DTYPE_INPUT

    def _load(self, path, weight_dtype):
        return load_diffusion_model(path, weight_dtype)


class _TextEncoderLoader(_FileLoader):
    """Loads a text encoder and checks it serves one of SERVES; the other loader is named when it does not."""

    RETURN_TYPES = ("LUMINA_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    FOLDER = "lumina_text_encoders"
    FILE_TOOLTIP = "From models/text_encoders, models/clip or models/checkpoints."
    DTYPE_INPUT = TEXT_ENCODER_DTYPE_INPUT
    SERVES: tuple[str, ...] = ()

    def _load(self, path, weight_dtype):
        handle = load_text_encoder(path, weight_dtype)
        if handle.family not in self.SERVES:
            other = next((cls for cls in _TextEncoderLoader.__subclasses__() if handle.family in cls.SERVES), None)
            where = f"load it with {other.DISPLAY_NAME}" if other else "no loader of this pack takes it"
            raise lumina_core.InvalidInputError(f"{path} holds the text encoder of {handle.family}: {where}.")
        return handle


class LoadGemma(_TextEncoderLoader):
    DISPLAY_NAME = "Load Gemma / Qwen3 Text Encoder (Lumina, Z-Image)"
    DESCRIPTION = ("Loads Gemma-2-2B for Lumina-Image 2.0 (ComfyUI gemma_2_2b_fp16, an HF folder's file, or an "
                   "all-in-one checkpoint), Gemma-2B for Lumina-Next, or Qwen3-4B for Z-Image (ComfyUI "
                   "qwen_3_4b, fp8 files too, with the Qwen tokenizer ComfyUI ships); the model is detected from "
                   "the tensors.")  # fmt: skip
    SERVES = ("lumina2", "lumina_next", "zimage")


class LoadT5(_TextEncoderLoader):
    DISPLAY_NAME = "Load T5 Text Encoder (LTX-Video)"
    DESCRIPTION = ("Loads T5-XXL for LTX-Video: ComfyUI's t5xxl_fp16 / t5xxl_fp8_e4m3fn(_scaled) files or an HF "
                   "file; single files use the T5 tokenizer ComfyUI ships. fp8 files stay fp8 and compute in "
                   "bf16.")  # fmt: skip
    SERVES = ("ltxv",)


class LoadLuminaVAE(_FileLoader):
    DISPLAY_NAME = "Load Lumina VAE"
    DESCRIPTION = ("Loads the FLUX autoencoder (Lumina-Image 2.0), the SDXL one (Lumina-Next) or LTX-Video's causal "
                   "video VAE: ae.safetensors, sdxl_vae.safetensors, a diffusers VAE, or the VAE part of an "
                   "all-in-one file such as ltx-video-2b-v0.9.5.safetensors.")  # fmt: skip
    RETURN_TYPES = ("LUMINA_VAE",)
    RETURN_NAMES = ("vae",)
    FOLDER = "lumina_vae"
    FILE_TOOLTIP = "From models/vae or models/checkpoints."
    DTYPE_INPUT = None  # the VAE keeps its stored precision (fp16 files load as fp32: SDXL's overflows)

    def _load(self, path, weight_dtype):
        vae = load_as_vae(lumina_core.load_vae, path)
        return Handle(vae, bridge.patcher(vae, "vae"), "vae", getattr(vae, "family", "kl_vae"), path)


class LoadLatentUpsampler(_FileLoader):
    DISPLAY_NAME = "Load LTX-Video Latent Upsampler"
    DESCRIPTION = ("Loads Lightricks' LTX-Video latent upsampler (ltxv-spatial-upscaler-0.9.7 / 0.9.8, also the "
                   "temporal one) in the original or diffusers layout, for LTX-Video Latent Upsample.")  # fmt: skip
    RETURN_TYPES = ("LUMINA_LATENT_UPSAMPLER",)
    RETURN_NAMES = ("upsampler",)
    FOLDER = "lumina_latent_upsamplers"
    FILE_TOOLTIP = ("From models/latent_upscale_models (ComfyUI's folder for them; created by you on older "
                    "versions) or models/upscale_models.")  # fmt: skip
    DTYPE_INPUT = None  # the stored precision, as the VAE it works beside

    def _load(self, path, weight_dtype):
        upsampler = load_as_vae(load_latent_upsampler, path)
        return Handle(upsampler, bridge.patcher(upsampler, "vae"), "vae", "ltxv", path)


class GGUFLoader:
    DISPLAY_NAME = "Load GGUF (Lumina)"
    DESCRIPTION = ("Loads a GGUF file: a Lumina-Image 2.0, Lumina-Next, Z-Image or LTX-Video transformer (quantized "
                   "layers stay packed and are dequantized one at a time) or a Gemma / Gemma-2 / Qwen3 / T5 text "
                   "encoder made by llama.cpp. The file's contents pick the output; connect that one.")  # fmt: skip
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LUMINA_MODEL", "LUMINA_TEXT_ENCODER")
    RETURN_NAMES = ("model", "text_encoder")
    FUNCTION = "load"
    FOLDERS = ("lumina_diffusion_models", "lumina_text_encoders")

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted({name for key in cls.FOLDERS for name in bridge.list_files(key, {".gguf"})})
        tooltip = ".gguf files from the diffusion model and text encoder folders; connect the output that matches."
        dtype = (list(WEIGHT_DTYPES), {"default": "auto", "tooltip": "The dtype the quantized layers are unpacked "
                                       "into and the float layers are kept in. " + DTYPE_TOOLTIP})  # fmt: skip
        return {"required": {"file": (files, {"tooltip": tooltip}), "weight_dtype": dtype}}

    def load(self, file: str, weight_dtype: str = "auto"):
        path = self._resolve(file)
        if text_architecture(str(read_metadata(path).get("general.architecture", ""))):
            unused = f"{file} holds a text encoder: connect the text_encoder output of {self.DISPLAY_NAME}, not model."
            return (bridge.blocked(unused), load_text_encoder(path, weight_dtype))
        unused = f"{file} holds a diffusion transformer: connect the model output of {self.DISPLAY_NAME}."
        return (load_diffusion_model(path, weight_dtype), bridge.blocked(unused))

    def _resolve(self, file: str) -> str:
        for key in self.FOLDERS:  # only .gguf files the dropdown lists (no path traversal)
            if file in bridge.list_files(key, {".gguf"}):
                return bridge.resolve_file(key, file)
        raise ValueError(f"'{file}' is not a .gguf file in the diffusion model or text encoder folders: pick one from "
                         "the list.")  # fmt: skip
