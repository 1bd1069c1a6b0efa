"""Everything the nodes need from ComfyUI, behind guarded imports, with plain-Python fallbacks.

Inside ComfyUI: model folders come from `folder_paths`; every model the nodes load is wrapped in ComfyUI's
`ModelPatcher` with ComfyUI's devices for its kind and built with ComfyUI's cast layers (`comfy.ops`, chosen as
its own loaders choose them), and `comfy.model_management.load_models_gpu` places it before it runs, fully or
partially as ComfyUI decides; so ComfyUI's --lowvram / --novram / --highvram / --gpu-only / --reserve-vram /
--cpu flags, "Unload models" and `POST /free` apply to it as to ComfyUI's own models. Progress and cancel come from
`comfy.utils` / `comfy.model_management`. Outside ComfyUI (tests, the API-workflow runner): folders come from
`LUMINA_MODEL_DIRS` / `register_folder`, progress goes to tqdm, and everything runs on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..lumina_core.errors import InvalidInputError
from ..lumina_core.gguf.quantized import QuantizedLinear

try:  # ComfyUI is present only when the pack runs inside it
    import comfy.lora as comfy_lora
    import comfy.lora_convert as comfy_lora_convert
    import comfy.model_management as model_management
    import comfy.model_patcher as model_patcher
    import comfy.ops as comfy_ops
    import comfy.utils as comfy_utils
    import comfy.weight_adapter as comfy_weight_adapter
    import folder_paths
except ImportError:
    model_management = model_patcher = comfy_ops = comfy_utils = folder_paths = None
    comfy_lora = comfy_lora_convert = comfy_weight_adapter = None
try:  # graph_utils since 2025; comfy_execution.graph before
    from comfy_execution.graph_utils import ExecutionBlocker
except ImportError:
    try:
        from comfy_execution.graph import ExecutionBlocker
    except ImportError:
        ExecutionBlocker = None

IN_COMFYUI = folder_paths is not None

# Our folder keys -> the ComfyUI folders they list (ComfyUI maps "unet" to "diffusion_models" and
# "clip" to "text_encoders" itself). Registered under our own names so .gguf files are listed too.
# All-in-one checkpoints hold all three parts, so every key also lists the checkpoints folders.
FOLDERS = {
    "lumina_diffusion_models": ("diffusion_models", "unet", "checkpoints"),
    "lumina_text_encoders": ("text_encoders", "clip", "checkpoints"),
    "lumina_vae": ("vae", "checkpoints"),
    # ComfyUI's folder for latent upscalers since late 2025; older versions have none (models/<name> then).
    "lumina_latent_upsamplers": ("latent_upscale_models", "upscale_models"),
}
EXTENSIONS = {".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt", ".gguf"}
# What the diffusion models compute in, as ComfyUI's model configs list it for Lumina 2 and LTX-Video: fp16
# overflows on Lumina-Image 2.0.
DIFFUSION_DTYPES = [torch.bfloat16, torch.float32]
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

_standalone_folders: dict[str, list[str]] = {}


def register_folders() -> None:
    """Make our folder keys known to ComfyUI, reusing the directories of its own keys."""
    if not IN_COMFYUI:
        return
    for key, sources in FOLDERS.items():
        directories = []
        for source in sources:
            if source in folder_paths.folder_names_and_paths:
                directories += folder_paths.folder_names_and_paths[source][0]
            else:  # a folder this ComfyUI does not know yet
                directories.append(os.path.join(folder_paths.models_dir, source))
        folder_paths.folder_names_and_paths[key] = (list(dict.fromkeys(directories)), set(EXTENSIONS))


def register_folder(key: str, directory: str | os.PathLike) -> None:
    """Outside ComfyUI: add a directory to one of our folder keys (tests and headless runs)."""
    _standalone_folders.setdefault(key, []).append(os.fspath(directory))


def _standalone_directories(key: str) -> list[str]:
    from_env = [d for d in os.environ.get("LUMINA_MODEL_DIRS", "").split(os.pathsep) if d]
    return _standalone_folders.get(key, []) + from_env


def list_files(key: str, extensions: set[str] | None = None) -> list[str]:
    """File names (relative to their model folder) the dropdown for `key` offers."""
    extensions = extensions or EXTENSIONS
    if IN_COMFYUI:
        names = folder_paths.get_filename_list(key)
    else:
        names = []
        for directory in _standalone_directories(key):
            root = Path(directory)
            names += [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return sorted(n for n in set(names) if Path(n).suffix.lower() in extensions)


def resolve_file(key: str, name: str) -> str:
    """The full path of a dropdown entry; anything the dropdown does not list is refused (no path traversal)."""
    if name not in list_files(key):
        raise ValueError(f"'{name}' is not in the {key.removeprefix('lumina_')} folders: pick a file from the list.")
    if IN_COMFYUI:
        return folder_paths.get_full_path_or_raise(key, name)
    for directory in _standalone_directories(key):
        candidate = Path(directory) / name
        if candidate.is_file():
            return str(candidate)
    raise ValueError(f"'{name}' vanished from the {key} folders.")


def bundled_tokenizer_dirs() -> list[str]:
    """Inside ComfyUI, the tokenizers ComfyUI itself ships for the single-file text encoders that carry none: T5's
    and Qwen's (`qwen25_tokenizer`, which its own Z-Image encoder uses for Qwen3-4B). Each loader takes the one
    of its kind."""
    if not IN_COMFYUI:
        return []
    # They sit in ComfyUI's source tree, next to comfy/model_management.py (folder_paths.base_path may be another
    # --base-directory, and `comfy` itself is a namespace package without a file).
    folder = os.path.join(os.path.dirname(os.path.abspath(model_management.__file__)), "text_encoders")
    return [os.path.join(folder, "t5_tokenizer"), os.path.join(folder, "qwen25_tokenizer")]


# ---- devices, precision and layers, per kind of model ----

_DEVICE_FUNCTIONS = {  # kind -> ComfyUI's (load device, offload device) functions for it
    "diffusion": ("get_torch_device", "unet_offload_device"),
    "text_encoder": ("text_encoder_device", "text_encoder_offload_device"),
    "vae": ("vae_device", "vae_offload_device"),
}


def devices(kind: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) ComfyUI gives a model of this kind; the CPU twice outside ComfyUI."""
    if not IN_COMFYUI:
        return torch.device("cpu"), torch.device("cpu")
    load, offload = _DEVICE_FUNCTIONS[kind]
    return getattr(model_management, load)(), getattr(model_management, offload)()


