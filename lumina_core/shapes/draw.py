"""Pictures from the trained shapes model, through the public loaders and `sample`, as a user would make them.

`ShapesModel` loads the three files once and draws captions at 64x64 with the shipped text-to-image
workflow's recipe (midpoint, 18 steps, shift 6, cfg 4, renormalisation 1, system prompt `real`, empty
negative prompt); the semantic test, `make demo` and `bench/quality.py` all draw through it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..loading.transformer import load_transformer
from ..outputs import save_images, to_pil, to_uint8
from ..sampling import sample
from ..sampling.sampler import SamplingStats, initial_noise
from ..text import load_text_encoder
from ..vae import load_vae
from . import FILES, WEIGHTS, analysis, dataset

RECIPE = {"steps": 18, "solver": "midpoint", "shift": 6.0, "cfg": 4.0, "renorm_cfg": 1.0}
SYSTEM_PROMPT = "real"


def shipped_files(folder: str | os.PathLike = WEIGHTS) -> dict[str, Path]:
    """role ("transformer", "text_encoder", "vae") -> path of the trained file in folder."""
    return {role: Path(folder) / name for role, name in FILES.items()}


class ShapesModel:
    """The trained text encoder and VAE in float32, and a transformer (float32 from the shipped file unless given)."""

    def __init__(self, folder: str | os.PathLike = WEIGHTS, transformer: nn.Module | None = None) -> None:
        self.files = shipped_files(folder)
        self.encoder = load_text_encoder(self.files["text_encoder"], dtype=torch.float32)
        self.vae = load_vae(self.files["vae"], dtype=torch.float32)
        if transformer is None:
            transformer = load_transformer(self.files["transformer"], dtype=torch.float32)
        self.transformer = transformer

    def draw(
        self,
        captions: Sequence[str],
        seeds: Sequence[int],
        transformer: nn.Module | None = None,
        stats: SamplingStats | None = None,
        **settings,
    ) -> np.ndarray:
        """(N, 64, 64, 3) uint8 pictures, caption i drawn from the noise of seeds[i], all in one batch.

        settings override RECIPE and reach `sample` (solver, steps, schedule, model_options ...); transformer
        replaces the model for this call. The noise of each picture is `initial_noise` of its own seed, so a
        picture does not depend on the others in the batch.
        """
        model = self.transformer if transformer is None else transformer
        positive = self.encoder.encode(list(captions), system_prompt=SYSTEM_PROMPT)
        negative = self.encoder.encode([""], system_prompt=SYSTEM_PROMPT, negative=True)
        shape = model.latent_shape(1, dataset.SIZE, dataset.SIZE)
        noise = torch.cat([initial_noise(shape, seed) for seed in seeds])
        latent = sample(
            model, positive, negative, width=dataset.SIZE, height=dataset.SIZE, batch_size=len(captions),
            noise=noise, stats=stats, **{**RECIPE, **settings},
        )  # fmt: skip
        with torch.inference_mode():
            return to_uint8(self.vae.decode(latent))


def held_out_seeds(count: int = 20) -> list[int]:
    """The seed of each held-out scene: its index."""
    return list(range(count))


def demo(out: str | os.PathLike, count: int = 6) -> list[Path]:
    """Draw the first `count` held-out scenes into out/shapes_<i>.png and say which match their captions."""
    scenes = dataset.held_out_scenes()[:count]
    pictures = ShapesModel().draw([s.caption for s in scenes], held_out_seeds(count))
    written = []
    for i, (scene, picture) in enumerate(zip(scenes, pictures)):
        written += save_images(
            to_pil(torch.from_numpy(picture).permute(2, 0, 1)[None] / 255), Path(out) / f"shapes_{i}.png"
        )
        verdict = "matches" if analysis.matches(picture, scene) else "does NOT match"
        print(f"{'shapes_' + str(i):40s} {verdict}: {scene.caption}")
    return written
