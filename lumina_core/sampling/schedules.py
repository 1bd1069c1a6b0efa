"""Sigma schedules for flow-matching samplers.

A schedule is a pure function `(steps, shift) -> sigmas`: a float64 CPU tensor of length steps + 1 that falls
from the noisiest sigma to exactly 0 (sigma = 1 is pure noise, 0 is clean data). Each of the `steps` intervals is
one solver step, so "30 steps" means 30 intervals ending at sigma = 0, as in diffusers and ComfyUI. The original
Lumina samplers count grid points instead (30 points = 29 intervals; docs/sampling.md, 'Steps and model calls').

Every schedule takes the static time shift (`shift_sigmas`) as its last stage, as the original code shifts its
grid after building it: shift 1 leaves a schedule's own spacing, and s > 1 moves every point towards the noise end.
The Lumina-Next paper compares "uniform", "rational" and "sigmoid" schedules; the first two are, as we read them,
`shifted_linear` with shift 1 and with s > 1 (the time shift is a rational function of t). LTX-Video's `ltx`
stretches the shifted schedule afterwards, and its shift depends on the latent size (`ltx_shift`), so `sample`
derives it from the latent when given shift=None.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..errors import InvalidInputError


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The static SD3/Flux shift sigma' = s·sigma / (1 + (s - 1)·sigma).

    In Lumina time t = 1 - sigma this is the Lumina time shift t' = t / (t + s - s·t):
        1 - t' = (s - s·t) / (t + s - s·t) = s·sigma / (1 - sigma + s·sigma) = s·sigma / (1 + (s - 1)·sigma).
    Shift values therefore carry over between the two codebases unchanged (6 for Lumina-Image 2.0). It keeps 0 and
    1 fixed and, for s > 1, spends more of the steps at high noise.
    """
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise InvalidInputError(f"steps must be at least 1, got {steps}.")


def _check_shift(shift: float) -> None:
    if shift <= 0:
        raise InvalidInputError(
            f"shift must be greater than 0, got {shift} (1 means no shift; Lumina-Next uses 4, Lumina 2 uses 6)."
        )


def shifted_linear(steps: int, shift: float) -> torch.Tensor:
    """linspace(1, 0, steps + 1) under the static shift (see `shift_sigmas`); the Lumina-Image 2.0 default.

    Equals the sigmas of diffusers' FlowMatchEulerDiscreteScheduler(shift=shift) driven by Lumina2Pipeline
    (linspace(1, 1/N, N) shifted, then 0 appended), and those of ComfyUI's "simple" scheduler on a shifted FLOW
    model whenever steps divides 1000.
    """
    _check_steps(steps)
    _check_shift(shift)
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)


# Our choice, not the paper's (which gives no constant): the first and last of 10 steps are about a quarter of a
# middle one before the shift; 0 would be linear.
SIGMOID_STEEPNESS = 6.0


def sigmoid(steps: int, shift: float, steepness: float = SIGMOID_STEEPNESS) -> torch.Tensor:
    """The sigmoid time discretisation of the Lumina-Next paper (arXiv 2406.18583), then the static shift.

    The paper proposes it for 5-10 step sampling with higher-order solvers: small steps at both ends of the path
    and large ones in the middle. The released code has none and we found no formula to follow, so this is our
    parametrisation: with u = i / steps running evenly from 0 to 1, the Lumina time is the logistic curve
    rescaled to pass through both ends,
        t_i = (S(k·(u - 1/2)) - S(-k/2)) / (S(k/2) - S(-k/2)),   S(z) = 1 / (1 + e^-z),  k = steepness,
    and sigma_i = shift_sigmas(1 - t_i, shift). It is symmetric in t, tends to linspace as k -> 0, and packs
    the steps harder towards both ends as k grows. The shift keeps both ends packed (its slope is s at
    sigma 0 and 1/s at sigma 1) and moves the middle towards the noise; shift 1 gives the plain curve.
    Returns a float64 CPU tensor of length steps + 1 from exactly 1 to exactly 0.
    """
    _check_steps(steps)
    _check_shift(shift)
    if steepness <= 0:
        raise InvalidInputError(f"steepness must be greater than 0, got {steepness} (the default is 6).")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    low, high = torch.sigmoid(torch.tensor([-steepness / 2, steepness / 2], dtype=torch.float64))
    t = (torch.sigmoid(steepness * (u - 0.5)) - low) / (high - low)
    t[0], t[-1] = 0.0, 1.0  # exact ends, whatever the rounding
    return shift_sigmas(1 - t, shift)


# LTX-Video's resolution-dependent shift (docs/sampling.md, 'LTX-Video schedule': the original rf.py, diffusers'
# LTXPipeline scheduler config, ComfyUI's LTXVScheduler): mu is linear in the latent token count through these two
# points, and the exponential time shift with mu is the static shift with s = e^mu. The schedule ends at a last non-zero
# sigma of 0.1.
LTX_SHIFT_POINTS = ((1024, 0.95), (4096, 2.05))  # (tokens, mu)
LTX_TERMINAL = 0.1