@dataclass(frozen=True)
class Precision:
    """What a loader passes to the core: storage dtype (None: as stored), compute dtype and layer namespace
    (None: the core's own choice)."""

    storage: torch.dtype | None
    compute: torch.dtype | None
    operations: object = None

    def loader_options(self) -> dict:
        return {"dtype": self.storage, "compute_dtype": self.compute, "operations": self.operations}


def diffusion_precision(
    choice: torch.dtype | None, stored: torch.dtype, parameters: int, scaled_fp8: torch.dtype | None
) -> Precision:
    """A diffusion model's precision, as ComfyUI's own diffusion-model loader picks it.

    choice: the weight dtype asked for, None for auto (ComfyUI's `unet_dtype`: bf16 where the device computes in
    it, the file's fp8 kept where memory is short or fp8 compute exists; ComfyUI's --bf16-unet, --fp8_e4m3fn-unet
    ... flags decide first). The compute dtype is ComfyUI's `unet_manual_cast` of it, the layers its
    `pick_operations` (scaled-fp8 files keep their fp8 weights with ComfyUI's scaled layers).
    """
    if not IN_COMFYUI:
        storage = choice or torch.float32
        return Precision(storage, torch.bfloat16 if storage in FP8_DTYPES else storage)
    load_device = devices("diffusion")[0]
    mm = model_management
    storage = choice or mm.unet_dtype(
        model_params=parameters, supported_dtypes=DIFFUSION_DTYPES, weight_dtype=None if scaled_fp8 else stored
    )
    manual_cast = mm.unet_manual_cast(storage, load_device, DIFFUSION_DTYPES)
    operations = comfy_ops.pick_operations(storage, manual_cast, load_device=load_device, scaled_fp8=scaled_fp8)
    compute = manual_cast or (torch.bfloat16 if storage in FP8_DTYPES else storage)
    # Scaled-fp8 files keep their fp8 weights: ComfyUI's scaled layers multiply them by their scale_weight.
    return Precision(None if scaled_fp8 else storage, compute, _with_quantized_linear(operations))


