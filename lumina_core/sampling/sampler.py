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

Noise masks and conditions (image-to-video, keyframes; docs/sampling.md, 'Noise masks' and 'Keyframes'): for
models that take one sigma per latent token (`per_token_sigma = True`: LTX-Video), `sample(init_latent=...,
noise_mask=...)` generates where the mask is 1 and keeps init_latent where it is 0, and
`conditions=[VideoCondition(...)]` places encoded images and clips at any frame (`models/ltxv_keyframes.py`: in
place at frame 0, appended tokens with their own RoPE positions elsewhere, cut off the result). Either way each
token has a noise level and runs on its own clock min(sigma, level) (`token_levels.py`): kept tokens come back bit
for bit, partial strengths wait until the schedule reaches their level. `condition_noise_scale` re-noises the kept
tokens before every step with scale·sigma²·fresh noise, as the original pipeline's image_cond_noise_scale (0.15
there; 0, off, here).

Random numbers: one CPU generator seeded with `seed` draws, in this order, the latent noise (unless `noise` is
given), the start noise of each appended condition block, and each step's condition noise (as (B, tokens, C),
tokens in sequence order, appended blocks first). That is the order and layout of diffusers' LTXConditionPipeline,
so the same seed gives its noise.

Precision: x stays float32 between steps; the model sees x and the context in its own dtype (bf16 is fine) and
its velocity is cast back to float32. Sigma is passed as float32 and the model casts it where it needs to.
Checks (`lumina_core.nonfinite`): the text features before the first step, every model output and the latent after
every step; the first NaN/inf raises SamplingError saying where it was found, the model and dtype, and the likely
causes (a weight holding NaN/inf is named; float16 overflow comes first only for float16 models). Long model calls
stay interruptible: `interrupt` runs before every transformer block (`checks_between_blocks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from ..common.ops import placement
from ..compile import CompiledModel, compiled
from ..conditioning import Conditioning, check_family, concat_conditionings
from ..errors import InvalidInputError, SamplingError
from ..models.ltxv_keyframes import KeyframePlan, VideoCondition, plan_keyframes
from ..nonfinite import check_conditioning, count_nonfinite, dtype_name, is_finite, model_name, model_output_error
from ..validation import check_float, check_int, check_model_options, check_seed
from .cfg import CFG_MODES, Guidance, make_guidance
from .memory import check_memory
from .schedules import build_sigmas, explicit_sigmas
from .solvers import SOLVERS, Dopri5, StepFn
from .step_cache import COND, COND_UNCOND, StepCache, TeaCache, make_step_cache
from .token_levels import check_noise_mask, kept, moving, start_latent, token_sigmas

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
    `model_options` are passed as keywords to every model call; `stats` counts the calls. With token `levels`
    (B, 1, *latent dims), the model gets one sigma per token, min(sigma, level), instead of one per sample; the
    prediction is returned as the model made it (the sampler stops the tokens waiting above their level).

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
        levels: torch.Tensor | None = None,
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
        self.levels = levels
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
        if self.levels is None:
            sigmas = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)
        else:  # (B, 1, ...) per token; the cond and uncond halves of a guided batch share it
            sigmas = token_sigmas(self.levels, sigma).repeat(x.shape[0] // self.levels.shape[0], *[1] * (x.ndim - 1))
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


def _level_velocity(
    velocity: Callable[[torch.Tensor, float], torch.Tensor], levels: torch.Tensor, x: torch.Tensor, sigma: float
) -> torch.Tensor:
    """dx/dsigma on each token's clock min(sigma, level): the velocity where the token moves, 0 where it waits."""
    return moving(levels, sigma) * velocity(x, sigma)


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
    sigmas: Sequence[float] | torch.Tensor | None = None,
    cfg_trunc: float = 1.0,
    renorm_cfg: float = 1.0,
    cfg_mode: str = "original",
    denoise: float = 1.0,
    frames: int | None = None,
    init_latent: torch.Tensor | None = None,
    noise_mask: torch.Tensor | None = None,
    conditions: Sequence[VideoCondition] | None = None,
    condition_noise_scale: float = 0.0,
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
    sigmas: an explicit falling schedule instead (e.g. a distilled model's fixed list, `recipes.py`): values in
        (0, 1], a final 0 appended when missing; steps, schedule and shift are then not used, and denoise must be 1
        (start lower by starting the list lower).
    frames: the frame count of a video model (8k + 1 for LTX-Video); must be None for image models.
    init_latent: (1 or B, C, H, W), or (1 or B, C, F, H, W) for video models, in model space. The start is
        x = (1 - sigma0)·init + sigma0·noise, like ComfyUI's KSampler; with denoise 1 (sigma0 = 1) that is pure
        noise and init_latent only sets the shape (video-to-video: the encoded video with denoise < 1). It replaces
        width, height and frames, which are then neither used nor checked. Without it, init is zero (ComfyUI's
        empty latent).
    noise_mask: each token's noise level: 1 generates, 0 keeps init_latent, values between give a partial
        strength (`token_levels.py`); float, shaped like the latent with one channel, (1 or B, 1, F, H, W), or
        with 1 in any of the last dims to broadcast, e.g. (B, 1, F, 1, 1) for one value per frame. Kept tokens
        come back exactly as in init_latent. It needs init_latent and a model with `per_token_sigma`
        (LTX-Video), else InvalidInputError; it works with every solver, guidance and denoise. Image-to-video
        (ComfyUI's LTXVImgToVideo) is:
            latent, mask = first_frame_conditioning(vae, image, model.latent_shape(B, height, width, frames))
            video = sample(model, positive, negative, init_latent=latent, noise_mask=mask, schedule="ltx",
                           renorm_cfg=0, model_options={"frame_rate": 25.0}, ...)
    conditions: LTX-Video `VideoCondition`s (encoded images or clips, a frame index, a strength; several at once),
        placed as `models/ltxv_keyframes.py` describes, on top of init_latent and noise_mask when given. The result
        is the video latent alone (appended condition frames removed).
    condition_noise_scale: before each step, kept tokens (level 0) become init + scale·sigma²·noise, the original
        pipeline's image_cond_noise_scale (0.15 in its inference.py and diffusers; 0 = off).
    seed / noise: random numbers come from a CPU generator seeded with `seed` (see the module docstring); `noise`
        replaces the latent noise, shaped like the latent.
    callback(step, total, x, denoised): after each step; step is the 0-based index of the step just taken, x the
        new latent, denoised = x_step - sigma_step·v the clean-image estimate at that step's start (for previews;
        both without appended condition frames). Exceptions it raises (e.g. to cancel) propagate unchanged.
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
    sigmas = _schedule(sigmas, schedule, steps, shift, denoise, tokens=math.prod(shape[2:]))
    steps = len(sigmas) - 1
    guided_channels = _guided_channels(model, cfg_channels, shape[1])
    if callable(getattr(model, "check_run", None)):  # the model's own checks of a run, once, not in every forward
        model.check_run(shape, **(model_options or {}))
    check_float("condition_noise_scale", condition_noise_scale, 0.0, rule="the re-noising of kept tokens; 0 = off")
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
    kept_part = _kept_part(model, shape, init_latent, noise_mask, conditions, device)
    run_shape = shape if kept_part.plan is None else tuple(kept_part.plan.init.shape)
    check_memory(model, run_shape, guided, dtype, device, make_room)
    generator = torch.Generator().manual_seed(seed)
    if noise is None:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)  # = initial_noise(shape, seed)
    start = kept_part.start(noise.to(device=device, dtype=torch.float32), sigmas[0], generator)
    x, init, levels = start.x, start.init, start.levels
    options = dict(model_options or {})
    if start.frame_positions is not None:
        options["frame_positions"] = start.frame_positions
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
        cfg_channels=guided_channels, model_options=options, stats=stats, levels=levels,
        runner=runner, cache=step_cache, interrupt=interrupt if runner is not None else None,
    )  # fmt: skip
    renoise = levels is not None and condition_noise_scale > 0
    video = slice(start.guide_frames, None)  # the frames after the appended condition frames

    # Hooks between blocks would be traced into a compiled graph (and break it); a compiled run checks per call.
    with checks_between_blocks(model, interrupt if runner is None else None):
        for i in range(steps):
            if renoise:
                x = _renoise_kept(x, init, levels, condition_noise_scale * sigmas[i] ** 2, generator)
            step_velocity = partial(velocity, step=i, total=steps)
            if levels is not None:  # dx/dsigma on each token's clock: tokens above their level wait
                step_velocity = partial(_level_velocity, step_velocity, levels)
            x_next, v = solver_step(step_velocity, x, sigmas[i], sigmas[i + 1])
            if isinstance(solver_step, Dopri5):
                stats.solver_steps, stats.rejected_steps = solver_step.accepted, solver_step.rejected
            else:
                stats.solver_steps += 1
            _check_latent(model, x_next, i, steps, sigmas[i], dtype, cfg)
            if interrupt is not None:
                interrupt()
            if callback is not None:
                callback(i, steps, x_next[:, :, video], (x - sigmas[i] * v)[:, :, video])
            x = x_next
    return x[:, :, video]


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


def _schedule(
    sigmas: Sequence[float] | torch.Tensor | None, schedule: str, steps: int, shift: float | None, denoise: float,
    tokens: int,
) -> list[float]:  # fmt: skip
    """The run's falling sigmas: explicit ones (denoise must then be 1), else the named schedule's."""
    if sigmas is None:
        return build_sigmas(schedule, steps, shift, denoise, tokens=tokens).tolist()
    if denoise != 1.0:
        raise InvalidInputError(
            f"denoise={denoise} and explicit sigmas were both given: the sigmas' first value is where sampling "
            "starts; start the list lower instead."
        )
    return explicit_sigmas(sigmas).tolist()


@dataclass
class _Start:
    """What the loop integrates: the start latent x; the latent to keep (init) and each token's noise level, when
    part of it is kept; how many appended condition frames lead the latent, and every frame's RoPE position then."""

    x: torch.Tensor
    init: torch.Tensor | None = None
    levels: torch.Tensor | None = None
    guide_frames: int = 0
    frame_positions: torch.Tensor | None = None


@dataclass
class _KeptPart:
    """The part of the latent a run keeps, checked before anything is drawn: init_latent, each token's noise level,
    and the placed conditions (`plan`, whose latent and levels then include init_latent's and the mask's)."""

    init: torch.Tensor | None
    levels: torch.Tensor | None
    plan: KeyframePlan | None

    def start(self, noise: torch.Tensor, sigma0: float, generator: torch.Generator) -> _Start:
        """The start latent: noise, init noised to sigma0, or token by token to each token's level. Appended
        condition frames draw their start noise from `generator`, block after block."""
        plan = self.plan
        if plan is not None:
            batch, channels, _, *dims = noise.shape
            guide_noise = [torch.randn((batch, channels, f, *dims), generator=generator).to(noise.device)
                           for f in plan.guide_noise_frames]  # fmt: skip
            x = start_latent(plan.init, torch.cat([*guide_noise, noise], dim=2), plan.levels, sigma0)
            return _Start(x, plan.init, plan.levels, plan.guide_frames, plan.frame_positions)
        if self.levels is not None:
            return _Start(start_latent(self.init, noise, self.levels, sigma0), self.init, self.levels)
        if self.init is not None:
            return _Start((1 - sigma0) * self.init + sigma0 * noise)
        return _Start(sigma0 * noise)


def _kept_part(
    model: torch.nn.Module,
    shape: tuple[int, ...],
    init_latent: torch.Tensor | None,
    noise_mask: torch.Tensor | None,
    conditions: Sequence[VideoCondition] | None,
    device: torch.device,
) -> _KeptPart:
    """Check the noise mask and place the conditions (their errors come before any memory check or noise)."""
    init = None if init_latent is None else init_latent.to(device=device, dtype=torch.float32)
    levels = None if noise_mask is None else check_noise_mask(model, noise_mask, init_latent, shape, device)
    plan = _plan_conditions(model, conditions, shape, init, levels, device) if conditions else None
    return _KeptPart(init, levels, plan)


def _plan_conditions(
    model: torch.nn.Module,
    conditions: Sequence[VideoCondition],
    shape: tuple[int, ...],
    init: torch.Tensor | None,
    levels: torch.Tensor | None,
    device: torch.device,
) -> KeyframePlan:
    """Place the conditions, for a model that takes per-token sigmas and explicit frame positions (LTX-Video)."""
    if not (getattr(model, "per_token_sigma", False) and getattr(model, "takes_keyframes", False)):
        raise InvalidInputError(
            f"conditions were given, but this {_name(model)} model cannot take images or clips at chosen frames: "
            "they need LTX-Video (0.9.5 or later), which takes one sigma per token and keyframe positions."
        )
    return plan_keyframes(conditions, shape, model.config.causal_temporal_positioning, init, levels, device)


def _renoise_kept(
    x: torch.Tensor, init: torch.Tensor, levels: torch.Tensor, amplitude: float, generator: torch.Generator
) -> torch.Tensor:
    """Kept tokens become init + amplitude·noise (fresh each step); the noise is drawn as (B, tokens, C)."""
    batch, channels, *dims = x.shape
    noise = torch.randn((batch, math.prod(dims), channels), generator=generator).to(x.device)
    noise = noise.transpose(1, 2).unflatten(2, dims)  # (B, N, C) -> (B, C, *dims)
    return torch.where(kept(levels), init + amplitude * noise, x)
