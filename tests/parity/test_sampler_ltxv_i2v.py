"""Image-to-video: `first_frame_conditioning` + `sample(init_latent, noise_mask)` against diffusers'
LTXImageToVideoPipeline, on the same tiny random transformer and the same tiny random VAE.

The conditioning latent: both sides encode the same image (batch 2, two images, already at the video's pixel
size so no resize is involved) with the same VAE weights, ours through `load_vae` and `first_frame_conditioning`,
the reference through diffusers' AutoencoderKLLTXVideo. The pipeline's own image branch cannot be used as is: it
draws a sample from the VAE posterior with its generator, where ComfyUI's LTXVImgToVideo (and ours) take the
posterior mean. So the reference start latent is built as that branch builds it, from the mean: the normalised
latent repeated over the frames, kept on frame 0 by the conditioning mask, noise elsewhere; it goes to the
pipeline as packed `latents=`, which `prepare_latents` then returns unchanged with its frame-0 conditioning mask.
From there the pipeline runs its own loop: timesteps t·(1 - mask) per token, [uncond, cond] guidance, a
scheduler step that skips frame 0. Both sides start from the same noise and the same T5 features (captions of 9
and 6 tokens, negatives of 3 and 5) and stay in the normalised latent space; the pipeline returns packed latents
with output_type="latent", unpacked here.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTXImageToVideoPipeline

from lumina_core.loading.transformer import load_transformer
from lumina_core.sampling import GuidedVelocity, build_sigmas, make_guidance, sample
from lumina_core.vae import first_frame_conditioning, load_vae
from tests.fixtures.ltx_vae_files import build_reference, write_layouts
from tests.fixtures.ltxv_files import make_reference, write_layout
from tests.fixtures.metrics import relative_error
from tests.fixtures.prompts import prompt_pair

STEPS, CFG, FRAME_RATE = 4, 3.0, 24.0
FRAMES, HEIGHT, WIDTH = 17, 64, 96  # latent 3 x 2 x 3: 18 tokens, 6 of them the conditioning frame
LATENT = (2, 8, 3, 2, 3)
TOLERANCE = 1e-5
# The released scheduler config (diffusers/LTX-Video-0.9.x scheduler_config.json;
# docs/sampling.md, 'LTX-Video schedule').
SCHEDULER = dict(
    use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024, max_image_seq_len=4096,
    shift_terminal=0.1,
)  # fmt: skip
RECIPE = dict(
    steps=STEPS, schedule="ltx", shift=None, solver="euler", renorm_cfg=0.0, model_options={"frame_rate": FRAME_RATE}
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_transformer(
        write_layout(make_reference(seed=0), "lightricks.safetensors", tmp_path_factory.mktemp("t"))
    )


@pytest.fixture(scope="module")
def pipe():
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    pipe = LTXImageToVideoPipeline(
        scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, transformer=make_reference(seed=0)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    g = torch.Generator().manual_seed(1)
    prompts = prompt_pair(g, 12)
    image = torch.rand(2, 3, HEIGHT, WIDTH, generator=g)

    reference_vae = build_reference("0.9.0", seed=3)
    vae = load_vae(write_layouts(reference_vae, tmp_path_factory.mktemp("vae"))["original file"])
    latent, mask = first_frame_conditioning(vae, image, LATENT)
    with torch.no_grad():
        mean = reference_vae.encode(image[:, :, None] * 2 - 1).latent_dist.mode()
    reference_latent = LTXImageToVideoPipeline._normalize_latents(
        mean, reference_vae.latents_mean, reference_vae.latents_std
    )
    return {
        "noise": torch.randn(LATENT, generator=g),
        **prompts,
        "latent": latent,
        "mask": mask,
        "reference_latent": reference_latent,
    }


def run_pipeline(pipe, inputs, cfg: float = CFG) -> torch.Tensor:
    """The pipeline's loop from its image branch's start latent (built from the posterior mean, see above)."""
    pos, neg = inputs["positive"], inputs["negative_padded"]
    conditioning_mask = torch.zeros(LATENT[0], 1, *LATENT[2:])
    conditioning_mask[:, :, 0] = 1.0
    repeated = inputs["reference_latent"].repeat(1, 1, LATENT[2], 1, 1)
    start = repeated * conditioning_mask + inputs["noise"] * (1 - conditioning_mask)
    out = pipe(
        prompt_embeds=pos.embeds, prompt_attention_mask=pos.mask.long(),
        negative_prompt_embeds=neg.embeds, negative_prompt_attention_mask=neg.mask.long(),
        latents=start.flatten(2).transpose(1, 2), height=HEIGHT, width=WIDTH, num_frames=FRAMES,
        frame_rate=FRAME_RATE, num_inference_steps=STEPS, guidance_scale=cfg, output_type="latent",
    ).frames  # fmt: skip
    return out.transpose(1, 2).unflatten(2, LATENT[2:])  # (B, F*H*W, C) -> (B, C, F, H, W)


def run_sample(model, inputs, cfg: float = CFG, **options) -> torch.Tensor:
    options = {"init_latent": inputs["latent"], "noise_mask": inputs["mask"], **RECIPE, **options}
    return sample(
        model, inputs["positive"], inputs["negative"], cfg=cfg, batch_size=2, noise=inputs["noise"].clone(), **options
    )


def run_variant(
    model, inputs, per_token_sigma: bool = True, keep: bool = True, sigmas: list[float] | None = None
) -> torch.Tensor:
    """The Euler loop of `sample` written out from its public pieces, with one part of the conditioning switchable:
    per_token_sigma False gives the model the shared sigma on every token (the conditioning frame looks noisy);
    keep False moves the kept tokens with the model's velocity instead of holding them (no restoring). sigmas
    replaces our float64 schedule (by the pipeline's float32 one)."""
    mask = inputs["mask"].expand(LATENT[0], 1, *LATENT[2:]).contiguous()
    if sigmas is None:
        sigmas = build_sigmas("ltx", STEPS, None, tokens=18).tolist()
    velocity = GuidedVelocity(
        model, inputs["positive"], inputs["negative"], make_guidance("original", CFG, 1.0, 0.0), torch.float32,
        model_options={"frame_rate": FRAME_RATE}, levels=mask if per_token_sigma else None,
    )  # fmt: skip
    x = (1 - mask) * inputs["latent"] + mask * inputs["noise"]
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        v = velocity(x, sigma, step=i, total=STEPS)
        x = x + (sigma_next - sigma) * (mask * v if keep else v)
    return x


def test_both_sides_condition_on_the_same_latent(inputs):
    assert relative_error(inputs["latent"][:, :, :1], inputs["reference_latent"]) < TOLERANCE
    assert inputs["mask"].flatten().tolist() == [0.0, 1.0, 1.0] * 2


@pytest.mark.parametrize("cfg", [CFG, 1.0], ids=["cfg", "no-cfg"])
def test_image_to_video_matches_the_pipeline(model, pipe, inputs, cfg):
    expected = run_pipeline(pipe, inputs, cfg)
    ours = run_sample(model, inputs, cfg)
    assert relative_error(expected[:, :, 1:], inputs["noise"][:, :, 1:]) > 0.5  # the generated frames moved
    assert relative_error(ours, expected) < TOLERANCE
    assert torch.equal(ours[:, :, :1], inputs["latent"][:, :, :1])  # the kept frame, bit for bit


def test_the_loop_is_the_pipelines_bit_for_bit(model, pipe, inputs):
    """The 1e-6 left above is the schedule's rounding (ours is float64, the scheduler's float32) and the two VAEs':
    `sample`'s loop on the pipeline's own sigmas and conditioning latent gives the pipeline's result exactly."""
    assert torch.equal(run_variant(model, inputs), run_sample(model, inputs))
    same_latent = {**inputs, "reference_latent": inputs["latent"][:, :, :1]}
    expected = run_pipeline(pipe, same_latent)
    assert torch.equal(run_variant(model, inputs, sigmas=pipe.scheduler.sigmas.tolist()), expected)


def test_each_part_of_the_conditioning_matters(model, pipe, inputs):
    """The comparison above could fail: the mask, holding the kept frame and the per-token sigma all matter."""
    expected = run_pipeline(pipe, inputs)
    wrong = {
        "noise mask ignored (text-to-video from the same noise)": run_sample(model, inputs, noise_mask=None),
        "kept frame not held (moved by the velocity)": run_variant(model, inputs, per_token_sigma=True, keep=False),
        "one sigma for every token": run_variant(model, inputs, per_token_sigma=False, keep=True),
        "strength 0.9 instead of 1": run_sample(model, inputs, noise_mask=inputs["mask"].clamp(min=0.1)),
    }
    for name, result in wrong.items():
        assert relative_error(result, expected) > 1e-3, name
