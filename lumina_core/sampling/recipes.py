"""Each family's reference sampling recipe: what a setting left to None (`auto` in the nodes) becomes.

Lumina-Image 2.0's original sample.py: shift 6 with renormalisation; the original Lumina-Next demo: shift 4, no
renormalisation; LTX-Video's pipelines: the resolution-dependent "ltx" schedule, whose shift None follows the
latent's token count, cfg 3 and plain guidance; Z-Image-Turbo: 8 Euler steps without guidance at its scheduler's
shift 3. Sources: docs/sampling.md, 'Family defaults'.
"""

from __future__ import annotations

from ..errors import InvalidInputError

Recipe = dict[str, float | int | str | None]

FAMILY_DEFAULTS: dict[str, Recipe] = {
    "lumina2": {"steps": 30, "cfg": 4.0, "shift": 6.0, "schedule": "shifted_linear", "renorm_cfg": 1.0},
    "lumina_next": {"steps": 30, "cfg": 4.0, "shift": 4.0, "schedule": "shifted_linear", "renorm_cfg": 0.0},
    "ltxv": {"steps": 30, "cfg": 3.0, "shift": None, "schedule": "ltx", "renorm_cfg": 0.0},
    "zimage": {"steps": 8, "cfg": 1.0, "shift": 3.0, "schedule": "shifted_linear", "renorm_cfg": 0.0},
}
# Other released recipes of a family, which its files cannot tell from the default one: name -> (family, recipe).
# Z-Image (base) has Z-Image-Turbo's tensors but is sampled like an undistilled model: its diffusers scheduler's
# shift 6, 50 steps (28-50) and guidance 4 in diffusers' pos + g(pos - neg), which is cfg 5 here (ComfyUI's
# template runs it at cfg 4 with shift 3), no guidance normalisation.
RECIPES: dict[str, tuple[str, Recipe]] = {
    **{family: (family, recipe) for family, recipe in FAMILY_DEFAULTS.items()},
    "zimage_base": ("zimage", {"steps": 50, "cfg": 5.0, "shift": 6.0, "schedule": "shifted_linear", "renorm_cfg": 0.0}),
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
