"""`sample` with Z-Image against diffusers' ZImagePipeline, given the same initial latent and prompt features.

The pipeline takes one (L_b, D) tensor of real tokens per prompt and guides as pos + g·(pos - neg), which is
`sample`'s uncond + cfg·(cond - uncond) with cfg = g + 1; g = 0 (Z-Image-Turbo's recipe) runs the conditional pass
alone, as cfg = 1 does. Its truncation (no guidance once Lumina time exceeds cfg_truncation) and normalisation
(clamp each sample's guided norm to r x its conditional norm) are the original semantics `sample` implements.
With output_type="latent" it returns the raw model-space latent, which is what `sample` returns.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

from lumina_core.loading.transformer import load_transformer
from lumina_core.models.zimage import ZImageTransformer
from lumina_core.sampling import sample
from lumina_core.tiny import randomise_parameters
from tests.fixtures.diffusers_lumina2 import make_tiny_vae
from tests.fixtures.metrics import relative_error
from tests.fixtures.prompts import prompt_pair
from tests.fixtures.zimage_files import DiffusersZImageVelocity, make_reference, write_layout

TOLERANCE = 1e-5
SHIFT, STEPS = 3.0, 4
HEIGHT, WIDTH = 48, 80  # latent 6 x 10: 15 patches, padded to 32 with the image pad token


@pytest.fixture(scope="module")
def reference():
    """The tiny random model with its timestep MLP at the scale Z-Image's training starts from (std 0.02). Time
    enters as 1000 t: at std 0.2 a change of sigma by one float32 ulp moves the tiny model's velocity by 1e-4, so
    the pipeline's float32 schedule and timestep arithmetic ((1000 - 1000 sigma) / 1000) and ours (float64 schedule,
    1 - sigma) would differ by more than the bound for reasons of rounding alone; at std 0.02 by 3e-6."""
    model = make_reference(seed=0)
    randomise_parameters(model.t_embedder, seed=5, std=0.02)
    return model


@pytest.fixture(scope="module")
def ours(reference, tmp_path_factory):
    return load_transformer(
        write_layout(reference, "comfy.safetensors", tmp_path_factory.mktemp("ckpt")), axes_dims=(2, 2, 4)
    )


@pytest.fixture(scope="module")
def pipe(reference):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT, use_dynamic_shifting=False)
    pipeline = ZImagePipeline(
        scheduler=scheduler, vae=make_tiny_vae(), text_encoder=None, tokenizer=None, transformer=reference
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return {"latents": torch.randn(2, 4, HEIGHT // 8, WIDTH // 8, generator=g), **prompt_pair(g, 16)}


def real_tokens(conditioning) -> list[torch.Tensor]:
    return [embeds[mask] for embeds, mask in zip(conditioning.embeds, conditioning.mask)]


@torch.no_grad()
def run_pipeline(pipe, inputs, guidance: float, **options) -> torch.Tensor:
    return pipe(
        prompt_embeds=real_tokens(inputs["positive"]), negative_prompt_embeds=real_tokens(inputs["negative"]),
        latents=inputs["latents"].clone(), height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
        guidance_scale=guidance, output_type="latent", **options,
    ).images  # fmt: skip


def run_sample(model, inputs, cfg: float, **options) -> torch.Tensor:
    options = {"renorm_cfg": 0.0, **options}
    return sample(
        model, inputs["positive"], inputs["negative"], width=WIDTH, height=HEIGHT, batch_size=2,
        noise=inputs["latents"].clone(), steps=STEPS, shift=SHIFT, cfg=cfg, **options,
    )  # fmt: skip


CASES = {  # name: (pipeline guidance and options, sample options)
    "turbo-guidance-free": ({"guidance": 0.0}, {"cfg": 1.0}),
    "guidance-4": ({"guidance": 4.0}, {"cfg": 5.0}),
    "truncated-at-0.3": ({"guidance": 4.0, "cfg_truncation": 0.3}, {"cfg": 5.0, "cfg_trunc": 0.3}),
    "normalised": ({"guidance": 4.0, "cfg_normalization": 1.0}, {"cfg": 5.0, "renorm_cfg": 1.0}),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("transformer", ["diffusers-transformer", "our-transformer"])
def test_sample_matches_the_pipeline(pipe, reference, ours, inputs, case, transformer):
    model = DiffusersZImageVelocity(reference) if transformer == "diffusers-transformer" else ours
    pipeline_options, sample_options = CASES[case]
    expected = run_pipeline(pipe, inputs, **pipeline_options)
    assert relative_error(run_sample(model, inputs, **sample_options), expected) < TOLERANCE


def _with(model: ZImageTransformer, **changes) -> ZImageTransformer:
    other = ZImageTransformer(dataclasses.replace(model.config, **changes))
    other.load_state_dict(model.state_dict())
    return other.eval()


def test_the_comparison_can_fail(pipe, ours, inputs):
    """Pad tokens, RoPE theta, time scale and the guidance convention each move the result far from the pipeline."""
    expected = run_pipeline(pipe, inputs, guidance=4.0)
    other_pads = _with(ours)
    with torch.no_grad():
        other_pads.x_pad_token.normal_()
        other_pads.cap_pad_token.normal_()
    moved = {
        "pad tokens": run_sample(other_pads, inputs, cfg=5.0),
        "RoPE theta 10000": run_sample(_with(ours, rope_theta=10000.0), inputs, cfg=5.0),
        "time scale 1": run_sample(_with(ours, time_scale=1.0), inputs, cfg=5.0),
        "cfg = guidance_scale": run_sample(ours, inputs, cfg=4.0),
    }
    for name, latent in moved.items():
        assert relative_error(latent, expected) > 100 * TOLERANCE, name
