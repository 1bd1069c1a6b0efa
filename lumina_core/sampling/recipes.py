"""Sampling recipes: each family's reference settings, and the other released recipes of a family.

What a setting left to None (`auto` in the nodes) becomes: Lumina-Image 2.0's original sample.py, shift 6 with
renormalisation; the original Lumina-Next demo, shift 4, no renormalisation; LTX-Video's pipelines, the
resolution-dependent "ltx" schedule, whose shift None follows the latent's token count, cfg 3 and plain guidance;
Z-Image-Turbo, 8 Euler steps without guidance at its scheduler's shift 3. Sources: docs/sampling.md, 'Family
defaults'.

Named recipes a family's files cannot tell from its default one: Z-Image base, and the distilled LTX-Video
checkpoints from Lightricks/LTX-Video's released configs (`configs/ltxv-13b-0.9.8-distilled.yaml`,
`ltxv-2b-0.9.8-distilled.yaml`, `ltxv-13b-0.9.7-distilled.yaml`; docs/sampling.md, 'Distilled recipes'). A distilled
model is sampled on its own short list of sigmas ("timesteps" there, in [0, 1]; the last step goes to 0: `sigmas`
here, which replace steps, schedule and shift) without classifier-free guidance (guidance_scale 1) and without STG
(stg_scale 0). Their multi-scale pipeline runs the first pass at 2/3 of the size, upsamples the latent x2 and runs
the second pass from the noised upsampled latent; the 13B 0.9.8 config also tone-maps the final latent
(compression 0.6: `tone_map`, `multiscale.tone_map`). The dev checkpoints' recipes (per-timestep CFG / STG /
rescale tables, CFG-star) need STG, which this package does not implement, so they are not listed.
"""

from __future__ import annotations

from ..errors import InvalidInputError

Recipe = dict[str, float | int | str | tuple[float, ...] | None]

FAMILY_DEFAULTS: dict[str, Recipe] = {
    "lumina2": {"steps": 30, "cfg": 4.0, "shift": 6.0, "schedule": "shifted_linear", "renorm_cfg": 1.0},
    "lumina_next": {"steps": 30, "cfg": 4.0, "shift": 4.0, "schedule": "shifted_linear", "renorm_cfg": 0.0},
    "ltxv": {"steps": 30, "cfg": 3.0, "shift": None, "schedule": "ltx", "renorm_cfg": 0.0},
    "zimage": {"steps": 8, "cfg": 1.0, "shift": 3.0, "schedule": "shifted_linear", "renorm_cfg": 0.0},
}

# The distilled LTX-Video passes, identical in the 0.9.7 and 0.9.8 (2B and 13B) configs.
DISTILLED_FIRST_PASS = (1.0, 0.9937, 0.9875, 0.9812, 0.975, 0.9094, 0.725)
DISTILLED_SECOND_PASS = (0.9094, 0.725, 0.4219)


def _distilled(sigmas: tuple[float, ...], **extra: float) -> Recipe:
    """An LTX-Video distilled recipe: fixed sigmas (steps counts them), no guidance."""
    return {"steps": len(sigmas), "cfg": 1.0, "shift": None, "schedule": "ltx", "renorm_cfg": 0.0,
            "sigmas": sigmas, **extra}  # fmt: skip


# Other released recipes of a family, which its files cannot tell from the default one: name -> (family, recipe).
# Z-Image (base) has Z-Image-Turbo's tensors but is sampled like an undistilled model: its diffusers scheduler's
# shift 6, 50 steps (28-50) and guidance 4 in diffusers' pos + g(pos - neg), which is cfg 5 here (ComfyUI's
# template runs it at cfg 4 with shift 3), no guidance normalisation. The LTX-Video rows: the distilled 0.9.7/0.9.8
# single pass (or the multi-scale run's first), the second pass on the upsampled latent (2B 0.9.8, 13B 0.9.7), and
# the 13B 0.9.8 second pass with its tone map.
RECIPES: dict[str, tuple[str, Recipe]] = {
    **{family: (family, recipe) for family, recipe in FAMILY_DEFAULTS.items()},
    "zimage_base": ("zimage", {"steps": 50, "cfg": 5.0, "shift": 6.0, "schedule": "shifted_linear", "renorm_cfg": 0.0}),
    "ltxv-0.9.8-distilled": ("ltxv", _distilled(DISTILLED_FIRST_PASS)),
    "ltxv-0.9.8-distilled-refine": ("ltxv", _distilled(DISTILLED_SECOND_PASS)),
    "ltxv-13b-0.9.8-distilled-refine": ("ltxv", _distilled(DISTILLED_SECOND_PASS, tone_map=0.6)),
}


def family_defaults(family: str | None) -> Recipe:
    """The recipe of `family`; Lumina-Image 2.0's for a model of no known family (the sampler's own defaults)."""
    return dict(FAMILY_DEFAULTS.get(family or "", FAMILY_DEFAULTS["lumina2"]))


def named_recipe(name: str | None, family: str | None) -> Recipe:
    """The recipe called `name` (a row of RECIPES) for a model of `family`; None gives the family's own."""
    if name is None:
        return family_defaults(family)
    owner, recipe = RECIPES.get(name, (None, {}))
    if owner != family:
        known = ", ".join(key for key, (other, _) in RECIPES.items() if other == family)
        raise InvalidInputError(f"recipe {name!r} is not one of this {family} model's: {known}.")
    return dict(recipe)
