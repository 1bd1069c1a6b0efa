"""Text encoding and sampling nodes."""

from __future__ import annotations

from dataclasses import replace

import torch

from .. import lumina_core
from ..lumina_core.models.ltxv import DEFAULT_FRAME_RATE
from ..lumina_core.models.lumina_next import ROPE_SCALINGS
from ..lumina_core.multiscale import tone_map
from ..lumina_core.sampling import SCHEDULES, SOLVERS, check_settings
from ..lumina_core.sampling.memory import sampling_bytes
from ..lumina_core.sampling.recipes import RECIPES, family_defaults, named_recipe
from ..lumina_core.text.prompts import SYSTEM_PROMPTS
from ..lumina_core.vae import encode_conditions, first_frame_conditioning
from . import comfy_bridge as bridge
from .handles import Handle, decoding_memory, encoding_memory

CATEGORY = "Lumina"
SIZE_MULTIPLE = 16  # 8x VAE downscale x patch 2 (Lumina-Image 2.0); the model checks its own rule before loading
AUTO = -1.0  # shift / cfg_renorm: the family's recipe (lumina_core.sampling.recipes)


NEXT_ONLY = " Lumina-Next only; other models ignore it."
# Lumina-Next's inference options (lumina_core.models.lumina_next), optional so older graphs keep working.
NEXT_OPTIONS = {
    "rope_scaling": (["time_aware", *(s for s in ROPE_SCALINGS if s not in (None, "time_aware")), "none"], {
        "default": "time_aware", "tooltip": "Resolution extrapolation beyond 1024x1024: time_aware (the paper's: "
        "linear RoPE scaling for the early steps, NTK after the watershed), linear, ntk, or none." + NEXT_ONLY}),
    "scaling_watershed": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                          "Time-aware scaling switches from linear to NTK at this Lumina time t = 1 - sigma "
                          "(0.3 in the original demo; 1 = always linear, as diffusers)." + NEXT_ONLY}),
    "proportional_attention": ("BOOLEAN", {"default": True, "tooltip": "Scale attention by the token count so large "
                               "images keep the trained attention entropy." + NEXT_ONLY}),
    "context_drop_ratio": ("INT", {"default": 1, "min": 1, "max": 4, "tooltip": "Merge r x r windows of image "
                           "keys/values in attention: faster at high resolution, slightly softer detail; 1 = "
                           "off." + NEXT_ONLY}),
    "next_guide_first_3_channels": ("BOOLEAN", {"default": True, "tooltip": "Guide only the first 3 of the 4 "
                                    "latent channels, as the reference code does (on = identical images); off "
                                    "guides all four." + NEXT_ONLY}),
}  # fmt: skip


# Speed options, optional so older graphs keep working (lumina_core.compile, lumina_core.sampling.step_cache).
SPEED_OPTIONS = {
    "compile": ("BOOLEAN", {"default": False, "tooltip": "torch.compile the transformer (the whole forward in one "
                "graph). The first run compiles (minutes for the full models) and the model keeps the compiled "
                "code; later runs at the same size start at once, a new size compiles once more."}),
    "step_cache": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": "TeaCache: skip "
                   "the transformer's blocks while its input barely changes from step to step, reusing their last "
                   "output. 0 = off. Published thresholds: 0.2 Lumina-Image 2.0, 0.3 Lumina-Next, 0.05 LTX-Video "
                   "(about 1.5-2x faster, with the published small quality loss, not re-measured here); higher "
                   "skips more. Z-Image has no published coefficients."}),
}  # fmt: skip
VIDEO_ONLY = " Video models (LTX-Video) only; image models ignore it."
VIDEO_OPTIONS = {
    "frames": ("INT", {"default": 97, "min": 1, "max": 1025, "step": 8, "tooltip": "Frames to generate, 8k + 1 "
               "(97 is about 4 s at 25 fps); a connected latent sets the length instead." + VIDEO_ONLY}),
    "frame_rate": ("FLOAT", {"default": DEFAULT_FRAME_RATE, "min": 1.0, "max": 120.0, "step": 1.0, "tooltip":
                   "Frames per second the model is told (it shapes the motion); LTX-Video Decode passes it on to "
                   "the save node." + VIDEO_ONLY}),
}  # fmt: skip


