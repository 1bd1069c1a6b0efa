"""One-step ODE solvers for dx/dsigma = v(x, sigma) on a falling sigma grid.

Each solver is a pure function `(velocity, x, sigma, sigma_next) -> (x_next, v_start)`, where `velocity(x, sigma)`
returns v = noise - data at a float sigma, and `v_start` is the velocity at (x, sigma), which every solver
computes first; the sampler uses it for the preview x - sigma·v_start at no extra model call.

Lumina time t = 1 - sigma is an affine map of sigma, so a step of these solvers in sigma is the same step the
original code's torchdiffeq solvers take in t (their midpoint, the 3/8-rule rk4, Euler and dopri5).

`dopri5` is adaptive: one of its "steps" integrates a whole interval of the schedule with as many error-controlled
substeps as the tolerances need, so its model calls depend on the model and the tolerances (see `Dopri5`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import InvalidInputError, SamplingError

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
StepResult = tuple[torch.Tensor, torch.Tensor]
StepFn = Callable[[Velocity, torch.Tensor, float, float], StepResult]


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


# Dormand-Prince 5(4) (Dormand & Prince 1980; Hairer, Norsett & Wanner, Solving ODEs I, §II.5): stage nodes,
# stage weights, and the fifth-order solution weights, which are also the seventh stage's row, so that stage is
# the velocity at the step's end and starts the next step ("first same as last", 6 new calls per step).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# Fifth- minus fourth-order weights: the local error estimate is h · sum(e_i · k_i).
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


class Rewindable(Protocol):
    """State that follows the model calls (a step cache) and can forget the calls of a rejected substep."""

    def checkpoint(self) -> object: ...

    def rollback(self, mark: object) -> None: ...


def _rms(x: torch.Tensor) -> float:
    return torch.linalg.vector_norm(x).item() / math.sqrt(x.numel())


class Dopri5:
    """Adaptive Dormand-Prince 5(4) with standard step-size control, one instance per sampling run.

    Called like the fixed-step solvers, `(velocity, x, sigma, sigma_next) -> (x_next, v_start)`, it integrates
    the whole interval with substeps whose local error (the fifth- minus fourth-order solution) has an RMS, over
    every element of the batch, of at most 1 in units of atol + rtol·max(|x|, |x_next|): the error norm of
    torchdiffeq, whose defaults in the Lumina settings are atol 1e-6 and rtol 1e-3. The step size is carried
    from one interval to the next; the very first is chosen by Hairer's rule, at the cost of one extra call.

    Unlike torchdiffeq, which steps across the output times and interpolates, the last substep of an interval
    ends exactly on sigma_next, and the next interval starts with a fresh velocity call there (1 call per
    interval more than full reuse). So the model is never called outside the interval, at sigma < 0, and every
    call of interval i belongs to step i, as for the fixed-step solvers: step-counting CFG truncation
    (`cfg_mode="diffusers"`) means the same thing with every solver. A truncation threshold is a jump in the
    velocity; the controller crosses it with a few small (rejected, then accepted) substeps.

    Counters: `accepted` and `rejected` substeps so far. Each accepted or rejected substep costs 6 calls, each
    interval 1 more, and the first interval 1 more again.

    `rewind`, when set, is rolled back after every rejected substep and after the initial step-size probe, so
    state that follows the model calls (the step cache) only sees the calls of the accepted path.
    """

    def __init__(
        self, atol: float = 1e-6, rtol: float = 1e-3, max_substeps: int = 10_000, rewind: Rewindable | None = None
    ) -> None:
        if atol < 0 or rtol < 0 or atol + rtol == 0:
            raise InvalidInputError(
                f"dopri5 needs atol >= 0 and rtol >= 0, not both 0; got atol={atol}, rtol={rtol} "
                "(the original's defaults are 1e-6 and 1e-3)."
            )
        self.atol, self.rtol, self.max_substeps = atol, rtol, max_substeps
        self.rewind = rewind
        self.h: float | None = None  # the proposed size of the next substep, in sigma, positive
        self.accepted = 0
        self.rejected = 0

    def __call__(self, velocity: Velocity, x: torch.Tensor, sigma: float, sigma_next: float) -> StepResult:
        v_start = velocity(x, sigma)
        if sigma_next == sigma:
            return x, v_start
        direction = math.copysign(1.0, sigma_next - sigma)
        if self.h is None:
            mark = self._checkpoint()
            self.h = self._initial_step(velocity, x, sigma, v_start, abs(sigma_next - sigma), direction)
            self._rollback(mark)
        k1, s = v_start, sigma
        for _ in range(self.max_substeps):
            remaining = abs(sigma_next - s)
            last = remaining <= 1.01 * self.h  # stretch the proposal by up to 1% rather than leave a sliver
            h = remaining if last else self.h
            s_end = sigma_next if last else s + direction * h
            mark = self._checkpoint()
            x_new, k7, error = self._substep(velocity, x, s, s_end - s, k1)
            if not math.isfinite(error):
                raise SamplingError(
                    f"dopri5: the model returned NaN/inf between sigma {s:.4f} and {s_end:.4f}. Run the model in "
                    "bfloat16 or float32: float16 overflows."
                )
            # Step-size controller: 0.9 · error^(-1/5), kept within [0.2, 10], never growing after a rejection.
            factor = 10.0 if error == 0 else min(10.0, max(0.2, 0.9 * error**-0.2))
            if error <= 1.0:
                self.accepted += 1
                # A substep cut short to land on sigma_next says nothing against the longer proposal.
                self.h = max(self.h, h * factor) if last and h < self.h else h * factor
                x, k1, s = x_new, k7, s_end
                if last:
                    return x, v_start
            else:
                self.rejected += 1
                self._rollback(mark)
                self.h = h * min(1.0, factor)
            if self.h < 1e-10:
                break
        raise SamplingError(
            f"dopri5 could not integrate from sigma {sigma:.4f} to {sigma_next:.4f}: after {self.accepted} accepted "
            f"and {self.rejected} rejected substeps the step size is {self.h:.2e}. Loosen atol/rtol (now {self.atol}, "
            f"{self.rtol}) or use a fixed-step solver."
        )

    def _checkpoint(self) -> object:
        return None if self.rewind is None else self.rewind.checkpoint()

    def _rollback(self, mark: object) -> None:
        if self.rewind is not None:
            self.rewind.rollback(mark)

    def _substep(
        self, velocity: Velocity, x: torch.Tensor, s: float, dt: float, k1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One Dormand-Prince step of signed size dt from (x, s): the new x, the velocity there, the error norm."""
        k = [k1]
        for c, row in zip(_DP_C[1:], _DP_A[1:], strict=True):
            x_stage = x + dt * sum(a * k_j for a, k_j in zip(row, k, strict=True) if a != 0.0)
            k.append(velocity(x_stage, s + c * dt))
        x_new = x_stage  # the seventh stage sits at the fifth-order solution
        error = dt * sum(e * k_j for e, k_j in zip(_DP_E, k, strict=True) if e != 0.0)
        scale = self.atol + self.rtol * torch.maximum(x.abs(), x_new.abs())
        return x_new, k[-1], _rms(error / scale)

    def _initial_step(
        self, velocity: Velocity, x: torch.Tensor, sigma: float, v: torch.Tensor, span: float, direction: float
    ) -> float:
        """Hairer, Norsett & Wanner's starting step (Solving ODEs I, §II.4), one velocity call; at most `span`."""
        scale = self.atol + self.rtol * x.abs()
        d0, d1 = _rms(x / scale), _rms(v / scale)
        h0 = 0.01 * d0 / d1 if d0 >= 1e-5 and d1 >= 1e-5 else 1e-6
        h0 = min(h0, span)
        v1 = velocity(x + direction * h0 * v, sigma + direction * h0)
        d2 = _rms((v1 - v) / scale) / h0
        h1 = (0.01 / max(d1, d2)) ** 0.2 if max(d1, d2) > 1e-15 else max(1e-6, h0 * 1e-3)
        return min(100 * h0, h1, span)


def dopri5(velocity: Velocity, x: torch.Tensor, sigma: float, sigma_next: float) -> StepResult:
    """One interval of `Dopri5` with a fresh step size and the default tolerances (atol 1e-6, rtol 1e-3)."""
    return Dopri5()(velocity, x, sigma, sigma_next)


@dataclass(frozen=True)
class Solver:
    step: StepFn
    calls_per_step: int | None  # model evaluations of a step that ends above sigma 0; None when adaptive
    adaptive: Callable[[float, float], Dopri5] | None = None  # (atol, rtol) -> a stepper for one run


# Every step costs calls_per_step model evaluations, except heun's step to sigma = 0, which falls back to Euler
# (1 call): a heun run of N steps makes 2N - 1 calls, the others N * calls_per_step. dopri5's count depends on
# the tolerances and the model; `sample(..., stats=SamplingStats())` reports it.
SOLVERS: dict[str, Solver] = {
    "euler": Solver(euler, 1),
    "midpoint": Solver(midpoint, 2),
    "heun": Solver(heun, 2),
    "rk4": Solver(rk4, 4),
    "dopri5": Solver(dopri5, None, adaptive=Dopri5),
}
