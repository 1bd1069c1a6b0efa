"""One-step ODE solvers for dx/dsigma = v(x, sigma) on a falling sigma grid.

Each solver is a pure function `(velocity, x, sigma, sigma_next) -> (x_next, v_start)`, where `velocity(x, sigma)`
returns v = noise - data at a float sigma, and `v_start` is the velocity at (x, sigma), which every solver
computes first; the sampler uses it for the preview x - sigma·v_start at no extra model call.

Lumina time t = 1 - sigma is an affine map of sigma, so a step of these solvers in sigma is the same step the
original code's torchdiffeq solvers take in t (their midpoint, the 3/8-rule rk4, and Euler).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
StepResult = tuple[torch.Tensor, torch.Tensor]


def euler(velocity: Velocity, x: torch.Tensor, sigma: float, sigma_next: float) -> StepResult:
    """First order, 1 model call: exact when the velocity is constant along the path (straight flows)."""
    v = velocity(x, sigma)
    return x + (sigma_next - sigma) * v, v


def midpoint(velocity: Velocity, x: torch.Tensor, sigma: float, sigma_next: float) -> StepResult:
    """Explicit midpoint (second order, 2 calls); the solver of the Lumina-Image 2.0 reference recipe."""
    h = sigma_next - sigma
    v = velocity(x, sigma)
    v_mid = velocity(x + 0.5 * h * v, sigma + 0.5 * h)
    return x + h * v_mid, v


def heun(velocity: Velocity, x: torch.Tensor, sigma: float, sigma_next: float) -> StepResult:
    """Heun / explicit trapezoid (second order, 2 calls), as k-diffusion's and ComfyUI's `heun` sampler.

    The step that ends at sigma = 0 falls back to Euler (1 call), the k-diffusion/ComfyUI convention: there the
    derivative is (x - denoised) / sigma, undefined at 0. A velocity model could be evaluated at 0, but keeping
    the convention makes our heun match ComfyUI's and saves a call.
    """
    h = sigma_next - sigma
    v = velocity(x, sigma)
    x_euler = x + h * v
    if sigma_next == 0:
        return x_euler, v
    v_end = velocity(x_euler, sigma_next)
    return x + 0.5 * h * (v + v_end), v


def rk4(velocity: Velocity, x: torch.Tensor, sigma: float, sigma_next: float) -> StepResult:
    """Fourth-order Runge-Kutta, 3/8 rule (4 calls), the variant torchdiffeq's "rk4" (and so the original) uses.

    Its last stage evaluates at sigma_next, which is 0 on the final step.
    """
    h = sigma_next - sigma
    k1 = velocity(x, sigma)
    k2 = velocity(x + h * k1 / 3, sigma + h / 3)
    k3 = velocity(x + h * (k2 - k1 / 3), sigma + 2 * h / 3)
    k4 = velocity(x + h * (k1 - k2 + k3), sigma_next)
    return x + h * (k1 + 3 * (k2 + k3) + k4) / 8, k1


@dataclass(frozen=True)
class Solver:
    step: Callable[[Velocity, torch.Tensor, float, float], StepResult]
    calls_per_step: int  # model evaluations of a step that ends above sigma 0


# Every step costs calls_per_step model evaluations, except heun's step to sigma = 0, which falls back to Euler
# (1 call): a heun run of N steps makes 2N - 1 calls, the others N * calls_per_step.
SOLVERS: dict[str, Solver] = {
    "euler": Solver(euler, 1),
    "midpoint": Solver(midpoint, 2),
    "heun": Solver(heun, 2),
    "rk4": Solver(rk4, 4),
}
