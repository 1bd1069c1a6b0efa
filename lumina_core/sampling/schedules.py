"""Sigma schedules for flow-matching samplers.

A schedule is a pure function `(steps, shift) -> sigmas`: a float64 CPU tensor of length steps + 1 that falls
from the noisiest sigma to exactly 0 (sigma = 1 is pure noise, 0 is clean data). Each of the `steps` intervals is
one solver step, so "30 steps" means 30 intervals ending at sigma = 0, as in diffusers and ComfyUI. The original
Lumina samplers count grid points instead (30 points = 29 intervals, see `lumina_next.md` §2.3).
"""

from __future__ import annotations

from collections.abc import Callable

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


def shifted_linear(steps: int, shift: float) -> torch.Tensor:
    """linspace(1, 0, steps + 1) under the static shift (see `shift_sigmas`); the Lumina-Image 2.0 default.

    Equals the sigmas of diffusers' FlowMatchEulerDiscreteScheduler(shift=shift) driven by Lumina2Pipeline
    (linspace(1, 1/N, N) shifted, then 0 appended), and those of ComfyUI's "simple" scheduler on a shifted FLOW
    model whenever steps divides 1000.
    """
    _check_steps(steps)
    if shift <= 0:
        raise InvalidInputError(f"shift must be greater than 0, got {shift} (1 means no shift; Lumina 2 uses 6).")
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)


# name -> (steps, shift) -> sigmas. Every schedule must use `shift` (an unshifted linear schedule is
# shifted_linear with shift 1), because the sampler node shows the shift input next to the schedule.
SCHEDULES: dict[str, Callable[[int, float], torch.Tensor]] = {
    "shifted_linear": shifted_linear,
}


def build_sigmas(schedule: str, steps: int, shift: float, denoise: float = 1.0) -> torch.Tensor:
    """Sigmas for `steps` steps of the named schedule, starting part-way down when denoise < 1.

    With denoise < 1 this follows ComfyUI's KSampler.set_steps: build the schedule for int(steps / denoise) steps
    and keep its last steps + 1 sigmas, so `steps` solver steps still run but start at a lower noise level.
    Returns a float64 CPU tensor of length steps + 1 ending at 0.
    """
    if schedule not in SCHEDULES:
        raise InvalidInputError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}.")
    _check_steps(steps)
    if not 0.0 < denoise <= 1.0:
        raise InvalidInputError(f"denoise must be in (0, 1], got {denoise}.")
    if denoise == 1.0:
        return SCHEDULES[schedule](steps, shift)
    full_steps = int(steps / denoise)
    return SCHEDULES[schedule](full_steps, shift)[-(steps + 1) :]