def text_encoder_precision(choice: torch.dtype | None, scaled_fp8: torch.dtype | None) -> Precision:
    """A text encoder's precision: the stored weights kept as they are (fp8 included) unless a dtype is asked for,
    computed in bf16 where the text-encoder device supports it, else float32; inside ComfyUI with its cast layers
    (`manual_cast`, or its scaled-fp8 layers), as its own text encoders are built."""
    compute = choice if choice not in (None, *FP8_DTYPES) else _auto_compute_dtype(devices("text_encoder")[0])
    if not IN_COMFYUI:
        return Precision(choice, compute)
    if scaled_fp8 is not None:
        operations = comfy_ops.scaled_fp8_ops(fp8_matrix_mult=False, scale_input=False, override_dtype=scaled_fp8)
    else:
        operations = comfy_ops.manual_cast
    return Precision(choice, compute, _with_quantized_linear(operations))


def vae_precision() -> Precision:
    """A VAE keeps the core's choice of dtype (its stored one; fp16 and SDXL-shaped VAEs in float32, which half
    precision overflows); inside ComfyUI its layers are `comfy.ops.disable_weight_init`, as ComfyUI's own VAEs."""
    return Precision(None, None, comfy_ops.disable_weight_init if IN_COMFYUI else None)


def _auto_compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device supports it, else fp32 (fp16 overflows on Lumina-Image 2.0)."""
    if IN_COMFYUI:
        supported = device.type != "cpu" and model_management.should_use_bf16(device)
    else:
        supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if supported else torch.float32


class CooperatingQuantizedLinear(QuantizedLinear):
    """Our packed GGUF layer as ComfyUI's memory manager expects a cast layer: `comfy_cast_weights` marks it as a
    layer that computes wherever its weight sits, so a partial load may leave it on the offload device (the packed
    bytes move to the input's device in each call); ComfyUI's low-VRAM patches (`weight_function`,
    `bias_function`, which LoRAs use) are applied to the dequantized weight."""

    comfy_cast_weights = True
    weight_function: list = []  # noqa: RUF012 - ComfyUI's ModelPatcher replaces these per instance
    bias_function: list = []  # noqa: RUF012

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight(x.dtype, x.device)
        for patch in self.weight_function:
            weight = patch(weight)
        bias = None if self.bias is None else self.bias.to(x.device, x.dtype)
        if bias is not None:
            for patch in self.bias_function:
                bias = patch(bias)
        return nn.functional.linear(x, weight, bias)


def _with_quantized_linear(operations):
    """ComfyUI's layer namespace, with our packed GGUF layer in the form its memory manager cooperates with."""
    return type(operations.__name__, (operations,), {"QuantizedLinear": CooperatingQuantizedLinear})


# ---- ModelPatcher and model management ----


class LuminaTextEncoder(nn.Module):
    """What ComfyUI's ModelPatcher manages for a text encoder: transformers' model under `transformer`, since
    ModelPatcher writes a `device` attribute, which transformers' models have as a read-only property."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.transformer = module


class _Resident:
    """Outside ComfyUI: the model stays where it was loaded, on the CPU."""

    def __init__(self, module: nn.Module):
        self.model = module
        self.load_device = self.offload_device = torch.device("cpu")


def patcher(module: nn.Module, kind: str):
    """A ComfyUI ModelPatcher for `module` with the devices of its kind (a stand-in outside ComfyUI)."""
    if not IN_COMFYUI:
        return _Resident(module)
    load_device, offload_device = devices(kind)
    managed = module if "device" not in dir(type(module)) else LuminaTextEncoder(module)
    return model_patcher.ModelPatcher(managed, load_device=load_device, offload_device=offload_device)


def load_models(patchers: list, memory_required: int) -> None:
    """Let ComfyUI place these models (load_models_gpu), making room for `memory_required` bytes of activations."""
    if IN_COMFYUI:
        model_management.load_models_gpu(patchers, memory_required=memory_required)


def blocked(message: str):
    """What a node returns on an output that must not be used: ComfyUI's ExecutionBlocker (the user sees the
    message when a node reads it); outside ComfyUI an object whose every use raises the message."""
    return ExecutionBlocker(message) if ExecutionBlocker is not None else _Blocked(message)


class _Blocked:
    def __init__(self, message: str):
        self._message = message

    def __getattr__(self, name: str):
        raise InvalidInputError(self._message)


# ---- LoRA: ComfyUI's parser and weight patches ----


def read_lora(path: str) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors as ComfyUI's LoRA loader reads them (safe loading, its format conversions)."""
    return comfy_lora_convert.convert_lora(comfy_utils.load_torch_file(path, safe_load=True))