class GemmaEncode:
    DISPLAY_NAME = "Gemma / Qwen3 Encode (Lumina, Z-Image)"
    DESCRIPTION = ("Encodes a prompt for the model its text encoder belongs to. For Lumina-Image 2.0 (Gemma-2) the "
                   "prompt gets the chosen system prompt template, and an empty prompt is encoded as '' without "
                   "one, as the original code does for negative prompts. Lumina-Next (Gemma) takes the bare "
                   "prompt; Z-Image (Qwen3-4B) takes it in Qwen3's chat template, as its pipeline does (at most 512 "
                   "tokens).")  # fmt: skip
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LUMINA_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "encode"
    SERVES = ("lumina2", "lumina_next", "zimage")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("LUMINA_TEXT_ENCODER", {"tooltip": "From Load Gemma / Qwen3 Text Encoder."}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Long, detailed prompts work best."}),
            "system_prompt": (list(SYSTEM_PROMPTS), {
                "default": "real", "tooltip": "Lumina-Image 2.0's sample.py presets; 'real' is its default. "
                                              "Ignored for Lumina-Next and Z-Image, which were trained without "
                                              "one."}),
        }}  # fmt: skip

    def encode(self, text_encoder: Handle, prompt: str, system_prompt: str):
        template = system_prompt if text_encoder.family == "lumina2" else None
        return _encode(self, text_encoder, [prompt], system_prompt=template, negative=not prompt.strip())


class T5Encode:
    DISPLAY_NAME = "T5 Encode (LTX-Video)"
    DESCRIPTION = ("Encodes a prompt with T5-XXL for LTX-Video: detailed, chronological descriptions of the motion "
                   "work best. Prompts longer than max_tokens are cut (with a warning in the console).")  # fmt: skip
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LUMINA_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "encode"
    SERVES = ("ltxv",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("LUMINA_TEXT_ENCODER", {"tooltip": "From Load T5 Text Encoder (LTX-Video)."}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Describe the scene and its motion in "
                       "order, like a shot list; the original negative prompt is 'worst quality, inconsistent "
                       "motion, blurry, jittery, distorted'."}),
            "max_tokens": ("INT", {"default": 128, "min": 128, "max": 256, "step": 8, "tooltip":
                           "128 as diffusers' LTXPipeline; up to 256, the length LTX-Video was trained with."}),
        }}  # fmt: skip

    def encode(self, text_encoder: Handle, prompt: str, max_tokens: int):
        return _encode(self, text_encoder, [prompt], max_tokens=max_tokens)


def _encode(node, text_encoder: Handle, prompts: list[str], **options) -> tuple:
    """Encode with a text encoder of one of node.SERVES, naming the right encode node for any other."""
    if text_encoder.family not in node.SERVES:
        other = next((cls for cls in (GemmaEncode, T5Encode) if text_encoder.family in cls.SERVES), None)
        where = f"encode with {other.DISPLAY_NAME} instead" if other else "no encode node of this pack takes it"
        raise lumina_core.InvalidInputError(f"this text encoder serves {text_encoder.family}: {where}.")
    tokens = getattr(text_encoder.model, "max_tokens", 256)
    device = text_encoder.load(encoding_memory(text_encoder.model, len(prompts), tokens))
    conditioning = text_encoder.model.encode(prompts, device=device, **options)
    return (conditioning.to(bridge.intermediate_device()),)


