"""Everything the nodes need from ComfyUI, behind guarded imports, with plain-Python fallbacks.

Inside ComfyUI: model folders come from `folder_paths`, progress and cancel from `comfy.utils` /
`comfy.model_management`, devices and memory from `comfy.model_management`. Outside it (tests, the
API-workflow runner): folders come from `LUMINA_MODEL_DIRS` / `register_folder`, progress goes to
tqdm, and everything runs on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

try:  # ComfyUI is present only when the pack runs inside it
    import comfy.model_management as model_management
    import comfy.utils as comfy_utils
    import folder_paths
except ImportError:
    model_management = comfy_utils = folder_paths = None

IN_COMFYUI = folder_paths is not None

# Our folder keys -> the ComfyUI folders they list (ComfyUI maps "unet" to "diffusion_models" and
# "clip" to "text_encoders" itself). Registered under our own names so .gguf files are listed too.
# All-in-one checkpoints hold all three parts, so every key also lists the checkpoints folders.
FOLDERS = {
    "lumina_diffusion_models": ("diffusion_models", "unet", "checkpoints"),
    "lumina_text_encoders": ("text_encoders", "clip", "checkpoints"),
    "lumina_vae": ("vae", "checkpoints"),
}
EXTENSIONS = {".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt", ".gguf"}

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


def t5_tokenizer_dirs() -> list[str]:
    """Inside ComfyUI, the T5 tokenizer ComfyUI itself ships (single-file T5 checkpoints carry none)."""
    if not IN_COMFYUI:
        return []
    return [os.path.join(folder_paths.base_path, "comfy", "text_encoders", "t5_tokenizer")]


def compute_device() -> torch.device:
    return model_management.get_torch_device() if IN_COMFYUI else torch.device("cpu")


def offload_device() -> torch.device:
    return model_management.unet_offload_device() if IN_COMFYUI else torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where outputs (latents, images) live between nodes."""
    return model_management.intermediate_device() if IN_COMFYUI else torch.device("cpu")


def supports_bf16(device: torch.device) -> bool:
    if IN_COMFYUI:
        return model_management.should_use_bf16(device)
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def make_room(bytes_needed: int, device: torch.device) -> None:
    """Ask ComfyUI to unload its own models until `bytes_needed` fit on `device`."""
    if IN_COMFYUI and device.type != "cpu":
        model_management.free_memory(bytes_needed, device)


def empty_cache() -> None:
    if IN_COMFYUI:
        model_management.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


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


def latent_previewer(model):
    """A function denoised-latent -> preview for ComfyUI's progress bar, honouring --preview-method; or None.

    Uses ComfyUI's own previewers (TAESD or its latent-to-RGB factors) for the latent format the model
    works in; the denoised latent the sampler reports is already in that (normalised) space.
    """
    if not IN_COMFYUI:
        return None
    import comfy.latent_formats
    import latent_preview

    formats = {"lumina2": comfy.latent_formats.Flux, "lumina_next": comfy.latent_formats.SDXL,
               "ltxv": comfy.latent_formats.LTXV}  # fmt: skip
    latent_format = formats.get(model.family)
    previewer = latent_format and latent_preview.get_previewer(compute_device(), latent_format())
    if previewer is None:
        return None
    return lambda denoised: previewer.decode_latent_to_preview_image("JPEG", denoised[:1].float())