def lora_patches(state: dict[str, torch.Tensor], key_map: dict[str, object]) -> dict[object, object]:
    """ComfyUI's patches for every format it knows (LoRA, DoRA, LoHa, LoKr, GLoRA, diffs), keyed as `key_map` says:
    a state-dict key, or (key, (dim, start, length)) for a slice. Unused keys are reported by the caller, once."""
    return comfy_lora.load_lora(state, key_map, log_missing=False)


def plain_lora(patch: object) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(down (rank, in), up (out, rank), alpha / rank or 1) of a plain low-rank patch (no DoRA, no LoCon middle, no
    reshape); None for any other kind, which has to be merged into a weight."""
    if not isinstance(patch, comfy_weight_adapter.LoRAAdapter):
        return None
    up, down, alpha, middle, dora_scale, reshape = patch.weights
    if middle is not None or dora_scale is not None or reshape is not None or up.ndim != 2 or down.ndim != 2:
        return None
    return down, up, 1.0 if alpha is None else alpha / down.shape[0]


def merged(weight: torch.Tensor, key: str, patch: object, strength: float, offset) -> torch.Tensor:
    """`weight` (float32) with one of ComfyUI's patches applied at `strength` by ComfyUI's own arithmetic."""
    return comfy_lora.calculate_weight([(strength, patch, 1.0, offset, None)], weight, key)


def patched_clone(patcher, weight_patches: dict, strength: float, object_patches: dict[str, nn.Module]):
    """A clone of `patcher` with ComfyUI weight patches at `strength` and modules swapped in (object patches); the
    original patcher, and the model it shares with the clone, are left as they are."""
    clone = patcher.clone()
    clone.add_patches(weight_patches, strength)
    for name, module in object_patches.items():
        clone.add_object_patch(name, module)
    return clone


def current_module(patcher, name: str) -> nn.Module:
    """The module at `name` as the patcher will run it: its object patch if it has one."""
    return patcher.get_model_object(name)


def module_prefix(patcher, module: nn.Module) -> str:
    """The path of `module` inside the model the patcher manages, as a state-dict key prefix ("" for the model)."""
    for name, child in patcher.model.named_modules():
        if child is module:
            return f"{name}." if name else ""
    raise ValueError("the model is not inside its ModelPatcher")


# ---- where outputs live, progress, cancel, previews ----


def intermediate_device() -> torch.device:
    """Where outputs (latents, images) live between nodes."""
    return model_management.intermediate_device() if IN_COMFYUI else torch.device("cpu")


def check_interrupted() -> None:
    """Raise ComfyUI's interruption exception if the user pressed Cancel."""
    if IN_COMFYUI:
        model_management.throw_exception_if_processing_interrupted()


class Progress:
    """One step at a time, to ComfyUI's progress bar (with an optional preview) or to tqdm."""

    def __init__(self, total: int, description: str = "sampling"):
        if IN_COMFYUI:
            self._bar = comfy_utils.ProgressBar(total)
        else:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="step", desc=description, leave=False)
        self.total = total

    def step(self, done: int, preview=None) -> None:
        if IN_COMFYUI:
            self._bar.update_absolute(done, self.total, preview)
        else:
            self._bar.update(1)

    def close(self) -> None:
        if not IN_COMFYUI:
            self._bar.close()


def latent_previewer(family: str, device: torch.device):
    """A function denoised-latent -> preview for ComfyUI's progress bar, honouring --preview-method; or None.

    Uses ComfyUI's own previewers (TAESD or its latent-to-RGB factors) for the latent format the model
    works in; the denoised latent the sampler reports is already in that (normalised) space.
    """
    if not IN_COMFYUI:
        return None
    import comfy.latent_formats
    import latent_preview

    formats = {"lumina2": comfy.latent_formats.Flux, "zimage": comfy.latent_formats.Flux,
               "lumina_next": comfy.latent_formats.SDXL, "ltxv": comfy.latent_formats.LTXV}  # fmt: skip
    latent_format = formats.get(family)
    previewer = latent_format and latent_preview.get_previewer(device, latent_format())
    if previewer is None:
        return None
    return lambda denoised: previewer.decode_latent_to_preview_image("JPEG", denoised[:1].float())
