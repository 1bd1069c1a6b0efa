"""Each family's reference sampling recipe: what a setting left to None (`auto` in the nodes) becomes.

Lumina-Image 2.0's original sample.py: shift 6 with renormalisation; the original Lumina-Next demo: shift 4, no
renormalisation; LTX-Video's pipelines: the resolution-dependent "ltx" schedule, whose shift None follows the
latent's token count, cfg 3 and plain guidance. Sources: docs/sampling.md, 'Family defaults'.
"""

from __future__ import annotations

FAMILY_DEFAULTS: dict[str, dict[str, float | str | None]] = {
    "lumina2": {"cfg": 4.0, "shift": 6.0, "schedule": "shifted_linear", "renorm_cfg": 1.0},
    "lumina_next": {"cfg": 4.0, "shift": 4.0, "schedule": "shifted_linear", "renorm_cfg": 0.0},
    "ltxv": {"cfg": 3.0, "shift": None, "schedule": "ltx", "renorm_cfg": 0.0},
}


def family_defaults(family: str | None) -> dict[str, float | str | None]:
    """The recipe of `family`; Lumina-Image 2.0's for a model of no known family (the sampler's own defaults)."""
    return dict(FAMILY_DEFAULTS.get(family or "", FAMILY_DEFAULTS["lumina2"]))
