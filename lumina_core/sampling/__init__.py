"""Flow-matching sampling: sigma schedules, ODE solvers, classifier-free guidance variants and the loop."""

from .cfg import CFG_MODES, DiffusersCFG, Guidance, OriginalCFG, make_guidance
from .sampler import GuidedVelocity, check_settings, initial_noise, sample
from .schedules import SCHEDULES, build_sigmas, shift_sigmas, shifted_linear
from .solvers import SOLVERS, Solver, euler, heun, midpoint, rk4

__all__ = [
    "CFG_MODES",
    "SCHEDULES",
    "SOLVERS",
    "DiffusersCFG",
    "Guidance",
    "GuidedVelocity",
    "OriginalCFG",
    "Solver",
    "build_sigmas",
    "check_settings",
    "euler",
    "heun",
    "initial_noise",
    "make_guidance",
    "midpoint",
    "rk4",
    "sample",
    "shift_sigmas",
    "shifted_linear",
]
