"""Classifier-free guidance variants for Lumina-Image 2.0, as named objects.

Every variant answers two questions the sampler asks at each model evaluation:
  - `needs_uncond(sigma, step, total)`: run the unconditional pass here, or only the conditional one?
  - `combine(cond, uncond)`: the guided velocity from the two predictions, both (B, C, H, W) float32.

Three published semantics differ (docs/sampling.md, 'CFG truncation and renormalisation'). The two implemented here:

| | `OriginalCFG` (Alpha-VLLM `forward_with_cfg`) | `DiffusersCFG` (`Lumina2Pipeline`) |
|---|---|---|
| guide while | Lumina time t = 1 - sigma < cfg_trunc | step fraction (i + 1) / N <= cfg_trunc_ratio |
| renorm norm | L2 over C, H, W, per sample | L2 over the last (width) axis, per latent row |
| renorm rule | clamp: shrink to r·‖cond‖ only if larger | always rescale to ‖cond‖ (r is 1) |

ComfyUI's RenormCFG node (guidance on the x0 prediction, truncation tested on sigma, so the same number selects
the opposite phase) is not implemented.

The velocity's sign (dx/dsigma here, dx/dt in the original code) flips cond, uncond and the guided value
together, so the guidance and both norms are the same in either convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import InvalidInputError


class Guidance(Protocol):
    """What the sampler needs from a guidance variant (see the module docstring)."""

    def needs_uncond(self, sigma: float, step: int, total: int) -> bool: ...

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor: ...


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Plain classifier-free guidance uncond + scale·(cond - uncond)."""
    return uncond + scale * (cond - uncond)


def clamp_norm_per_sample(guided: torch.Tensor, cond: torch.Tensor, ratio: float) -> torch.Tensor:
    """Shrink each sample of `guided` whose L2 norm (over all non-batch dims) is >= ratio·‖cond‖ to ratio·‖cond‖.

    The original compares the norms with `.item()`, which only works for batch 1; this is the same rule applied
    to every sample on its own. Samples below the limit are returned unchanged.
    """
    dims = tuple(range(1, guided.ndim))
    limit = ratio * torch.linalg.vector_norm(cond, dim=dims, keepdim=True)  # (B, 1, 1, 1)
    norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
    # clamp_min keeps 0 / 0 out: a zero guided sample is >= the limit only when the limit is 0 too, and stays 0.
    factor = torch.where(norm >= limit, limit / norm.clamp_min(torch.finfo(norm.dtype).tiny), 1.0)
    return guided * factor


def match_norm_last_axis(guided: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Rescale every row along the last axis of `guided` to the L2 norm of the same row of `cond` (diffusers)."""
    return guided * (
        torch.linalg.vector_norm(cond, dim=-1, keepdim=True) / torch.linalg.vector_norm(guided, dim=-1, keepdim=True)
    )


@dataclass(frozen=True)
class OriginalCFG:
    """Alpha-VLLM `NextDiT.forward_with_cfg` semantics; the default of `sample`.

    scale:     the guidance weight (1 means no guidance).
    cfg_trunc: guide while the Lumina time t = 1 - sigma is below it, i.e. in the early, noisy part, and run only
               the conditional pass afterwards. >= 1 never truncates (like the original's default 100; without
               this, rk4's last stage at sigma = 0, t = 1, would be unguided).
    renorm:    the clamp factor r of `clamp_norm_per_sample`; 0 disables renormalisation.
    """

    scale: float
    cfg_trunc: float = 1.0
    renorm: float = 1.0

    def __post_init__(self) -> None:
        if self.cfg_trunc < 0 or self.renorm < 0:
            raise InvalidInputError(
                f"cfg_trunc and renorm_cfg must be >= 0 (cfg_trunc >= 1 never truncates, renorm 0 disables it); "
                f"got cfg_trunc={self.cfg_trunc}, renorm_cfg={self.renorm}."
            )

    def needs_uncond(self, sigma: float, step: int, total: int) -> bool:
        return self.cfg_trunc >= 1.0 or 1.0 - sigma < self.cfg_trunc

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        guided = guide(cond, uncond, self.scale)
        return clamp_norm_per_sample(guided, cond, self.renorm) if self.renorm > 0 else guided


@dataclass(frozen=True)
class DiffusersCFG:
    """diffusers `Lumina2Pipeline` semantics, kept as an explicit mode for parity tests.

    scale:           the guidance weight; like the pipeline, no guidance at all unless it is > 1.
    trunc_ratio:     guide at step i (0-based) of N while (i + 1) / N <= trunc_ratio.
    normalize:       `cfg_normalization`: rescale each row along the last axis to the conditional row's norm.
    """

    scale: float
    trunc_ratio: float = 1.0
    normalize: bool = True

    def needs_uncond(self, sigma: float, step: int, total: int) -> bool:
        return self.scale > 1.0 and (step + 1) / total <= self.trunc_ratio

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        guided = guide(cond, uncond, self.scale)
        return match_norm_last_axis(guided, cond) if self.normalize else guided


def _diffusers_from_options(scale: float, cfg_trunc: float, renorm_cfg: float) -> DiffusersCFG:
    if renorm_cfg not in (0.0, 1.0):
        raise InvalidInputError(
            f"cfg_mode 'diffusers' only knows cfg_normalization on or off: renorm_cfg must be 1 or 0, got {renorm_cfg}."
        )
    return DiffusersCFG(scale, trunc_ratio=cfg_trunc, normalize=renorm_cfg == 1.0)


# name -> constructor taking (scale, cfg_trunc, renorm_cfg) as `sample` receives them.
CFG_MODES = {
    "original": OriginalCFG,
    "diffusers": _diffusers_from_options,
}


def make_guidance(mode: str, scale: float, cfg_trunc: float, renorm_cfg: float) -> Guidance:
    """Build the named guidance variant from `sample`'s options."""
    if mode not in CFG_MODES:
        raise InvalidInputError(f"unknown cfg_mode {mode!r}; choose one of {sorted(CFG_MODES)}.")
    return CFG_MODES[mode](scale, cfg_trunc, renorm_cfg)
