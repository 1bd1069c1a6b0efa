"""Prompt to pictures or video from checkpoint files, one model in memory at a time (text encoder, DiT, VAE).

This is what the CLI and the demo run; ComfyUI users wire the same steps as nodes.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
from PIL import Image

from .conditioning import Conditioning
from .errors import InvalidInputError
from .loading.transformer import inspect_transformer, load_transformer
from .loading.upsampler import load_latent_upsampler
from .lora import apply_loras, load_lora
from .media import read_frames
from .models.ltxv import DEFAULT_FRAME_RATE
from .multiscale import MultiscaleRecipe, multiscale_sample, tone_map
from .outputs import to_pil
from .sampling import check_settings, sample
from .sampling.memory import check_memory
from .sampling.recipes import named_recipe
from .text import load_text_encoder
from .vae import VideoGuide, encode_conditions, encode_video, load_vae
from .vae.load import is_video_vae
from .vae.ltx_video import DEFAULT_DECODE_NOISE_SCALE, DEFAULT_DECODE_TIMESTEP
from .validation import check_float, check_int

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class ImageRequest:
    """Everything `text_to_image` needs; defaults follow `lumina_core.sample`, and None takes the recipe's value:
    `recipe` names a row of `lumina_core.sampling.recipes.RECIPES` (e.g. "zimage_base"), None the model family's
    default. system_prompt applies to Lumina-Image 2.0 only (Lumina-Next and Z-Image have no template).
    model_options: the model's own keywords (Lumina-Next's rope_scaling, context_drop_ratio...). tokenizer: a
    tokenizer folder or file for a single-file text encoder without one beside it (T5, Qwen3). loras: (LoRA file,
    strength) pairs applied to the transformer, in order (`lumina_core.lora.apply_loras`).
    compile, cache: `sample`'s torch.compile switch and step-cache (TeaCache) threshold (None: off)."""

    prompt: str
    negative_prompt: str = ""
    system_prompt: str = "real"
    width: int = 1024
    height: int = 1024
    batch_size: int = 1
    seed: int = 0
    steps: int | None = None
    cfg: float | None = None
    shift: float | None = None
    solver: str = "euler"
    schedule: str | None = None
    cfg_trunc: float = 1.0
    renorm_cfg: float | None = None
    model_options: dict | None = None
    compile: bool = False
    cache: float | None = None
    recipe: str | None = None
    tokenizer: str | None = None
    loras: tuple[tuple[str | os.PathLike, float], ...] = ()

    def for_family(self, family: str) -> ImageRequest:
        """A copy with the settings left None filled in from the recipe (by default the family's own)."""
        recipe = named_recipe(self.recipe, family)  # also a distilled recipe's sigmas and tone map, read when sampling
        settings = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in recipe.items() if k in settings and getattr(self, k) is None})


@dataclass(frozen=True)
class GuideFile:
    """An image or video file to condition a video on (`VideoRequest.conditions`): its first frame goes to pixel
    frame `frame_index` of the output (negative: from the end), kept at `strength` (1 = exactly)."""

    path: str
    frame_index: int = 0
    strength: float = 1.0


