"""Named sampling recipes: the fixed timestep lists and guidance of distilled LTX-Video checkpoints.

Taken from Lightricks/LTX-Video's released configs (`configs/ltxv-13b-0.9.8-distilled.yaml`,
`ltxv-2b-0.9.8-distilled.yaml`, `ltxv-13b-0.9.7-distilled.yaml`): a distilled model is sampled on its own short
list of sigmas ("timesteps" there, in [0, 1]; the last step goes to 0) without classifier-free guidance
(guidance_scale 1) and without STG (stg_scale 0). Their multi-scale pipeline runs the first pass at 2/3 of the
size, upsamples the latent x2 and runs the second pass from the noised upsampled latent; the 13B 0.9.8 config
also tone-maps the final latent (compression 0.6, `multiscale.tone_map`).

The dev checkpoints' recipes (per-timestep CFG / STG / rescale tables, CFG-star) need STG, which this package
does not implement, so they are not listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError

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
