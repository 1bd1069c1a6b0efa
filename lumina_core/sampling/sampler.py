"""The flow-matching sampling loop shared by every model family.

A model is an nn.Module called as `model(x, sigma, context, context_mask) -> velocity`, with x (B, C, H, W) in
model space, sigma (B,) float in [0, 1] (1 = pure noise), context (B, L, D), context_mask (B, L) bool, and the
velocity v = noise - data = dx/dsigma, shaped like x. `model.latent_shape(batch_size, height, width)` gives the
latent shape for an image size and raises InvalidInputError for sizes the model cannot take.

Where the defaults follow the original Lumina-Image 2.0 code (Alpha-VLLM `NextDiT.forward_with_cfg`, `sample.py`)
rather than diffusers' Lumina2Pipeline, and why (docs/sampling.md, 'CFG truncation and renormalisation'):
  - Truncation is a threshold in Lumina time t = 1 - sigma (`cfg_trunc`): guidance covers the early, noisy part
    while t < cfg_trunc, tested at every model evaluation as the original does. diffusers instead counts a
    fraction of the steps, so its "0.25" guides the first quarter of the steps where the original's 0.25 with
    shift 6 guides about the first two thirds. Our default 1.0 never truncates, like the original's 100.
  - Renormalisation clamps: a sample whose guided velocity has an L2 norm (over C, H, W) above renorm_cfg times
    the conditional one is scaled down to it; smaller ones are left alone. This is the original rule, applied
    per sample (the original's `.item()` comparison only works for batch 1). diffusers always rescales, row by
    row along the width axis.
  - After truncation the unconditional pass is not computed at all, and before it cond and uncond run in one
    batched call (the original batches them; diffusers makes two calls).
  - Steps count intervals ending at sigma = 0, like diffusers and ComfyUI, not the original's grid points
    (its "18 midpoint steps" are 17 intervals, 34 model calls); and Heun's last step falls back to Euler as in
    ComfyUI. This keeps "steps" meaning the same thing across every sampler in the ComfyUI graph.
`cfg_mode="diffusers"` reproduces the pipeline's truncation and normalisation for parity tests.

Lumina-Next (docs/sampling.md, 'Lumina-Next guidance') differs in three ways the caller chooses:
  - Guidance on the first 3 of the 4 latent channels only (`cfg_channels`; the 4th takes the conditional
    prediction), as the original `forward_with_cfg` and diffusers' LuminaPipeline do. `cfg_channels=None` takes
    the model's own `cfg_channels` attribute (3 for Lumina-Next), else guides every channel; an int overrides it,
    and the latent's channel count switches the quirk off. Renormalisation, when on, then measures only the guided
    channels. The original Lumina-Next has no truncation and no renormalisation: pass renorm_cfg=0 (and shift 4).
  - Model keywords (RoPE scaling, proportional attention...) reach every model call through `model_options`.
  - The paper's few-step recipe: the "sigmoid" schedule with a higher-order or adaptive ("dopri5") solver.

Video models (LTX-Video; docs/sampling.md, 'LTX-Video sampling') have `is_video = True`: latents are (B, C, F, H, W),
`frames` is required (8k + 1) and reaches `model.latent_shape(batch_size, height, width, frames=frames)`, and the frame
rate is a model keyword (`model_options={"frame_rate": 25.0}`). Their reference recipe is the "ltx" schedule with
shift=None (the shift follows the latent's token count) and plain guidance: renorm_cfg=0. Cond and uncond are batched in
one call as for images; diffusers orders its batch [uncond, cond], which changes nothing because every sample is
computed on its own.

Noise masks (image-to-video; docs/sampling.md, 'Noise masks'): `sample(init_latent=..., noise_mask=...)` generates where
the mask is 1 and keeps init_latent where it is 0, for models that take one sigma per latent token
(`per_token_sigma = True`: LTX-Video). Each token runs on its own clock, sigma_token = mask·sigma, which is the
timestep ComfyUI gives its LTX model (denoise_mask·sigma):
  - the start is x = (1 - s0)·init + s0·noise with s0 = mask·sigma0, token by token;
  - the model sees every token's own sigma, so kept tokens are clean and told so (sigma 0);
  - the ODE is dx/dsigma = mask·v(x, mask·sigma), the chain rule for that clock: kept tokens have zero velocity
    and every solver leaves them bit for bit at init_latent, with no separate restoring step.
For a 0/1 mask this is diffusers' LTXImageToVideoPipeline: its start mixes the conditioning latent in where the
mask keeps it, its timestep is t·(1 - conditioning mask), and the scheduler step skips the conditioning frame.
A value m in between is a partial strength 1 - m: that token is re-noised to m·sigma0 and denoised from there,
like img2img. ComfyUI treats such values differently (it feeds the model m·x + (1 - m)·init and blends its
clean-latent estimate with init by m); the two agree for masks of 0 and 1.

Precision: x stays float32 between steps; the model sees x and the context in its own dtype (bf16 is fine) and
its velocity is cast back to float32. Sigma is passed as float32 and the model casts it where it needs to.
Checks (`lumina_core.nonfinite`): the text features before the first step, every model output and the latent after
every step; the first NaN/inf raises SamplingError saying where it was found, the model and dtype, and the likely
causes (a weight holding NaN/inf is named; float16 overflow comes first only for float16 models). Long model calls
stay interruptible: `interrupt` runs before every transformer block (`checks_between_blocks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from ..common.ops import placement
from ..compile import CompiledModel, compiled
from ..conditioning import Conditioning, check_family, concat_conditionings
from ..errors import InvalidInputError, SamplingError
from ..nonfinite import check_conditioning, count_nonfinite, dtype_name, is_finite, model_name, model_output_error
from ..validation import check_float, check_int, check_model_options, check_seed
from .cfg import CFG_MODES, Guidance, make_guidance
from .memory import check_memory
from .schedules import build_sigmas
from .solvers import SOLVERS, Dopri5, StepFn
from .step_cache import COND, COND_UNCOND, StepCache, TeaCache, make_step_cache

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass
class SamplingStats:
    """What a run of `sample` cost; pass one as `sample(..., stats=SamplingStats())` and read it afterwards.

    sample resets the fields when it starts and updates them as it goes, so they also describe a run that a
    callback cancelled.
      model_calls:    model forward calls (NFE; docs/sampling.md, 'Steps and model calls'). A cond + uncond pair batched
                      into one call counts once.
      uncond_calls:   how many of those also carried the unconditional half (each costs about twice as much).
      solver_steps:   accepted solver steps: `steps` for the fixed-step solvers, the substeps for dopri5.
      rejected_steps: substeps dopri5's error control threw away (always 0 for the fixed-step solvers).
      cached_calls:   model calls of a step-cached run (`sample(cache=...)`) that skipped the block stack and reused the
                      cached residual: the calls saved. They are included in model_calls.
    """

    model_calls: int = 0
    uncond_calls: int = 0
    solver_steps: int = 0
    rejected_steps: int = 0
    cached_calls: int = 0


class GuidedVelocity:
    """The model's velocity with classifier-free guidance, as the solvers call it (float32 in and out).

    With guidance, cond and uncond run as one model call on a doubled batch [x, x] with the prompts padded to a
    common length; once the guidance says the uncond pass is not needed, only the cond half runs. With
    `cfg_channels` = k, only channels [0, k) are guided and the others take the conditional prediction.
    `model_options` are passed as keywords to every model call; `stats` counts the calls. With a `noise_mask`
    (B, 1, *latent dims), the model gets one sigma per token, sigma·noise_mask, instead of one per sample; the
    prediction is returned as the model made it (the sampler scales it by the mask for the ODE).

    The prompts are trimmed to their longest real token once, here, and a mask without padding is passed as None,
    so the model's forward needs no host sync to find either (`model_text_inputs`). `runner` replaces the model's
    forward (a compiled one), and `cache`, a `StepCache`, makes every call go through the model's cache stages
    (`runner` then provides the stages too). `interrupt`, when given, is called before every model call.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        positive: Conditioning,
        negative: Conditioning | None,
        guidance: Guidance | None,
        dtype: torch.dtype,
        *,
        cfg_channels: int | None = None,
        model_options: dict[str, Any] | None = None,
        stats: SamplingStats | None = None,
        noise_mask: torch.Tensor | None = None,
        runner: Callable[..., torch.Tensor] | None = None,
        cache: StepCache | None = None,
        interrupt: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.runner = runner if runner is not None else model
        self.cache = cache
        self.dtype = dtype
        self.guidance = guidance if negative is not None else None
        self.positive = model_text_inputs(positive)
        self.both = None
        if self.guidance is not None:
            self.both = model_text_inputs(concat_conditionings([positive, negative]))
        self.cfg_channels = cfg_channels
        self.model_options = model_options or {}
        self.stats = stats if stats is not None else SamplingStats()
        self.noise_mask = noise_mask
        self.interrupt = interrupt

    def __call__(self, x: torch.Tensor, sigma: float, *, step: int, total: int) -> torch.Tensor:
        if self.guidance is None or not self.guidance.needs_uncond(sigma, step, total):
            cond = self.predict(x, sigma, self.positive, rows=COND, step=step, total=total)
            return self._checked(cond, sigma, step, total, "conditional call")
        self.stats.uncond_calls += 1
        both = self.predict(torch.cat([x, x]), sigma, self.both, rows=COND_UNCOND, step=step, total=total)
        both = self._checked(both, sigma, step, total, "conditional + unconditional call")
        cond, uncond = both.chunk(2)  # (2B, ...) -> 2 x (B, ...)
        k = self.cfg_channels
        if k is None:
            return self.guidance.combine(cond, uncond)
        # Lumina-Next's quirk: (B, k, ...) guided channels, then (B, C - k, ...) conditional ones
        return torch.cat([self.guidance.combine(cond[:, :k], uncond[:, :k]), cond[:, k:]], dim=1)

    def predict(
        self,
        x: torch.Tensor,
        sigma: float,
        text: tuple[torch.Tensor, torch.Tensor | None],
        *,
        rows: str = COND,
        step: int = 0,
        total: int = 1,
    ) -> torch.Tensor:
        """One model call on x at sigma with the prepared text (`model_text_inputs`); rows and step for the cache."""
        if self.interrupt is not None:
            self.interrupt()
        self.stats.model_calls += 1
        if self.noise_mask is None:
            sigmas = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)
        else:  # (B, 1, ...) per token; the cond and uncond halves of a guided batch share it
            sigmas = (sigma * self.noise_mask).repeat(x.shape[0] // self.noise_mask.shape[0], *[1] * (x.ndim - 1))
        embeds, mask = text
        if self.cache is None:
            return self.runner(x.to(self.dtype), sigmas, embeds, mask, **self.model_options).float()
        v = self.cache(
            self.runner, x.to(self.dtype), sigmas, embeds, mask, self.model_options, step=step, total=total, rows=rows
        )
        self.stats.cached_calls = self.cache.skipped
        return v.float()

    def _checked(self, v: torch.Tensor, sigma: float, step: int, total: int, passes: str) -> torch.Tensor:
        """v, or SamplingError when the model made NaN/inf (its inputs were checked before, so it is the model's)."""
        if not is_finite(v):
            where = f"at step {step + 1} of {total} (sigma {sigma:.4f})"
            raise model_output_error(self.model, v, self.dtype, where, passes)
        return v


def model_text_inputs(conditioning: Conditioning) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(embeds, mask) as the models take them: cut after the longest prompt's last real token, and the mask None when
    no row is padded (attention then runs without a mask, which its fastest kernels need).

    Both need host values (a sync on a GPU), so the sampler finds them once per run, not in every forward.
    """
    longest = int(conditioning.mask.sum(dim=1).max())
    embeds, mask = conditioning.embeds[:, :longest], conditioning.mask[:, :longest]
    return embeds, None if bool(mask.all()) else mask


def _masked_velocity(
    velocity: Callable[[torch.Tensor, float], torch.Tensor], mask: torch.Tensor, x: torch.Tensor, sigma: float
) -> torch.Tensor:
    """mask·v(x, sigma): the velocity of a token whose own sigma is mask·sigma, per unit of the shared sigma."""
    return mask * velocity(x, sigma)


def _solver_step(solver: str, atol: float, rtol: float) -> StepFn:
    """The step function for one run of the named solver."""
    if solver not in SOLVERS:
        raise InvalidInputError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}.")
    spec = SOLVERS[solver]
    return spec.adaptive(atol, rtol) if spec.adaptive is not None else spec.step


MAX_STEPS = 10_000  # far beyond any use; it keeps a mistyped 10**9 from allocating the schedule


def check_settings(
    *,
    steps: int | None,
    cfg: float | None,
    batch_size: int = 1,
    solver: str = "euler",
    schedule: str | None = "shifted_linear",
    shift: float | None = 6.0,
    denoise: float = 1.0,
    cfg_mode: str = "original",
    cfg_trunc: float = 1.0,
    renorm_cfg: float | None = 1.0,
    cfg_channels: int | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-3,
    seed: int = 0,
    width: int | None = None,
    height: int | None = None,
    frames: int | None = None,
    model_options: Mapping[str, Any] | None = None,
    cache: float | TeaCache | None = None,
) -> None:
    """Raise InvalidInputError for any setting `sample` would refuse, before a model is loaded or run.

    The one place the API (`sample` calls it first), the pipeline and CLI, and the ComfyUI nodes check settings:
    integers must be integers, floats finite and in range, each message naming the rule. steps, cfg, schedule and
    renorm_cfg None (a family default not filled in yet) and shift None (the schedule's default) are accepted.
    cfg_channels is only checked to be positive here; that it fits the latent needs the model. model_options: the
    model keywords `lumina_core.validation.check_model_options` knows.
    """
    if steps is not None:
        check_int("steps", steps, 1, MAX_STEPS, "solver steps ending at sigma 0")
    check_int("batch_size", batch_size, 1, rule="images (videos) per run")
    check_seed(seed)
    for name, size in (("width", width), ("height", height)):
        if size is not None:
            check_int(name, size, 1, rule="pixels; the model's own rule and largest size follow")
    if frames is not None:
        check_int("frames", frames, 1, rule="the frame count of a video model, 8k + 1")
    if cfg is not None:
        check_float("cfg", cfg, 0.0, rule="the guidance scale; 1 turns guidance off")
    if shift is not None:
        check_float("shift", shift, 0.0, low_open=True, rule="1 means no shift; Lumina 2 uses 6, Lumina-Next 4")
    check_float("denoise", denoise, 0.0, 1.0, low_open=True, rule="how much of the schedule runs; 1 starts from noise")
    check_float("cfg_trunc", cfg_trunc, 0.0, rule="guidance runs while Lumina time t = 1 - sigma is below it; 1 or "
                "more never truncates")  # fmt: skip
    if renorm_cfg is not None:
        check_float("renorm_cfg", renorm_cfg, 0.0, rule="the guided velocity's norm is clamped to this times the "
                    "conditional one; 0 turns it off")  # fmt: skip
    if cfg_channels is not None:
        check_int("cfg_channels", cfg_channels, 1, rule="guide the first k latent channels; None takes the model's")
    check_float("atol", atol, 0.0, rule="dopri5's absolute tolerance")
    check_float("rtol", rtol, 0.0, rule="dopri5's relative tolerance")
    check_model_options(model_options or {})
    _solver_step(solver, atol, rtol)
    if cfg_mode not in CFG_MODES:
        raise InvalidInputError(f"unknown cfg_mode {cfg_mode!r}; choose one of {sorted(CFG_MODES)}.")
    if cfg is not None and renorm_cfg is not None:
        make_guidance(cfg_mode, cfg, cfg_trunc, renorm_cfg)
    if schedule is not None:
        build_sigmas(schedule, steps, 1.0 if shift is None else shift, denoise)
    if cache is not None and not isinstance(cache, TeaCache):
        TeaCache(cache)  # a threshold below 0 is refused here


# A 1024 x 1024 image, valid for every model family: its latent shape tells the channels and dims of an init_latent.
EXAMPLE_SIZE = 1024


def _latent_shape(
    model: torch.nn.Module,
    batch_size: int,
    height: int,
    width: int,
    frames: int | None,
    init: torch.Tensor | None,
    model_options: Mapping[str, Any] | None,
) -> tuple[int, ...]:
    """The latent shape: from the image (video) size, or from init_latent (batch 1 or batch_size), ignoring the size.

    The model's `latent_shape` applies its size rule and the largest size it addresses; an init_latent's size is
    checked against that limit too (a video's frame count with its frame rate, from model_options).
    """
    video = getattr(model, "is_video", False)
    if frames is not None and not video:
        raise InvalidInputError(f"frames={frames} was given, but this {_name(model)} model makes images, not videos.")
    if init is None:
        if video and frames is None:
            raise InvalidInputError(
                f"this {_name(model)} model makes videos: pass frames, the number of frames (8k + 1, e.g. 97)."
            )
        rate = {"frame_rate": model_options["frame_rate"]} if video and "frame_rate" in (model_options or {}) else {}
        return tuple(model.latent_shape(batch_size, height, width, **({"frames": frames, **rate} if video else {})))
    example = tuple(model.latent_shape(batch_size, EXAMPLE_SIZE, EXAMPLE_SIZE))
    if init.ndim != len(example) or init.shape[1] != example[1] or init.shape[0] not in (1, batch_size):
        raise InvalidInputError(
            f"init_latent has shape {tuple(init.shape)}; the model expects (batch, {example[1]}, ...) with "
            f"{len(example)} dims and batch 1 or {batch_size} (e.g. {example} for {EXAMPLE_SIZE}x{EXAMPLE_SIZE}). "
            "Encode the image with this model's VAE."
        )
    pixels_per_cell = EXAMPLE_SIZE // example[-1]
    model.latent_shape(batch_size, init.shape[-2] * pixels_per_cell, init.shape[-1] * pixels_per_cell)
    return (batch_size, *init.shape[1:])


def _name(model: torch.nn.Module) -> str:
    return getattr(model, "family", None) or type(model).__name__


def _guided_channels(model: torch.nn.Module, cfg_channels: int | None, channels: int) -> int | None:
    """The k of "guide channels [0, k)", or None for all: the argument, else the model's `cfg_channels`."""
    default = getattr(model, "cfg_channels", None)
    k = cfg_channels if cfg_channels is not None else default
    if k is None:
        return None
    if not 1 <= k <= channels:
        raise InvalidInputError(
            f"cfg_channels is {k} but the latent has {channels} channels: guide the first 1 to {channels} channels "
            f"(the model's default is {default}; None uses it)."
        )
    return None if k == channels else k


def _expand_noise_mask(
    model: torch.nn.Module,
    noise_mask: torch.Tensor,
    init: torch.Tensor | None,
    shape: tuple[int, ...],
    device: torch.device,
) -> torch.Tensor:
    """Check a noise_mask against the model and the latent; returns it float32 on device, shaped (B, 1, *dims)."""
    if not getattr(model, "per_token_sigma", False):
        raise InvalidInputError(
            f"a noise_mask was given, but this {_name(model)} model takes one sigma per sample, not one per latent "
            "token, so it cannot keep part of the latent while generating the rest. Use a model that supports it "
            "(LTX-Video), or sample without noise_mask."
        )
    if init is None:
        raise InvalidInputError(
            "a noise_mask keeps init_latent where it is below 1, but no init_latent was given: pass the latent to "
            "keep (e.g. from first_frame_conditioning) as init_latent."
        )
    batch, _, *dims = shape
    full = (batch, 1, *dims)
    fits = (
        noise_mask.ndim == len(shape)
        and noise_mask.shape[0] in (1, batch)
        and noise_mask.shape[1] == 1
        and all(m in (1, d) for m, d in zip(noise_mask.shape[2:], dims, strict=True))
    )
    if not fits:
        raise InvalidInputError(
            f"noise_mask has shape {tuple(noise_mask.shape)}; for the latent {shape} it must be {full} or broadcast "
            f"to it: batch 1 or {batch}, one channel, and each of the last {len(dims)} dims 1 or the latent's "
            f"(e.g. {(batch, 1, dims[0], *[1] * (len(dims) - 1))} for one value per frame)."
        )
    mask = noise_mask.to(device=device, dtype=torch.float32)
    if not bool(((mask >= 0) & (mask <= 1)).all()):  # NaN fails both comparisons
        raise InvalidInputError(
            f"noise_mask values must lie in [0, 1] (1 = generate, 0 = keep init_latent, between = partial "
            f"strength); got values from {mask.min().item()} to {mask.max().item()}."
        )
    return mask.expand(full).contiguous()


def _compiled(model: torch.nn.Module, backend: bool | str) -> CompiledModel | None:
    if not backend:
        return None
    return compiled(model, "inductor" if backend is True else backend)


def initial_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard normal float32 noise drawn on the CPU, so a seed gives the same image on every device."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def _check_latent(
    model: torch.nn.Module, x: torch.Tensor, step: int, total: int, sigma: float, dtype: torch.dtype, cfg: float
) -> None:
    """After a step whose model outputs were all finite: only the guidance or the solver can have overflowed."""
    if not is_finite(x):
        raise SamplingError(
            f"the latent became NaN/inf after step {step + 1} of {total} (sigma {sigma:.4f}; {count_nonfinite(x)}) "
            f"although every output of the {model_name(model)} transformer ({dtype_name(dtype)}) was finite: the "
            f"guidance (cfg {cfg}) or the solver overflowed. Use a smaller cfg."
        )


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    positive: Conditioning,
    negative: Conditioning | None = None,
    *,
    width: int = 1024,
    height: int = 1024,
    batch_size: int = 1,
    seed: int = 0,
    steps: int = 30,
    cfg: float = 4.0,
    shift: float | None = None,
    solver: str = "euler",
    schedule: str = "shifted_linear",
    cfg_trunc: float = 1.0,
    renorm_cfg: float = 1.0,
    cfg_mode: str = "original",
    denoise: float = 1.0,
    frames: int | None = None,
    init_latent: torch.Tensor | None = None,
    noise_mask: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    cfg_channels: int | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-3,
    model_options: dict[str, Any] | None = None,
    stats: SamplingStats | None = None,
    device: torch.device | str | None = None,
    compile: bool | str = False,
    cache: float | TeaCache | None = None,
    interrupt: Callable[[], None] | None = None,
    make_room: Callable[[int, torch.device], None] | None = None,
) -> torch.Tensor:
    """Integrate the flow from noise to a clean latent; returns it in model space, float32, on `device`.

    positive / negative: text conditionings with batch 1 (tiled to batch_size) or batch_size. Guidance runs when
        a negative is given and cfg != 1 (in `cfg_mode="diffusers"` only when cfg > 1, as the pipeline does).
    cfg_trunc, renorm_cfg, cfg_mode: see `cfg.py` and the module docstring. In "diffusers" mode cfg_trunc is the
        pipeline's cfg_trunc_ratio and renorm_cfg 1 / 0 its cfg_normalization on / off.
    cfg_channels: guide only the first k latent channels, the rest take the conditional prediction (Lumina-Next
        uses 3 of 4). None (the default) takes `model.cfg_channels` when the model has one, else every channel.
    steps, shift, schedule, solver, denoise: `steps` solver steps over `build_sigmas(schedule, steps, shift,
        denoise, tokens)`; with denoise < 1 they start at the lower sigma0 of that tail. shift None takes the
        schedule's default: 6 (Lumina-Image 2.0's), or for "ltx" LTX-Video's rule from the latent's token count
        (frames x rows x columns of the latent). For "dopri5" the sigmas are only where each adaptive run ends
        and the callback fires (the result hardly depends on them); its accuracy is set by atol / rtol (ignored
        by the other solvers), and `stats` reports what it cost.
    frames: the frame count of a video model (8k + 1 for LTX-Video); must be None for image models.
    init_latent: (1 or B, C, H, W), or (1 or B, C, F, H, W) for video models, in model space. The start is
        x = (1 - sigma0)·init + sigma0·noise, like ComfyUI's KSampler; with denoise 1 (sigma0 = 1) that is pure
        noise and init_latent only sets the shape. It replaces width, height and frames, which are then neither
        used nor checked. Without it, init is zero (ComfyUI's empty latent).
    noise_mask: where to generate (1) and where to keep init_latent (0), values between giving a partial strength;
        float, shaped like the latent with one channel, (1 or B, 1, F, H, W), or with 1 in any of the last dims
        to broadcast, e.g. (B, 1, F, 1, 1) for one value per frame. Each token runs at sigma·mask (see
        the module docstring); kept tokens come back exactly as in init_latent. It needs init_latent and a model
        with `per_token_sigma` (LTX-Video), else InvalidInputError; it works with every solver, guidance and
        denoise. Image-to-video (ComfyUI's LTXVImgToVideo) is:
            latent, mask = first_frame_conditioning(vae, image, model.latent_shape(B, height, width, frames))
            video = sample(model, positive, negative, init_latent=latent, noise_mask=mask, schedule="ltx",
                           renorm_cfg=0, model_options={"frame_rate": 25.0}, ...)
    seed / noise: the noise is drawn on the CPU from `seed` (see `initial_noise`) unless given, with the latent
        shape.
    callback(step, total, x, denoised): after each step; step is the 0-based index of the step just taken, x the
        new latent, denoised = x_step - sigma_step·v the clean-image estimate at that step's start (for previews).
        Exceptions it raises (e.g. to cancel) propagate unchanged.
    model_options: keywords passed to every model call (e.g. Lumina-Next's RoPE scaling and proportional
        attention, LTX-Video's frame_rate); none at all when empty, as Lumina 2 takes none.
    stats: a `SamplingStats` to fill in with the run's model calls and solver steps.
    device: where the latent lives and the model runs; None: the device of the model's first parameter. A host
        that keeps part of the weights elsewhere (ComfyUI's partial loading) passes its compute device. The model
        runs in its `compute_dtype` (its loader's choice; else the dtype of its weights).
    compile: run the model through `torch.compile` (whole graph, `lumina_core.compile`): True uses inductor, a string
        names another torch.compile backend. The compiled code is kept with the model, so the first run pays for
        compiling and later runs at the same size do not. Results equal the eager ones to float rounding.
    cache: step caching (TeaCache, `step_cache.py`): a threshold (0 never skips; the published ones are in
        `PUBLISHED_THRESHOLDS`) or a `TeaCache` naming a polynomial variant; None (the default) is off. The model
        calls whose block stack was skipped are `stats.cached_calls`.
    interrupt: called before every transformer block and after every step; raise from it to stop (ComfyUI's
        Cancel), so a long step stops within one block. With `compile` it is called before every model call
        instead of every block (a call into compiled code cannot be entered halfway).
    make_room(bytes, device): called when the run's memory estimate (`sampling.memory`) exceeds what `device` has
        free, to let the host free some (ComfyUI unloads cached models); without enough, InvalidInputError says
        the estimate and what is available before anything runs.

    Every setting is checked first (`check_settings`), then the size against what the model addresses, the text
    features and given latents for NaN/inf, and the memory. A model output or latent that turns NaN/inf raises
    SamplingError naming the step, the model and its dtype, and the likely causes (a weight holding NaN/inf is
    named).
    """
    check_settings(
        steps=steps, cfg=cfg, batch_size=batch_size, solver=solver, schedule=schedule, shift=shift, denoise=denoise,
        cfg_mode=cfg_mode, cfg_trunc=cfg_trunc, renorm_cfg=renorm_cfg, cfg_channels=cfg_channels, atol=atol,
        rtol=rtol, seed=seed, width=width, height=height, frames=frames, model_options=model_options, cache=cache,
    )  # fmt: skip
    solver_step = _solver_step(solver, atol, rtol)
    guidance = make_guidance(cfg_mode, cfg, cfg_trunc, renorm_cfg)
    step_cache = make_step_cache(cache, model)
    shape = _latent_shape(model, batch_size, height, width, frames, init_latent, model_options)
    sigmas = build_sigmas(schedule, steps, shift, denoise, tokens=math.prod(shape[2:])).tolist()
    guided_channels = _guided_channels(model, cfg_channels, shape[1])
    if callable(getattr(model, "check_run", None)):  # the model's own checks of a run, once, not in every forward
        model.check_run(shape, **(model_options or {}))
    if noise is not None and tuple(noise.shape) != shape:
        raise InvalidInputError(f"noise has shape {tuple(noise.shape)}, the latent is {shape}.")
    family = getattr(model, "family", None)
    for role, conditioning in (("positive", positive), ("negative", negative)):
        if conditioning is not None:
            if family is not None:
                check_family(family, conditioning, role)
            check_conditioning(conditioning, role)
    for name, given in (("init_latent", init_latent), ("noise", noise)):
        if given is not None and not is_finite(given):
            raise InvalidInputError(f"{name} holds NaN/inf ({count_nonfinite(given)}); sampling needs finite values.")

    device, dtype = placement(model, device)
    guided = negative is not None and cfg != 1.0
    check_memory(model, shape, guided, dtype, device, make_room)
    if noise is None:
        noise = initial_noise(shape, seed)
    mask = None if noise_mask is None else _expand_noise_mask(model, noise_mask, init_latent, shape, device)
    x = noise.to(device=device, dtype=torch.float32)
    if mask is not None:
        start = sigmas[0] * mask  # each token's own sigma0: 0 where init_latent is kept
        x = (1 - start) * init_latent.to(device=device, dtype=torch.float32) + start * x
    elif init_latent is not None:
        x = (1 - sigmas[0]) * init_latent.to(device=device, dtype=torch.float32) + sigmas[0] * x
    else:
        x = sigmas[0] * x
    positive = positive.repeat_to(batch_size).to(device, dtype)
    negative = negative.repeat_to(batch_size).to(device, dtype) if guided else None
    if stats is None:
        stats = SamplingStats()
    else:
        stats.model_calls = stats.uncond_calls = stats.solver_steps = stats.rejected_steps = stats.cached_calls = 0
    if isinstance(solver_step, Dopri5):
        solver_step.rewind = step_cache  # a rejected substep's calls leave no trace in the cache
    runner = _compiled(model, compile)
    velocity = GuidedVelocity(
        model, positive, negative, guidance, dtype,
        cfg_channels=guided_channels, model_options=model_options, stats=stats, noise_mask=mask,
        runner=runner, cache=step_cache, interrupt=interrupt if runner is not None else None,
    )  # fmt: skip

    # Hooks between blocks would be traced into a compiled graph (and break it); a compiled run checks per call.
    with checks_between_blocks(model, interrupt if runner is None else None):
        for i in range(steps):
            step_velocity = partial(velocity, step=i, total=steps)
            if mask is not None:  # dx/dsigma on each token's clock sigma·mask: kept tokens stand still
                step_velocity = partial(_masked_velocity, step_velocity, mask)
            x_next, v = solver_step(step_velocity, x, sigmas[i], sigmas[i + 1])
            if isinstance(solver_step, Dopri5):
                stats.solver_steps, stats.rejected_steps = solver_step.accepted, solver_step.rejected
            else:
                stats.solver_steps += 1
            _check_latent(model, x_next, i, steps, sigmas[i], dtype, cfg)
            if interrupt is not None:
                interrupt()
            if callback is not None:
                callback(i, steps, x_next, x - sigmas[i] * v)
            x = x_next
    return x


@contextmanager
def checks_between_blocks(model: torch.nn.Module, interrupt: Callable[[], None] | None) -> Iterator[None]:
    """Call `interrupt` before every block of the model's block lists for the duration of the block.

    The model's direct `nn.ModuleList` children are its block stacks (layers, refiners, transformer_blocks), so a
    forward pre-hook on each of their members stops a long model call within one block when `interrupt` raises,
    without the model files knowing. The hooks are removed when the block ends.
    """
    if interrupt is None:
        yield
        return
    hooks = [
        block.register_forward_pre_hook(lambda module, args: interrupt())
        for child in model.children()
        if isinstance(child, torch.nn.ModuleList)
        for block in child
    ]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