class FlowSampler:
    DISPLAY_NAME = "Flow Sampler (Lumina)"
    DESCRIPTION = ("Flow-matching sampler for every Lumina family: Lumina-Image 2.0's CFG truncation and "
                   "renormalisation (original semantics), Lumina-Next's resolution extrapolation, context drop and "
                   "few-step sigmoid schedule, Z-Image (Turbo: 8 euler steps, cfg 1, no negative needed), "
                   "LTX-Video text- and image-to-video. shift, schedule and cfg_renorm default to auto: the model "
                   "family's reference recipe. Outputs a standard LATENT (raw VAE space) that core nodes "
                   "accept.")  # fmt: skip
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("LUMINA_MODEL", {"tooltip": "From Load Lumina Transformer."}),
                "positive": ("LUMINA_CONDITIONING", {"tooltip": "What to draw: an Encode of your prompt."}),
                "width": ("INT", {"default": 1024, "min": 16, "max": 4096, "step": SIZE_MULTIPLE,
                                  "tooltip": "Pixels, a multiple of 16; a connected latent sets the size instead."}),
                "height": ("INT", {"default": 1024, "min": 16, "max": 4096, "step": SIZE_MULTIPLE,
                                   "tooltip": "Pixels, a multiple of 16; a connected latent sets the size instead."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Images per run."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Noise is drawn on the CPU: a seed gives the same image on any device."}),
                "steps": ("INT", {"default": 18, "min": 1, "max": 500,
                                  "tooltip": "Solver steps ending at sigma 0; the reference recipes: 18 midpoint "
                                             "(Lumina-Image 2.0), 8 euler (Z-Image-Turbo), 50 euler (Z-Image)."}),
                "cfg": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Guidance scale; 1 turns guidance (and the uncond pass) off, as "
                                             "Z-Image-Turbo is run. Z-Image base: 5 (diffusers' guidance_scale 4)."}),
                "shift": ("FLOAT", {"default": AUTO, "min": AUTO, "max": 100.0, "step": 0.1, "tooltip":
                                    "Schedule shift. -1 = auto, the family's: 6 for Lumina-Image 2.0, 4 for "
                                    "Lumina-Next, 3 for Z-Image (Turbo; the base model's scheduler uses 6), from "
                                    "the video's token count for LTX-Video. Less for very few steps (e.g. 3 for 20 "
                                    "euler steps on Lumina-Image 2.0); 0 = the schedule's own default."}),
                "solver": (sorted(SOLVERS), {"default": "midpoint", "tooltip":
                           "Model calls per step: euler 1, midpoint 2, heun 2 (1 on the last), rk4 4; dopri5 is "
                           "adaptive (its calls depend on the model; steps only set where previews are taken)."}),
                "schedule": (["auto", *sorted(SCHEDULES)], {"default": "auto", "tooltip":
                             "auto: the family's (ltx for LTX-Video, shifted_linear for the Lumina models). "
                             "shifted_linear: the Lumina / SD3 time shift. sigmoid: Lumina-Next's few-step "
                             "discretisation (dense at both ends), for good images in 5-10 steps. ltx: LTX-Video's "
                             "(resolution-dependent shift, stretched to end at sigma 0.1)."}),
                "cfg_trunc": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                              "Guide while Lumina time t = 1 - sigma is below this; after, the uncond pass is "
                              "skipped (faster). 1 = always guide; Lumina-Image 2.0's demo uses 0.25, "
                              "Lumina-Next's reference never truncates."}),
                "cfg_renorm": ("FLOAT", {"default": AUTO, "min": AUTO, "max": 10.0, "step": 0.05, "tooltip":
                               "Clamp the guided velocity's norm to this times the conditional one; 0 = off. "
                               "-1 = auto, the family's: 1 for Lumina-Image 2.0, 0 for Lumina-Next, Z-Image "
                               "and LTX-Video."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                      "tooltip": "Below 1, start from the input latent (img2img)."}),
            },
            "optional": {
                "negative": ("LUMINA_CONDITIONING", {"tooltip": "What to steer away from: an Encode of an empty "
                             "prompt gives the usual negative. Needed when cfg is not 1; unused (and may be left "
                             "out) at cfg 1, e.g. for Z-Image-Turbo."}),
                "latent": ("LATENT", {"tooltip": "Start latent for denoise < 1; sets the size."}),
                **NEXT_OPTIONS,
                **VIDEO_OPTIONS,
                "first_frame": ("IMAGE", {"tooltip": "Image-to-video: the video starts from this image (cropped "
                                "and resized to the video's size); needs the LTX-Video VAE below." + VIDEO_ONLY}),
                "vae": ("LUMINA_VAE", {"tooltip": "The LTX-Video VAE, to encode first_frame." + VIDEO_ONLY}),
                "first_frame_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                         "1 keeps the first frame as given; lower lets the model repaint it."
                                         + VIDEO_ONLY}),
                "guides": ("LUMINA_VIDEO_GUIDES", {"tooltip": "Images or clips at chosen frames (first, last, "
                           "keyframes) from LTX-Video Guide nodes, encoded at this sampler's size." + VIDEO_ONLY}),
                "condition_noise": ("FLOAT", {"default": 0.15, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                    "With guides: before each step the kept guide frames get this x sigma^2 of "
                                    "fresh noise (the original pipeline's 0.15; helps motion start from a still); "
                                    "0 = off." + VIDEO_ONLY}),
                "recipe": (["none", *RECIPES], {"default": "none", "tooltip": "none: the widgets above. A named "
                           "recipe of the model's family replaces steps, cfg, shift, schedule and cfg_renorm with "
                           "its own: zimage_base for Z-Image base; for a distilled LTX-Video model "
                           "ltxv-0.9.8-distilled (fixed sigmas, no guidance; one pass or the small pass) and the "
                           "-refine ones on an upsampled latent (denoise 1)."}),
                **SPEED_OPTIONS,  # last: older saved graphs keep their widget values in order
            },
        }  # fmt: skip

    @classmethod
    def VALIDATE_INPUTS(cls, width, height):
        # Only the sizes: ComfyUI skips its own min/max checks for the inputs this method takes and files the
        # message under each of them; the other settings keep ComfyUI's checks and `check_settings` below.
        problem = out_of_range(cls.INPUT_TYPES()["required"], {"width": width, "height": height})
        if problem:
            return problem
        for name, size in (("width", width), ("height", height)):
            if size % SIZE_MULTIPLE:
                nearest = max(SIZE_MULTIPLE, round(size / SIZE_MULTIPLE) * SIZE_MULTIPLE)
                return f"{name} {size} is not a multiple of {SIZE_MULTIPLE}; try {nearest}."
        return True

    def sample(self, model: Handle, positive, negative=None, *, width, height, batch_size, seed, steps, cfg, shift,
               solver, schedule, cfg_trunc, cfg_renorm, denoise, latent=None, frames=97, frame_rate=DEFAULT_FRAME_RATE,
               first_frame=None, vae=None, first_frame_strength=1.0, guides=None, condition_noise=0.15,
               recipe="none", compile=False, step_cache=0.0, **next_options):  # fmt: skip
        named = None if recipe == "none" else named_recipe(recipe, model.family)
        if named is not None:  # the recipe's settings replace the widgets; shift None is the schedule's own rule
            steps, cfg, schedule, cfg_renorm = named["steps"], named["cfg"], named["schedule"], named["renorm_cfg"]
            shift = named["shift"] or 0.0
        if negative is None and cfg != 1.0:
            raise lumina_core.InvalidInputError(
                f"cfg {cfg} guides away from a negative prompt, but none is connected: connect an Encode of an empty "
                "prompt to negative, or set cfg 1 (no guidance)."
            )
        recipe = family_defaults(model.family)
        schedule = recipe["schedule"] if schedule == "auto" else schedule
        shift = recipe["shift"] if shift < 0 else shift or None  # 0: the schedule's own default (ltx: token count)
        cfg_renorm = recipe["renorm_cfg"] if cfg_renorm < 0 else cfg_renorm
        cache = step_cache or None  # 0 = off
        check_settings(steps=steps, cfg=cfg, batch_size=batch_size, solver=solver, schedule=schedule, shift=shift,
                       denoise=denoise, cfg_trunc=cfg_trunc, renorm_cfg=cfg_renorm, seed=seed, cache=cache)  # fmt: skip
        module = model.model
        # With denoise 1 the start is pure noise and the input latent only sets the size, except where a noise
        # mask (a core image-to-video latent's, or first_frame's) keeps its tokens.
        init = None if latent is None else module.latent_format.to_model(latent["samples"])
        noise_mask = None if latent is None else latent.get("noise_mask")
        video = getattr(module, "is_video", False)
        # The size rule (LTX-Video: multiples of 32, 8k + 1 frames) is checked before any weight moves.
        shape = tuple(init.shape) if init is not None else tuple(module.latent_shape(
            batch_size, height, width, **({"frames": frames, "frame_rate": frame_rate} if video else {})))  # fmt: skip
        if first_frame is not None:
            init, noise_mask = _first_frame(model, vae, first_frame, first_frame_strength, (batch_size, *shape[1:]))
        conditions = None if guides is None else _guide_conditions(model, guides, (batch_size, *shape[1:]))
        progress = bridge.Progress(steps)
        guided = cfg != 1.0
        run_shape = _with_guide_frames((batch_size, *shape[1:]), guides)
        device = model.load(sampling_bytes(module, run_shape, guided, module.compute_dtype or torch.float32))
        previewer = bridge.latent_previewer(model.family, device)

        def on_step(i, total, x, denoised):
            progress.step(i + 1, previewer(denoised) if previewer else None)

        try:
            samples = lumina_core.sample(
                module, positive, negative, width=width, height=height, batch_size=batch_size, seed=seed,
                steps=steps, cfg=cfg, shift=shift, solver=solver, schedule=schedule, cfg_trunc=cfg_trunc,
                renorm_cfg=cfg_renorm, denoise=denoise, init_latent=init, noise_mask=noise_mask, callback=on_step,
                interrupt=bridge.check_interrupted,  # Cancel between blocks; model.load made room already
                device=device, sigmas=named.get("sigmas") if named else None, conditions=conditions,
                condition_noise_scale=condition_noise if conditions else 0.0, compile=compile, cache=cache,
                **_family_options(model.family, next_options), **_video_options(module, frames, frame_rate),
            )  # fmt: skip
        finally:
            progress.close()
        if named and named.get("tone_map"):
            samples = tone_map(samples, named["tone_map"])
        out = {"samples": module.latent_format.to_raw(samples).to(bridge.intermediate_device())}
        if video:
            out["frame_rate"] = frame_rate  # read by LTX-Video Decode, which hands it to the save node
        return (out,)