@dataclass
class VideoRequest(ImageRequest):
    """An ImageRequest for a video model (LTX-Video): 768x512, 97 frames at 25 fps by default.

    max_tokens: the T5 prompt length (128 as diffusers' pipeline, up to 256). decode_timestep and
    decode_noise_scale: the timestep-conditioned VAE's decode settings (0.9.1 and later), seeded by `seed`.
    A recipe with fixed sigmas (a distilled model's, e.g. "ltxv-0.9.8-distilled") replaces steps / schedule /
    shift with them, and its tone map, if any, is applied to the result.
    conditions: images or clips at frames (keyframes, first and last frame); condition_noise_scale: the original
    inference's re-noising of kept frames (0.15 there; 0 = off). input_video + denoise: video-to-video from that
    file's first `frames` frames. upsampler: an LTX latent upsampler file, which turns the run into the multi-scale
    recipe (`multiscale.py`): the settings above for the small pass, then refine_recipe, or refine_steps at
    refine_denoise, for the second.
    """

    width: int = 768
    height: int = 512
    frames: int = 97
    frame_rate: float = DEFAULT_FRAME_RATE
    max_tokens: int = 128
    decode_timestep: float = DEFAULT_DECODE_TIMESTEP
    decode_noise_scale: float = DEFAULT_DECODE_NOISE_SCALE
    conditions: tuple[GuideFile, ...] = ()
    condition_noise_scale: float = 0.15
    input_video: str | None = None
    denoise: float = 1.0
    upsampler: str | None = None
    refine_recipe: str | None = None
    refine_steps: int = 10
    refine_denoise: float = 0.4


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' is the first CUDA device if there is one, else the CPU; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidInputError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(
            f"--device {name} asked for, but this torch has no CUDA device; use --device cpu or auto."
        )
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        raise InvalidInputError(
            f"--device {name} asked for, but this machine has {count} CUDA device(s); use cuda:0 to cuda:{count - 1}."
        )
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on GPUs that support it and fp32 elsewhere: Lumina-Image 2.0 overflows in fp16."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name not in DTYPES:
        raise InvalidInputError(f"dtype {name!r} is not one of auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def text_to_image(
    transformer: str | os.PathLike,
    text_encoder: str | os.PathLike,
    vae: str | os.PathLike,
    request: ImageRequest,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_step: Callable[[int, int], None] | None = None,
) -> list[Image.Image]:
    """Run the whole text-to-image pipeline; the three paths may name the same all-in-one file.

    Sizes are checked against the transformer's rule before any weights are read, and each model is
    released before the next one loads, so peak memory is that of the largest model.
    """
    return to_pil(_generate(transformer, text_encoder, vae, request, device, dtype, on_step, video=False))


