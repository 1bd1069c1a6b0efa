"""The multi-scale recipe: `upsample_latent` against diffusers' LTXLatentUpsamplePipeline, `tone_map` / `adain`
against its helpers, and the whole of `multiscale_sample` (distilled 0.9.8 recipe: small pass, x2 upsample with
AdaIN, refine from sigma 0.9094) against the same chain of diffusers pipelines: LTXConditionPipeline, then
LTXLatentUpsamplePipeline, then LTXConditionPipeline from the upsampled latent.

Batch 1 for the chain: the condition pipeline's video-to-video noising only works for one sample. The guide images
are given at the large size with 2x2 blocks of equal pixels, so that our fit to the small size (bilinear) and
diffusers' (nearest) give the same pixels; both warn or resize without changing them.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import LTXLatentUpsamplePipeline

from lumina_core.loading.transformer import load_transformer
from lumina_core.loading.upsampler import load_latent_upsampler
from lumina_core.multiscale import MultiscaleRecipe, adain, multiscale_sample, small_size, tone_map, upsample_latent
from lumina_core.sampling.recipes import DISTILLED_FIRST_PASS, DISTILLED_SECOND_PASS
from lumina_core.vae import VideoGuide, load_vae
from tests.fixtures.ltx_vae_files import build_reference, write_layouts
from tests.fixtures.ltxv_files import make_reference, write_layout
from tests.fixtures.ltxv_pipelines import condition_pipeline, encode_to_mean, pipeline_condition, timesteps
from tests.fixtures.ltxv_upsampler_files import make_reference as make_upsampler
from tests.fixtures.ltxv_upsampler_files import write_layouts as write_upsampler
from tests.fixtures.metrics import relative_error
from tests.fixtures.prompts import prompt_pair

TOLERANCE = 1e-5
WIDTH, HEIGHT, FRAMES, FRAME_RATE, SEED = 144, 96, 17, 24.0, 5  # small pass 96x64, refined at 192x128


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m")
    reference_vae = build_reference("0.9.5", seed=3)
    reference_upsampler = make_upsampler(seed=4)
    return {
        "model": load_transformer(write_layout(make_reference(seed=0), "lightricks.safetensors", folder, causal=True)),
        "vae": load_vae(write_layouts(reference_vae, folder / "vae")["original file"]),
        "upsampler": load_latent_upsampler(write_upsampler(reference_upsampler, folder / "up")["original file"]),
        "reference_vae": encode_to_mean(reference_vae),
        "reference_upsampler": reference_upsampler,
    }


@pytest.fixture(scope="module")
def upsample_pipe(models):
    pipe = LTXLatentUpsamplePipeline(vae=models["reference_vae"], latent_upsampler=models["reference_upsampler"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(2)
    blocks = [torch.rand(1, 3, HEIGHT * 4 // 6, WIDTH * 4 // 6, generator=g) for _ in range(2)]  # 64 x 96
    return {
        **prompt_pair(g, 12),
        "images": [b.repeat_interleave(2, -1).repeat_interleave(2, -2) for b in blocks],  # 128 x 192, 2x2 blocks
        "latent": torch.randn(2, 8, 3, 2, 3, generator=g),
    }


@pytest.mark.parametrize("factor", [0.0, 1.0, 0.5])
def test_upsample_latent_matches_the_pipeline(models, upsample_pipe, inputs, factor):
    latent = inputs["latent"]
    expected = upsample_pipe(latents=latent, adain_factor=factor, output_type="latent").frames
    ours = upsample_latent(models["upsampler"], latent, models["vae"], adain_factor=factor)
    assert ours.shape == (2, 8, 3, 4, 6)
    assert relative_error(ours, expected) < TOLERANCE
    # the statistics matter: upsampling the normalised latent directly is something else
    direct = models["upsampler"](latent)
    assert relative_error(adain(direct, latent, factor) if factor else direct, expected) > 1e-2


def test_adain_and_tone_map_match_the_pipelines_helpers(inputs):
    x, reference = inputs["latent"] * 2, inputs["latent"].flip(-1) + 0.3
    helper = LTXLatentUpsamplePipeline.adain_filter_latent
    assert relative_error(adain(x, reference, 0.7), helper(None, x, reference, 0.7)) < TOLERANCE
    for compression in (0.0, 0.6, 1.0):
        expected = LTXLatentUpsamplePipeline.tone_map_latents(None, x, compression)
        assert relative_error(tone_map(x, compression), expected) < TOLERANCE
    assert relative_error(tone_map(x, 0.6), x) > 1e-2


def run_chain(models, upsample_pipe, inputs, adain_factor: float = 1.0) -> torch.Tensor:
    """diffusers: the small pass, the upsample, the refining pass (timesteps [1, second list] at denoise 0.75, so
    that it starts at 0.9094 from the noised upsampled latent, as the original's second pass)."""
    pipe = condition_pipeline(models["reference_vae"])
    pos, neg = inputs["positive"], inputs["negative_padded"]
    (small_w, small_h), (big_w, big_h) = small_size(WIDTH, HEIGHT), (2 * 96, 2 * 64)
    conditions = [pipeline_condition(inputs["images"][0], 0), pipeline_condition(inputs["images"][1], FRAMES - 1)]
    common = dict(
        conditions=conditions, prompt_embeds=pos.embeds[:1], prompt_attention_mask=pos.mask[:1].long(),
        negative_prompt_embeds=neg.embeds[:1], negative_prompt_attention_mask=neg.mask[:1].long(),
        num_frames=FRAMES, frame_rate=FRAME_RATE, guidance_scale=1.0, image_cond_noise_scale=0.15,
        output_type="latent",
    )  # fmt: skip
    first = pipe(
        height=small_h, width=small_w, timesteps=timesteps([*DISTILLED_FIRST_PASS, 0.0]),
        generator=torch.Generator().manual_seed(SEED), **common,
    ).frames  # fmt: skip
    upsampled = upsample_pipe(latents=first, adain_factor=adain_factor, output_type="latent").frames
    second = [1.0, *DISTILLED_SECOND_PASS, 0.0]
    return pipe(
        height=big_h, width=big_w, latents=upsampled, timesteps=timesteps(second), denoise_strength=0.75,
        generator=torch.Generator().manual_seed(SEED), **common,
    ).frames  # fmt: skip


def run_ours(models, inputs, **recipe) -> torch.Tensor:
    guides = [VideoGuide(inputs["images"][0], 0), VideoGuide(inputs["images"][1], -1)]
    pos, neg = inputs["positive"], inputs["negative"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "condition 1 is 192x128; it was ... resized to 96x64"
        return multiscale_sample(
            models["model"], models["upsampler"], models["vae"], type(pos)(pos.embeds[:1], pos.mask[:1]),
            type(neg)(neg.embeds[:1], neg.mask[:1]), width=WIDTH, height=HEIGHT, frames=FRAMES, guides=guides,
            recipe=MultiscaleRecipe(**recipe), seed=SEED, condition_noise_scale=0.15, renorm_cfg=0.0,
            model_options={"frame_rate": FRAME_RATE},
        )  # fmt: skip


def test_the_multiscale_recipe_matches_the_pipelines(models, upsample_pipe, inputs):
    expected = run_chain(models, upsample_pipe, inputs)
    ours = run_ours(models, inputs)
    assert ours.shape == (1, 8, 3, 4, 6)
    assert relative_error(ours, expected) < TOLERANCE
    wrong = {
        "no AdaIN": run_ours(models, inputs, adain_factor=0.0),
        "tone-mapped": run_ours(models, inputs, tone_map=0.6),
        "refined from noise, not the upsampled latent": run_ours(
            models, inputs, second_pass={"sigmas": [1.0, *DISTILLED_SECOND_PASS]}
        ),
    }
    for name, result in wrong.items():
        assert relative_error(result, expected) > 1e-3, name