def out_of_range(specs: dict, values: dict) -> str | None:
    """The first value outside its INPUT_TYPES min/max, as a message; None if all are in range."""
    for name, value in values.items():
        options = specs[name][1]
        low, high = options.get("min"), options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{name} {value} is outside {low}..{high}."
    return None


def _family_options(family: str, chosen: dict) -> dict:
    """sample() keywords from the Lumina-Next widgets: for Lumina-Next models only, every other family ignores them."""
    if family != "lumina_next":
        return {}
    options = {name: spec[1]["default"] for name, spec in NEXT_OPTIONS.items()} | chosen
    rope_scaling = None if options["rope_scaling"] == "none" else options["rope_scaling"]
    return {
        "cfg_channels": None if options["next_guide_first_3_channels"] else 4,
        "model_options": {
            "rope_scaling": rope_scaling,
            "scaling_watershed": options["scaling_watershed"],
            "proportional_attention": options["proportional_attention"],
            "context_drop_ratio": options["context_drop_ratio"],
        },
    }


def _first_frame(model: Handle, vae: Handle | None, image: torch.Tensor, strength: float, shape: tuple):
    """(init_latent, noise_mask) that keep the encoded image as the video's first frame."""
    if not getattr(model.model, "is_video", False):
        raise lumina_core.InvalidInputError("first_frame is for video models (LTX-Video); this model makes images.")
    if vae is None or vae.family != "ltxv":
        raise lumina_core.InvalidInputError("first_frame needs the LTX-Video VAE connected to the sampler's vae input.")
    device = vae.load(decoding_memory(vae.model, (shape[0], shape[1], 1, *shape[3:])))
    latent, mask = first_frame_conditioning(vae.model, image.permute(0, 3, 1, 2), shape, strength, device=device)
    return latent.cpu(), mask.cpu()


