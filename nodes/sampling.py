"""Text encoding and sampling nodes."""

from __future__ import annotations

import torch

import lumina_core
from lumina_core.sampling import SCHEDULES, SOLVERS, check_settings
from lumina_core.text.prompts import SYSTEM_PROMPTS

from . import comfy_bridge as bridge
from .handles import Handle

CATEGORY = "Lumina"
SIZE_MULTIPLE = 16  # 8x VAE downscale x patch 2 (Lumina-Image 2.0); the model re-checks its own rule


class GemmaEncode:
    DISPLAY_NAME = "Gemma Encode (Lumina)"
    DESCRIPTION = ("Encodes a prompt with Lumina-Image 2.0's system prompt template. An empty prompt is encoded "
                   "as '' without a template, as the original code does for negative prompts.")  # fmt: skip
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LUMINA_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("LUMINA_TEXT_ENCODER", {"tooltip": "From Load Gemma-2 Text Encoder."}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Long, detailed prompts work best."}),
            "system_prompt": (list(SYSTEM_PROMPTS), {
                "default": "real", "tooltip": "The original sample.py presets; 'real' is its default."}),
        }}  # fmt: skip

    def encode(self, text_encoder: Handle, prompt: str, system_prompt: str):
        with text_encoder.placed() as encoder:
            conditioning = encoder.encode([prompt], system_prompt=system_prompt, negative=not prompt.strip())
        return (conditioning.to(bridge.intermediate_device()),)


class FlowSampler:
    DISPLAY_NAME = "Flow Sampler (Lumina)"
    DESCRIPTION = ("Flow-matching sampler with Lumina-Image 2.0's CFG truncation and renormalisation (original "
                   "semantics). Outputs a standard LATENT that core VAE Decode nodes accept.")  # fmt: skip
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("LUMINA_MODEL", {"tooltip": "From Load Lumina Transformer."}),
                "positive": ("LUMINA_CONDITIONING", {"tooltip": "What to draw: a Gemma Encode of your prompt."}),
                "negative": ("LUMINA_CONDITIONING", {"tooltip": "An empty Gemma Encode gives the usual negative."}),
                "width": ("INT", {"default": 1024, "min": 16, "max": 4096, "step": SIZE_MULTIPLE,
                                  "tooltip": "Pixels, a multiple of 16; a connected latent sets the size instead."}),
                "height": ("INT", {"default": 1024, "min": 16, "max": 4096, "step": SIZE_MULTIPLE,
                                   "tooltip": "Pixels, a multiple of 16; a connected latent sets the size instead."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Images per run."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Noise is drawn on the CPU: a seed gives the same image on any device."}),
                "steps": ("INT", {"default": 18, "min": 1, "max": 500,
                                  "tooltip": "Solver steps ending at sigma 0; the reference recipe is 18 midpoint."}),
                "cfg": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Guidance scale; 1 turns guidance (and the uncond pass) off."}),
                "shift": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip":
                                    "Schedule shift. 6 is the model's (18 midpoint or 30 euler steps); use less "
                                    "for very few steps (e.g. 3 for 20 euler steps)."}),
                "solver": (sorted(SOLVERS), {"default": "midpoint", "tooltip":
                           "Model calls per step: euler 1, midpoint 2, heun 2 (1 on the last), rk4 4."}),
                "schedule": (sorted(SCHEDULES), {"default": "shifted_linear",
                                                 "tooltip": "shifted_linear: the Lumina / SD3 time shift."}),
                "cfg_trunc": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                              "Guide while Lumina time t = 1 - sigma is below this; after, the uncond pass is "
                              "skipped (faster). 1 = always guide; the official demo uses 0.25."}),
                "cfg_renorm": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip":
                               "Clamp the guided velocity's norm to this times the conditional one; 0 = off."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                      "tooltip": "Below 1, start from the input latent (img2img)."}),
            },
            "optional": {"latent": ("LATENT", {"tooltip": "Start latent for denoise < 1; sets the size."})},
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

    def sample(self, model: Handle, positive, negative, width, height, batch_size, seed, steps, cfg, shift, solver,
               schedule, cfg_trunc, cfg_renorm, denoise, latent=None):  # fmt: skip
        check_settings(steps=steps, cfg=cfg, batch_size=batch_size, solver=solver, schedule=schedule, shift=shift,
                       denoise=denoise, cfg_trunc=cfg_trunc, renorm_cfg=cfg_renorm)  # fmt: skip
        _check_pair(model, positive, negative)
        # With denoise 1 the start is pure noise and the input latent only sets the size.
        init = None if latent is None else _to_model_space(latent["samples"], model.model)
        progress = bridge.Progress(steps)
        previewer = bridge.latent_previewer(model.model)

        def on_step(i, total, x, denoised):
            bridge.check_interrupted()
            progress.step(i + 1, previewer(denoised) if previewer else None)

        try:
            with model.placed() as module:
                samples = lumina_core.sample(
                    module, positive, negative, width=width, height=height, batch_size=batch_size, seed=seed,
                    steps=steps, cfg=cfg, shift=shift, solver=solver, schedule=schedule, cfg_trunc=cfg_trunc,
                    renorm_cfg=cfg_renorm, denoise=denoise, init_latent=init, callback=on_step,
                )  # fmt: skip
        finally:
            progress.close()
        return ({"samples": _to_vae_space(samples, model.model).to(bridge.intermediate_device())},)


def out_of_range(specs: dict, values: dict) -> str | None:
    """The first value outside its INPUT_TYPES min/max, as a message; None if all are in range."""
    for name, value in values.items():
        options = specs[name][1]
        low, high = options.get("min"), options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{name} {value} is outside {low}..{high}."
    return None


def _check_pair(model: Handle, positive, negative) -> None:
    width = model.model.config.cap_feat_dim
    for name, conditioning in (("positive", positive), ("negative", negative)):
        if conditioning.embeds.shape[-1] != width:
            raise lumina_core.InvalidInputError(
                f"the {name} conditioning has width {conditioning.embeds.shape[-1]} but this {model.family} model "
                f"expects {width}: encode it with the text encoder made for this model."
            )


def _to_model_space(samples: torch.Tensor, model) -> torch.Tensor:
    return (samples.float() - model.latent_shift) * model.latent_scale


def _to_vae_space(samples: torch.Tensor, model) -> torch.Tensor:
    return samples / model.latent_scale + model.latent_shift
