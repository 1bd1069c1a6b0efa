"""Flow-matching sampling: sigma schedules, ODE solvers, classifier-free guidance variants and the loop."""

from .cfg import CFG_MODES, DiffusersCFG, Guidance, OriginalCFG, make_guidance
from .sampler import GuidedVelocity, SamplingStats, check_settings, initial_noise, sample
from .schedules import SCHEDULES, build_sigmas, shift_sigmas, shifted_linear, sigmoid
from .solvers import SOLVERS, Dopri5, Solver, dopri5, euler, heun, midpoint, rk4
from .step_cache import TeaCache

__all__ = [
    "CFG_MODES",
    "SCHEDULES",
    "SOLVERS",
    "DiffusersCFG",
    "Dopri5",
    "Guidance",
    "GuidedVelocity",
    "OriginalCFG",
    "SamplingStats",
    "Solver",
    "TeaCache",
    "build_sigmas",
    "check_settings",
    "dopri5",
    "euler",
    "heun",
    "initial_noise",
    "make_guidance",
    "midpoint",
    "rk4",
    "sample",
    "shift_sigmas",
    "shifted_linear",
    "sigmoid",
]