def _guide_conditions(model: Handle, guides, shape: tuple) -> list:
    """The guides encoded by their VAE at the video's size (shape: the latent's), for `sample(conditions=...)`."""
    if not getattr(model.model, "takes_keyframes", False):
        raise lumina_core.InvalidInputError("guides are for LTX-Video models; this model makes images.")
    vae = guides.vae
    batch, channels, _, height, width = shape
    longest = max(item.media.shape[2] if item.media.ndim == 5 else 1 for item in guides.items)
    device = vae.load(decoding_memory(vae.model, (batch, channels, (longest - 1) // 8 + 1, height, width)))
    ratio = vae.model.spatial_ratio
    conditions = encode_conditions(vae.model, guides.items, height * ratio, width * ratio, device=device)
    return [replace(condition, latent=condition.latent.cpu()) for condition in conditions]


def _with_guide_frames(shape: tuple, guides) -> tuple:
    """The latent shape with room for the guides' appended frames (at most 2 latent frames each), for memory."""
    if guides is None:
        return shape
    return (*shape[:2], shape[2] + 2 * len(guides.items), *shape[3:])


def _video_options(model, frames: int, frame_rate: float) -> dict:
    """sample() keywords for a video model: the frame count and the frame rate; none for image models."""
    if not getattr(model, "is_video", False):
        return {}
    return {"frames": frames, "model_options": {"frame_rate": frame_rate}}
