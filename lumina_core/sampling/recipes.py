"""Sampling recipes: each family's reference settings, and the named recipes of distilled LTX-Video checkpoints.

Family defaults, what a setting left to None (`auto` in the nodes) becomes: Lumina-Image 2.0's original sample.py,
shift 6 with renormalisation; the original Lumina-Next demo, shift 4, no renormalisation; LTX-Video's pipelines, the
resolution-dependent "ltx" schedule, whose shift None follows the latent's token count, cfg 3 and plain guidance.
Sources: docs/sampling.md, 'Family defaults'.

Named recipes, from Lightricks/LTX-Video's released configs (`configs/ltxv-13b-0.9.8-distilled.yaml`,
`ltxv-2b-0.9.8-distilled.yaml`, `ltxv-13b-0.9.7-distilled.yaml`; docs/sampling.md, 'Distilled recipes'): a
distilled model is sampled on its own short list of sigmas ("timesteps" there, in [0, 1]; the last step goes to 0)
without classifier-free guidance (guidance_scale 1) and without STG (stg_scale 0). Their multi-scale pipeline runs
the first pass at 2/3 of the size, upsamples the latent x2 and runs the second pass from the noised upsampled
latent; the 13B 0.9.8 config also tone-maps the final latent (compression 0.6, `multiscale.tone_map`). The dev
checkpoints' recipes (per-timestep CFG / STG / rescale tables, CFG-star) need STG, which this package does not
implement, so they are not listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError

FAMILY_DEFAULTS: dict[str, dict[str, float | str | None]] = {
    "lumina2": {"cfg": 4.0, "shift": 6.0, "schedule": "shifted_linear", "renorm_cfg": 1.0},
    "lumina_next": {"cfg": 4.0, "shift": 4.0, "schedule": "shifted_linear", "renorm_cfg": 0.0},
    "ltxv": {"cfg": 3.0, "shift": None, "schedule": "ltx", "renorm_cfg": 0.0},
}


def family_defaults(family: str | None) -> dict[str, float | str | None]:
    """The recipe of `family`; Lumina-Image 2.0's for a model of no known family (the sampler's own defaults)."""
    return dict(FAMILY_DEFAULTS.get(family or "", FAMILY_DEFAULTS["lumina2"]))


# The distilled first and second passes, identical in the 0.9.7 and 0.9.8 (2B and 13B) configs.
DISTILLED_FIRST_PASS = (1.0, 0.9937, 0.9875, 0.9812, 0.975, 0.9094, 0.725)
DISTILLED_SECOND_PASS = (0.9094, 0.725, 0.4219)


@dataclass(frozen=True)
class SamplingRecipe:
    """sigmas: the falling list without the final 0 (sample appends it); cfg: the guidance scale (1 = off, no
    negative pass); tone_map: compression applied to the final latent (0 = none)."""

    description: str
    sigmas: tuple[float, ...]
    cfg: float = 1.0
    tone_map: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.sigmas)


RECIPES: dict[str, SamplingRecipe] = {
    "ltxv-0.9.8-distilled": SamplingRecipe(
        "LTX-Video 0.9.7/0.9.8 distilled (2B and 13B), one pass or the first of the multi-scale run: 7 steps from "
        "noise, no guidance",
        DISTILLED_FIRST_PASS,
    ),
    "ltxv-0.9.8-distilled-refine": SamplingRecipe(
        "the multi-scale run's second pass on the upsampled latent (2B 0.9.8, 13B 0.9.7): 3 steps from sigma "
        "0.9094, no guidance",
        DISTILLED_SECOND_PASS,
    ),
    "ltxv-13b-0.9.8-distilled-refine": SamplingRecipe(
        "the 13B 0.9.8 distilled second pass: as ltxv-0.9.8-distilled-refine, then the final latent tone-mapped "
        "(compression 0.6)",
        DISTILLED_SECOND_PASS,
        tone_map=0.6,
    ),
}


def get_recipe(name: str) -> SamplingRecipe:
    """The named recipe; InvalidInputError listing the names for an unknown one."""
    if name not in RECIPES:
        raise InvalidInputError(f"unknown sampling recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    return RECIPES[name]