def ltx_shift(tokens: int) -> float:
    """The static shift e^mu that LTX-Video uses for a latent of `tokens` tokens (frames x rows x columns).

    mu = 0.95 at 1024 tokens and 2.05 at 4096, linear in between and extrapolated outside (as every reference
    does): 768 x 512 x 97 frames is 24 x 16 x 13 = 4992 tokens, mu 2.37, shift 10.7.
    """
    if tokens < 1:
        raise InvalidInputError(f"the ltx schedule needs the latent's token count (at least 1), got {tokens}.")
    (t0, mu0), (t1, mu1) = LTX_SHIFT_POINTS
    return math.exp(mu0 + (tokens - t0) * (mu1 - mu0) / (t1 - t0))


def stretch_to_terminal(sigmas: torch.Tensor, terminal: float) -> torch.Tensor:
    """Stretch a schedule so its last non-zero sigma is `terminal`, keeping the first at 1 and the final 0.

    The distances 1 - sigma of the non-zero sigmas are scaled by one factor (Lightricks rf.py, diffusers'
    shift_terminal, ComfyUI's LTXVScheduler stretch). A schedule with a single non-zero sigma (one step from 1)
    has nothing to stretch and is returned as it is, where the references would divide by zero.
    """
    nonzero = sigmas[:-1]
    if len(nonzero) < 2:
        return sigmas
    distances = 1 - nonzero
    stretched = 1 - distances * ((1 - terminal) / distances[-1])
    return torch.cat([stretched, sigmas[-1:]])


def ltx(steps: int, shift: float) -> torch.Tensor:
    """LTX-Video's schedule: shifted_linear stretched so its last non-zero sigma is 0.1 (LTX_TERMINAL).

    With shift = ltx_shift(tokens), which `sample` uses when it is given shift=None, these are the sigmas of
    diffusers' LTXPipeline with the released scheduler config and of ComfyUI's LTXVScheduler (stretch on).
    """
    return stretch_to_terminal(shifted_linear(steps, shift), LTX_TERMINAL)


def explicit_sigmas(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """A caller's own schedule as a float64 CPU tensor ending at 0: values falling strictly, within (0, 1], a final 0
    appended when missing (the fixed timestep lists of distilled models end above 0, and their last step goes to 0,
    as in the original rf.py). The values are rounded to float32 first, as the original pipeline and diffusers hold
    such a list, so the model sees the same timesteps (sigma x 1000 in float32) as there: a list like 0.9937 ...
    otherwise lands on the neighbouring float32 timestep, which moves a distilled run by about 1e-5."""
    sigmas = torch.as_tensor(values, dtype=torch.float32).flatten().cpu().double()
    if len(sigmas) and sigmas[-1] != 0:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    falling = bool((sigmas[1:] < sigmas[:-1]).all())
    if len(sigmas) < 2 or not falling or not 0 < sigmas[0] <= 1 or bool(sigmas.isnan().any()):
        raise InvalidInputError(
            f"sigmas must fall strictly from at most 1 to 0 (a final 0 is added when missing); got "
            f"{[round(v, 4) for v in torch.as_tensor(values, dtype=torch.float64).flatten().tolist()]}."
        )
    return sigmas


# name -> (steps, shift) -> sigmas. Every schedule must use `shift` (an unshifted linear schedule is
# shifted_linear with shift 1), because the sampler node shows the shift input next to the schedule.
SCHEDULES: dict[str, Callable[[int, float], torch.Tensor]] = {
    "shifted_linear": shifted_linear,
    "sigmoid": sigmoid,
    "ltx": ltx,
}
# The shift a schedule takes when none is given: Lumina-Image 2.0's 6, or LTX-Video's token-count rule.
DEFAULT_SHIFT = 6.0
TOKEN_SHIFTS: dict[str, Callable[[int], float]] = {"ltx": ltx_shift}


def default_shift(schedule: str, tokens: int | None) -> float:
    """The shift `build_sigmas` uses for shift=None: from the latent's token count for "ltx", else DEFAULT_SHIFT."""
    if schedule not in TOKEN_SHIFTS:
        return DEFAULT_SHIFT
    if tokens is None:
        raise InvalidInputError(
            f"the {schedule} schedule derives its shift from the latent's token count: pass tokens, or a shift."
        )
    return TOKEN_SHIFTS[schedule](tokens)


def build_sigmas(
    schedule: str, steps: int, shift: float | None, denoise: float = 1.0, tokens: int | None = None
) -> torch.Tensor:
    """Sigmas for `steps` steps of the named schedule, starting part-way down when denoise < 1.

    shift None takes `default_shift(schedule, tokens)`; tokens is the latent's token count (frames x rows x
    columns for LTX-Video), used only then.
    With denoise < 1 this follows ComfyUI's KSampler.set_steps: build the schedule for int(steps / denoise) steps
    and keep its last steps + 1 sigmas, so `steps` solver steps still run but start at a lower noise level.
    Returns a float64 CPU tensor of length steps + 1 ending at 0.
    """
    if schedule not in SCHEDULES:
        raise InvalidInputError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}.")
    _check_steps(steps)
    if not 0.0 < denoise <= 1.0:
        raise InvalidInputError(f"denoise must be in (0, 1], got {denoise}.")
    if shift is None:
        shift = default_shift(schedule, tokens)
    if denoise == 1.0:
        return SCHEDULES[schedule](steps, shift)
    full_steps = int(steps / denoise)
    return SCHEDULES[schedule](full_steps, shift)[-(steps + 1) :]
