"""Step caching (TeaCache): skip the transformer's block stack when its input has hardly changed since the last call.

TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model", arXiv 2411.19108;
ali-vilab/TeaCache) watches the first block's modulated input, i.e. the token features the first block would feed its
attention after the timestep modulation. At every model call it takes the relative L1 change of that tensor since the
previous call, mean |now - before| / mean |before|, maps it through a polynomial fitted per model family (how the
change of the input predicts the change of the output), and adds it to a running sum. While the sum stays below the
threshold, the whole block stack is skipped and the residual it added at the last computed call (stack output minus
stack input) is added to the new input instead; once the sum reaches the threshold the stack runs, its residual is
kept and the sum starts again from 0. The first and the last step always run the stack. docs/sampling.md, 'Step
caching (TeaCache)', says how this carries over to our sampler.

The polynomials are the published ones, from ali-vilab/TeaCache (highest power first, as numpy.poly1d takes them):
  - Lumina-Image 2.0: `TeaCache4Lumina2/teacache_lumina2.py`, "v1" (the script's default) and "v2" (its README's
    alternative, with the latency table the README leads with: 50 steps on an RTX 4090, about 25 s -> 16.7 s at 0.2);
  - Lumina-Next: `TeaCache4Lumina-T2X/teacache_lumina_next.py` (A800, 30 steps, about 17 s -> 9 s at 0.3);
  - LTX-Video: `TeaCache4LTX-Video/teacache_ltx.py` (LTX-Video 0.9.1 on an A800, about 32 s -> 16 s at 0.05).
Lumina-Image 2.0's v1 numbers are Lumina-Next's.

What the model must offer (the transformers do, `models/stages.py`): its forward in stages, `embed(x, sigma, context,
context_mask, **options) -> (state, hidden)`, `run_blocks(state, hidden) -> hidden` (the span that is skipped) and
`head(state, hidden) -> velocity`, plus `probe(state, hidden) -> (modulated, weights)`: the first block's modulated
input (B, N, D) and per-token weights (B, N) or None, 0 for padding slots that must not count.

One `StepCache` holds the state of one sampling run. The sampler makes a fresh one per run, so nothing leaks from a
run into the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import InvalidInputError


@dataclass(frozen=True)
class RescalePolynomial:
    """A published TeaCache polynomial: coefficients highest power first; `source` names where it is published."""

    coefficients: tuple[float, ...]
    source: str

    def __call__(self, change: float) -> float:
        value = 0.0
        for c in self.coefficients:  # Horner's rule
            value = value * change + c
        return value


LUMINA2_V1 = RescalePolynomial(
    (393.76566581, -603.50993606, 209.10239044, -23.00726601, 0.86377344),
    "ali-vilab/TeaCache TeaCache4Lumina2/teacache_lumina2.py (v1, the script's default)",
)
LUMINA2_V2 = RescalePolynomial(
    (225.7042019806413, -608.8453716535591, 304.1869942338369, 124.21267720116742, -1.4089066892956552),
    "ali-vilab/TeaCache TeaCache4Lumina2 README (v2)",
)
LUMINA_NEXT = RescalePolynomial(
    (393.76566581, -603.50993606, 209.10239044, -23.00726601, 0.86377344),
    "ali-vilab/TeaCache TeaCache4Lumina-T2X/teacache_lumina_next.py",
)
LTX_VIDEO = RescalePolynomial(
    (2.14700694e01, -1.28016453e01, 2.31279151e00, 7.92487521e-01, 9.69274326e-03),
    "ali-vilab/TeaCache TeaCache4LTX-Video/teacache_ltx.py",
)
# family -> {variant name: polynomial}; the first variant is the family's default.
POLYNOMIALS: dict[str, dict[str, RescalePolynomial]] = {
    "lumina2": {"v2": LUMINA2_V2, "v1": LUMINA2_V1},
    "lumina_next": {"published": LUMINA_NEXT},
    "ltxv": {"published": LTX_VIDEO},
}
# The thresholds each publication recommends (its speed-up for that family, at the quality it shows).
PUBLISHED_THRESHOLDS = {"lumina2": 0.2, "lumina_next": 0.3, "ltxv": 0.05}


@dataclass(frozen=True)
class TeaCache:
    """What `sample(cache=...)` takes: the threshold and, optionally, a polynomial variant of the family.

    threshold: the running sum of rescaled changes below which calls reuse the cached residual; 0 never skips
        (the stages still run, so the result equals an uncached run bit for bit). Higher skips more.
    variant: a key of POLYNOMIALS[family] (Lumina-Image 2.0: "v2", the default, or "v1"); None takes the first.
    """

    threshold: float
    variant: str | None = None

    def __post_init__(self) -> None:
        if not self.threshold >= 0:
            raise InvalidInputError(
                f"the step-cache threshold must be a number >= 0 (0 = never skip); got {self.threshold!r}."
            )

    def polynomial(self, family: str | None) -> RescalePolynomial:
        variants = POLYNOMIALS.get(family or "")
        if variants is None:
            raise InvalidInputError(
                f"step caching (TeaCache) has published coefficients for {', '.join(POLYNOMIALS)} models, not for "
                f"{family or 'this model'}; sample without cache."
            )
        if self.variant is None:
            return next(iter(variants.values()))
        if self.variant not in variants:
            raise InvalidInputError(
                f"unknown TeaCache variant {self.variant!r} for {family}; choose one of {sorted(variants)}."
            )
        return variants[self.variant]


class CacheStages(Protocol):
    """The forward of a model split where the cache works (see the module docstring)."""

    def embed(self, x, sigma, context, context_mask, **options) -> tuple[Any, torch.Tensor]: ...
    def probe(self, state: Any, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...
    def run_blocks(self, state: Any, hidden: torch.Tensor) -> torch.Tensor: ...
    def head(self, state: Any, hidden: torch.Tensor) -> torch.Tensor: ...


# What the calls of a run carry: the conditional rows alone, or the conditional rows followed by as many
# unconditional ones (a guided call, [cond; uncond]).
COND, COND_UNCOND = "cond", "cond+uncond"


@dataclass(frozen=True)
class _Memory:
    """What the cache remembers between calls; replaced, never mutated, so a checkpoint is a reference."""

    rows: str  # COND or COND_UNCOND: the rows of the call that left it
    modulated: torch.Tensor  # the first block's modulated input at that call
    weights: torch.Tensor | None  # its token weights
    residual: torch.Tensor | None  # stack output - input at the last computed call (same rows), or None


class StepCache:
    """TeaCache state for one sampling run.

    Each model call passes the step it belongs to (the sampler's step index, of `total`) and which rows it carries.
    A guided call holds [cond; uncond]; when guidance is truncated the calls carry the cond rows alone, and the
    cache then compares with, and reuses, the cond half of what it remembers, so the shrinking batch continues the
    same per-sample history. A call whose rows the memory does not cover (the first one, or uncond rows after
    cond-only calls) or whose token layout differs (Lumina-Image 2.0's joint sequence when the cond-only caption
    is shorter) runs the stack and starts the sum again. One decision covers the whole call, measured over all its
    rows, as the published scripts do on a batched [cond; uncond] call.

    `checkpoint()` / `rollback(mark)` let an adaptive solver forget the calls of a substep it rejects, so only the
    accepted path feeds the running sum and the cached residual.
    """

    def __init__(self, threshold: float, polynomial: RescalePolynomial) -> None:
        self.threshold = threshold
        self.polynomial = polynomial
        self.accumulated = 0.0
        self.memory: _Memory | None = None
        self.skipped = 0  # calls that reused the residual (rolled-back calls included: they were not computed)

    def __call__(
        self,
        stages: CacheStages,
        x: torch.Tensor,
        sigma: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        options: dict[str, Any],
        *,
        step: int,
        total: int,
        rows: str,
    ) -> torch.Tensor:
        state, hidden = stages.embed(x, sigma, context, context_mask, **options)
        modulated, weights = stages.probe(state, hidden)
        remembered = self._remembered(rows, modulated.shape[0], modulated, weights)
        compute = self._decide(remembered, modulated, weights, always=step == 0 or step == total - 1)
        if compute:
            out = stages.run_blocks(state, hidden)
            residual = out - hidden
        else:
            residual = remembered.residual
            out = hidden + residual
            self.skipped += 1
        self.memory = _Memory(rows, modulated, weights, residual)
        return stages.head(state, out)

    def checkpoint(self) -> tuple[float, _Memory | None]:
        return self.accumulated, self.memory

    def rollback(self, mark: tuple[float, _Memory | None]) -> None:
        self.accumulated, self.memory = mark

    def _remembered(
        self, rows: str, batch: int, modulated: torch.Tensor, weights: torch.Tensor | None
    ) -> _Memory | None:
        """The memory cut to this call's rows, or None when it does not cover them."""
        memory = self.memory
        if memory is None or memory.residual is None:
            return None
        if memory.rows == COND_UNCOND and rows == COND:  # guidance truncated: keep the cond half
            kept = (_first_rows(t, batch) for t in (memory.modulated, memory.weights, memory.residual))
            memory = _Memory(rows, *kept)
        elif memory.rows != rows:
            return None
        same_weights = (memory.weights is None) == (weights is None) and (
            weights is None or memory.weights.shape == weights.shape
        )
        return memory if memory.modulated.shape == modulated.shape and same_weights else None

    def _decide(
        self, memory: _Memory | None, modulated: torch.Tensor, weights: torch.Tensor | None, always: bool
    ) -> bool:
        """Run the stack (True) or reuse the residual (False); updates the running sum."""
        if always or memory is None or self.threshold <= 0:
            self.accumulated = 0.0
            return True
        self.accumulated += self.polynomial(relative_l1(modulated, memory.modulated, weights))
        if self.accumulated < self.threshold:
            return False
        self.accumulated = 0.0
        return True


def relative_l1(now: torch.Tensor, before: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """mean |now - before| / mean |before| over every element (float32), tokens weighted by (B, N) `weights`.

    With 0/1 weights this is the published ratio over the real tokens alone, as if padding tokens were zeros.
    """
    diff, base = (now.float() - before.float()).abs(), before.float().abs()
    if weights is not None:
        w = weights.float()[..., None]
        diff, base = diff * w, base * w
    numerator, denominator = torch.stack([diff.sum(), base.sum()]).tolist()  # one host sync
    if denominator <= 0:
        return 0.0 if numerator == 0 else float("inf")
    return numerator / denominator


def _first_rows(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if t is None else t[:n]


def make_step_cache(cache: float | TeaCache | None, model: torch.nn.Module) -> StepCache | None:
    """The run's StepCache from `sample`'s `cache` argument (a threshold, a TeaCache, or None for no cache)."""
    if cache is None:
        return None
    settings = cache if isinstance(cache, TeaCache) else TeaCache(float(cache))
    polynomial = settings.polynomial(getattr(model, "family", None))
    missing = [name for name in ("embed", "probe", "run_blocks", "head") if not callable(getattr(model, name, None))]
    if missing:
        raise InvalidInputError(
            f"step caching needs the model's forward in stages; {type(model).__name__} lacks {', '.join(missing)}."
        )
    return StepCache(settings.threshold, polynomial)