def text_to_video(
    transformer: str | os.PathLike,
    text_encoder: str | os.PathLike,
    vae: str | os.PathLike,
    request: VideoRequest,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The text-to-video pipeline (LTX-Video); returns frames (B, 3, T, H, W) in [0, 1], e.g. for `save_videos`."""
    return _generate(transformer, text_encoder, vae, request, device, dtype, on_step, video=True)


def check_request(request: ImageRequest) -> None:
    """Raise InvalidInputError for any setting of the request that a run would refuse, before any file is read.

    Settings left None (the family's defaults) are accepted; the sizes' model-specific rules need the model.
    """
    video = isinstance(request, VideoRequest)
    check_settings(
        steps=request.steps, cfg=request.cfg, batch_size=request.batch_size, solver=request.solver,
        schedule=request.schedule, shift=request.shift, cfg_trunc=request.cfg_trunc, renorm_cfg=request.renorm_cfg,
        seed=request.seed, width=request.width, height=request.height, frames=request.frames if video else None,
        model_options={**(request.model_options or {}), **({"frame_rate": request.frame_rate} if video else {})},
        cache=request.cache,
    )  # fmt: skip
    if video:
        check_int("max_tokens", request.max_tokens, 1, rule="the T5 prompt length, 128 to 256")
        check_float("decode_timestep", request.decode_timestep, 0.0, 1.0, rule="the timestep VAEs 0.9.1+ decode at")
        check_float("decode_noise_scale", request.decode_noise_scale, 0.0, 1.0, rule="noise mixed into the latent "
                    "before a 0.9.1+ decode")  # fmt: skip
        _check_video_settings(request)


def _check_video_settings(request: VideoRequest) -> None:
    """Conditions, video-to-video and multi-scale numbers are in range; the second pass's recipe exists."""
    if request.refine_recipe is not None:
        named_recipe(request.refine_recipe, "ltxv")
    for number, guide in enumerate(request.conditions, start=1):
        check_int(f"condition {number}'s frame", guide.frame_index, rule="a pixel frame of the video; negative from "
                  "the end")  # fmt: skip
        check_float(f"condition {number}'s strength", guide.strength, 0.0, 1.0, rule="1 keeps it exactly")
    check_float("condition_noise_scale", request.condition_noise_scale, 0.0, rule="re-noising of kept frames; 0 = off")
    check_float("denoise", request.denoise, 0.0, 1.0, low_open=True, rule="how much of the input video changes")
    check_int("refine_steps", request.refine_steps, 1, rule="the multi-scale second pass's steps")
    check_float("refine_denoise", request.refine_denoise, 0.0, 1.0, low_open=True, rule="the multi-scale second "
                "pass's denoise")  # fmt: skip


def _generate(transformer, text_encoder, vae, request, device, dtype, on_step, video: bool) -> torch.Tensor:
    check_request(request)
    model = inspect_transformer(transformer)
    is_video = getattr(model, "is_video", False)
    if is_video != video:
        wanted, other = ("text_to_video", "a video") if is_video else ("text_to_image", "an image")
        raise InvalidInputError(f"{transformer} holds {other} model ({model.family}): use {wanted}.")
    request = request.for_family(model.family)
    check_request(request)
    video_options = {"frame_rate": request.frame_rate} if is_video else {}
    shape = model.latent_shape(request.batch_size, request.height, request.width, **_frames(request, is_video),
                               **video_options)  # fmt: skip
    weights = sum(p.numel() for p in model.parameters()) * torch.empty((), dtype=dtype).element_size()
    check_memory(model, shape, request.cfg != 1.0, dtype, torch.device(device), extra_bytes=weights)
    if is_video:
        _check_video_files(request)
    _check_vae(vae, is_video)
    loras = [(load_lora(path), strength) for path, strength in request.loras]  # unreadable files fail now
    positive, negative = _encode(text_encoder, request, dtype, device)
    _free_memory()
    if is_video:
        latent = _sample_video(transformer, loras, vae, positive, negative, request, dtype, device, on_step,
                               model.family)  # fmt: skip
    else:
        latent = _sample(transformer, loras, positive, negative, request, dtype, device, on_step)
    _free_memory()
    decoded = _decode(vae, latent, request, dtype, device, is_video)
    _free_memory()
    return decoded


def _check_video_files(request: VideoRequest) -> None:
    """Before any model loads: the condition and input files read as images or videos."""
    for path in (*(g.path for g in request.conditions), *([request.input_video] if request.input_video else [])):
        read_frames(path, max_frames=1)


def _frames(request: ImageRequest, is_video: bool) -> dict:
    return {"frames": request.frames} if is_video else {}


def _encode(path, request: ImageRequest, dtype, device) -> tuple[Conditioning, Conditioning | None]:
    tokenizer = {"tokenizer": request.tokenizer} if request.tokenizer else {}
    encoder = load_text_encoder(path, dtype=dtype, device=device, **tokenizer)
    if encoder.family == "ltxv":
        return tuple(
            encoder.encode([text], max_tokens=request.max_tokens) for text in (request.prompt, request.negative_prompt)
        )
    template = request.system_prompt if encoder.family == "lumina2" else None
    positive = encoder.encode([request.prompt], system_prompt=template)
    if request.cfg == 1.0:  # no guidance (Z-Image-Turbo's recipe): the negative prompt is never used
        return positive, None
    negative = encoder.encode([request.negative_prompt], system_prompt=template, negative=True)
    return positive, negative


def _sample(path, loras, positive, negative, request: ImageRequest, dtype, device, on_step) -> torch.Tensor:
    """Sample an image with the transformer and its LoRAs (LoRA, strength pairs)."""
    # The freshly loaded model serves this run only: side paths, not merged copies kept beside the base's weights.
    model = apply_loras(load_transformer(path, dtype=dtype, device=device), loras, merge=False)
    callback = None if on_step is None else (lambda i, total, x, denoised: on_step(i + 1, total))
    options = dict(request.model_options or {})
    return sample(
        model, positive, negative, width=request.width, height=request.height, batch_size=request.batch_size,
        seed=request.seed, steps=request.steps, cfg=request.cfg, shift=request.shift, solver=request.solver,
        schedule=request.schedule, cfg_trunc=request.cfg_trunc, renorm_cfg=request.renorm_cfg, callback=callback,
        model_options=options, compile=request.compile, cache=request.cache,
    )  # fmt: skip


def _sample_video(
    transformer, loras, vae_path, positive, negative, request: VideoRequest, dtype, device, on_step, family
):
    """Sample a video: plain, from conditions and an input video, or as the multi-scale recipe. The VAE is loaded
    only when the run encodes something, and stays beside the transformer only for the multi-scale recipe (it
    encodes the conditions again at the larger size)."""
    if request.upsampler and request.input_video:
        raise InvalidInputError(
            "video-to-video (an input video) and the multi-scale recipe (an upsampler) do not combine: run one, "
            "then the other."
        )
    recipe = named_recipe(request.recipe, family)
    guides = [VideoGuide(_as_media(read_frames(g.path)), g.frame_index, g.strength) for g in request.conditions]
    needs_vae = guides or request.input_video or request.upsampler
    vae = load_vae(vae_path, dtype=dtype, device=device) if needs_vae else None
    first = _pass_schedule(request, recipe, request.cfg)
    options = _sample_options(request, on_step)
    with torch.no_grad():
        if request.input_video:
            frames = read_frames(request.input_video, max_frames=request.frames).transpose(0, 1)[None]
            options["init_latent"] = encode_video(vae, frames, request.height, request.width, request.input_video)
            options["denoise"] = request.denoise
        if request.upsampler is None and guides:
            options["conditions"] = encode_conditions(vae, guides, request.height, request.width)
    if request.upsampler is None:
        vae = None
        _free_memory()
    model = apply_loras(load_transformer(transformer, dtype=dtype, device=device), loras, merge=False)  # as _sample
    if request.upsampler is None:
        latent = sample(model, positive, negative, width=request.width, height=request.height, frames=request.frames,
                        **first, **options)  # fmt: skip
        return tone_map(latent, recipe["tone_map"]) if recipe.get("tone_map") else latent
    if request.refine_recipe:
        refine = named_recipe(request.refine_recipe, family)
        second, finish = _pass_schedule(request, refine, refine["cfg"]), refine.get("tone_map", 0.0)
    else:
        second = {"steps": request.refine_steps, "denoise": request.refine_denoise, "schedule": request.schedule,
                  "shift": request.shift, "cfg": request.cfg}  # fmt: skip
        finish = 0.0
    plan = MultiscaleRecipe(first_pass=first, second_pass=second, tone_map=finish)
    upsampler = load_latent_upsampler(request.upsampler, dtype=dtype, device=device)
    return multiscale_sample(model, upsampler, vae, positive, negative, width=request.width, height=request.height,
                             frames=request.frames, guides=guides, recipe=plan, **options)  # fmt: skip


def _pass_schedule(request: VideoRequest, recipe: dict, cfg: float) -> dict:
    """`sample` keywords for one pass's schedule and guidance: a recipe's fixed sigmas, else the request's steps,
    schedule and shift."""
    if recipe.get("sigmas") is None:
        return {"steps": request.steps, "schedule": request.schedule, "shift": request.shift, "cfg": cfg}
    return {"sigmas": recipe["sigmas"], "cfg": cfg}


def _sample_options(request: VideoRequest, on_step) -> dict:
    """`sample` keywords every pass of a video run shares."""
    return dict(
        batch_size=request.batch_size, seed=request.seed, solver=request.solver, cfg_trunc=request.cfg_trunc,
        renorm_cfg=request.renorm_cfg, condition_noise_scale=request.condition_noise_scale,
        compile=request.compile, cache=request.cache,
        callback=None if on_step is None else (lambda i, total, x, denoised: on_step(i + 1, total)),
        model_options={"frame_rate": request.frame_rate, **(request.model_options or {})},
    )  # fmt: skip


def _as_media(frames: torch.Tensor) -> torch.Tensor:
    """read_frames' (T, 3, H, W) as a guide: an image (1, 3, H, W) for one frame, else a clip (1, 3, T, H, W)."""
    return frames if len(frames) == 1 else frames.transpose(0, 1)[None]


def _check_vae(path, is_video: bool) -> None:
    """Before anything runs: a video model needs LTX-Video's video VAE, an image model an image VAE."""
    if is_video_vae(path) != is_video:
        needed = "LTX-Video's video VAE (its file's vae.* part)" if is_video else "its image VAE"
        found = "an image VAE" if is_video else "LTX-Video's video VAE"
        raise InvalidInputError(f"{path} holds {found}; this model needs {needed}.")


def _decode(path, latent: torch.Tensor, request: ImageRequest, dtype, device, is_video) -> torch.Tensor:
    vae = load_vae(path, dtype=dtype, device=device)
    with torch.inference_mode():
        if not is_video:
            return vae.decode(latent)
        return vae.decode(latent, timestep=request.decode_timestep, noise_scale=request.decode_noise_scale,
                          seed=request.seed)  # fmt: skip


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
