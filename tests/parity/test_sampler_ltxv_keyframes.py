"""Conditioning at any frame and video-to-video: `sample(conditions=..., sigmas=...)` against diffusers'
LTXConditionPipeline, on the same tiny random transformer (causal frame positions, as 0.9.5+) and VAE.

Both sides get the same images and clips (already at the video's size), the same T5 features and the same seed:
the pipeline draws its random numbers from one CPU generator in the order our sampler does (the latent noise, each
appended condition's start noise, each step's condition noise), so "the same noise" is the same seed. The
pipeline's VAE encode returns the posterior mean, and both sides normalise it with the same statistics; its own
schedule is replaced by ours through `timesteps=` (`tests/fixtures/ltxv_pipelines.py`), and it returns the video
latent with output_type="latent".
"""

from __future__ import annotations

import pytest
import torch

from lumina_core.errors import InvalidInputError
from lumina_core.loading.transformer import load_transformer
from lumina_core.models.ltxv_keyframes import VideoCondition
from lumina_core.sampling import build_sigmas, sample
from lumina_core.sampling.recipes import DISTILLED_FIRST_PASS
from lumina_core.vae import VideoGuide, encode_conditions, load_vae
from tests.fixtures.ltx_vae_files import build_reference, write_layouts
from tests.fixtures.ltxv_files import make_reference, write_layout
from tests.fixtures.ltxv_pipelines import condition_pipeline, encode_to_mean, pipeline_condition, timesteps
from tests.fixtures.metrics import relative_error
from tests.fixtures.prompts import prompt_pair

CFG, FRAME_RATE, SEED = 3.0, 24.0, 11
FRAMES, HEIGHT, WIDTH = 33, 64, 96  # latent 5 x 2 x 3: 30 video tokens
LATENT = (2, 8, 5, 2, 3)
TOLERANCE = 1e-5


SIGMAS = build_sigmas("ltx", 4, None, tokens=30).tolist()

# name -> [(kind, frame index, strength)]: "image" one frame, "clip" 17 frames (3 latent frames)
CASES = {
    "first frame": [("image", 0, 1.0)],
    "middle keyframe (frame 13, off the stride)": [("image", 13, 1.0)],
    "last frame": [("image", -1, 1.0)],
    "clip at frame 8 (2 latent frames appended, 1 in place)": [("clip", 8, 1.0)],
    "clip at frame 0 (in place)": [("clip", 0, 1.0)],
    "first and last frame, the last at strength 0.6": [("image", 0, 1.0), ("image", 32, 0.6)],
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t")
    return load_transformer(write_layout(make_reference(seed=0), "lightricks.safetensors", folder, causal=True))


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    reference = build_reference("0.9.5", seed=3)
    ours = load_vae(write_layouts(reference, tmp_path_factory.mktemp("vae"))["original file"])
    return ours, encode_to_mean(reference)


@pytest.fixture(scope="module")
def pipe(vaes):
    return condition_pipeline(vaes[1])


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return {
        **prompt_pair(g, 12),
        "image": [torch.rand(2, 3, HEIGHT, WIDTH, generator=g) for _ in range(2)],
        "clip": torch.rand(2, 3, 17, HEIGHT, WIDTH, generator=g),
        "video": torch.rand(1, 3, FRAMES, HEIGHT, WIDTH, generator=g),
    }


def media(inputs, kind: str, number: int) -> torch.Tensor:
    return inputs["clip"] if kind == "clip" else inputs["image"][number % 2]


def run_pipeline(pipe, inputs, items, sigmas=SIGMAS, noise_scale=0.0, **call) -> torch.Tensor:
    conditions = [pipeline_condition(media(inputs, kind, n), index % FRAMES, strength)
                  for n, (kind, index, strength) in enumerate(items)]  # fmt: skip
    pos, neg = inputs["positive"], inputs["negative_padded"]
    batch = call.pop("batch", 2)
    out = pipe(
        conditions=conditions or None, prompt_embeds=pos.embeds[:batch], prompt_attention_mask=pos.mask[:batch].long(),
        negative_prompt_embeds=neg.embeds[:batch], negative_prompt_attention_mask=neg.mask[:batch].long(),
        height=HEIGHT, width=WIDTH, num_frames=FRAMES, frame_rate=FRAME_RATE, timesteps=timesteps(sigmas),
        guidance_scale=CFG, image_cond_noise_scale=noise_scale, generator=torch.Generator().manual_seed(SEED),
        output_type="latent", **call,
    ).frames  # fmt: skip
    return out  # (B, C, F, H, W): this pipeline unpacks its latents itself


def our_conditions(vae, inputs, items) -> list[VideoCondition]:
    guides = [VideoGuide(media(inputs, kind, n), index, strength) for n, (kind, index, strength) in enumerate(items)]
    return encode_conditions(vae, guides, HEIGHT, WIDTH)


def run_sample(model, conditions, inputs, sigmas=SIGMAS, batch=2, **options) -> torch.Tensor:
    pos, neg = inputs["positive"], inputs["negative"]
    return sample(
        model, pos.repeat_to(2), neg.repeat_to(2), batch_size=batch, seed=SEED, cfg=CFG, renorm_cfg=0.0,
        sigmas=sigmas, width=WIDTH, height=HEIGHT, frames=FRAMES, conditions=conditions,
        model_options={"frame_rate": FRAME_RATE}, **options,
    ) if batch == 2 else sample(
        model, _first(pos), _first(neg), batch_size=1, seed=SEED, cfg=CFG, renorm_cfg=0.0, sigmas=sigmas,
        conditions=conditions, model_options={"frame_rate": FRAME_RATE}, **options,
    )  # fmt: skip


def _first(conditioning):
    return type(conditioning)(conditioning.embeds[:1], conditioning.mask[:1])


@pytest.mark.parametrize("name", CASES)
def test_conditions_match_the_pipeline(model, vaes, pipe, inputs, name):
    items = CASES[name]
    expected = run_pipeline(pipe, inputs, items)
    ours = run_sample(model, our_conditions(vaes[0], inputs, items), inputs)
    assert relative_error(ours, expected) < TOLERANCE
    unconditioned = run_sample(model, None, inputs)
    assert relative_error(unconditioned, expected) > 1e-2  # the conditions changed the video


def test_kept_frames_come_back_exactly(model, vaes, inputs):
    conditions = our_conditions(vaes[0], inputs, [("image", 0, 1.0), ("clip", 8, 1.0)])
    out = run_sample(model, conditions, inputs)
    assert torch.equal(out[:, :, :1], conditions[0].latent)
    assert torch.equal(out[:, :, 3:4], conditions[1].latent[:, :, 2:])  # the clip's third latent frame, in place


def test_condition_noise_matches_the_pipeline(model, vaes, pipe, inputs):
    """The original's image_cond_noise_scale (0.15): kept tokens re-noised before every step from the same stream."""
    items = [("image", 0, 1.0), ("image", 13, 1.0), ("clip", 16, 1.0)]
    expected = run_pipeline(pipe, inputs, items, noise_scale=0.15)
    ours = run_sample(model, our_conditions(vaes[0], inputs, items), inputs, condition_noise_scale=0.15)
    assert relative_error(ours, expected) < TOLERANCE
    assert relative_error(run_sample(model, our_conditions(vaes[0], inputs, items), inputs), expected) > 1e-3


def test_distilled_sigmas_match_the_pipeline(model, vaes, pipe, inputs):
    """The 0.9.8 distilled first pass's fixed list (7 steps, the last to 0), with a first and a last frame."""
    sigmas = list(DISTILLED_FIRST_PASS)
    items = [("image", 0, 1.0), ("image", -1, 1.0)]
    expected = run_pipeline(pipe, inputs, items, sigmas=[*sigmas, 0.0])
    assert relative_error(run_sample(model, our_conditions(vaes[0], inputs, items), inputs, sigmas=sigmas),
                          expected) < TOLERANCE  # fmt: skip


def test_video_to_video_matches_the_pipeline(model, vaes, pipe, inputs):
    """An encoded video at denoise strength 0.6: the pipeline runs the last int(4 x 0.6) = 2 steps of its schedule
    from the noised latent; we start the same sigmas from init_latent (batch 1: the pipeline's noising broadcasts
    its per-sample sigma along the width, which only works for one sample)."""
    video = vaes[0].encode(inputs["video"])
    expected = run_pipeline(pipe, inputs, [], latents=video, denoise_strength=0.6, batch=1)
    ours = run_sample(model, None, inputs, sigmas=SIGMAS[2:], batch=1, init_latent=video)
    assert relative_error(ours, expected) < TOLERANCE
    assert relative_error(ours, video) > 1e-2


def test_dropped_or_misplaced_conditions_fail_the_comparison(model, vaes, inputs, pipe):
    """The comparison above could fail: each condition's presence, frame, strength and RoPE position matter."""
    items = [("image", 0, 1.0), ("image", 13, 1.0), ("clip", 16, 1.0)]
    expected = run_pipeline(pipe, inputs, items)
    conditions = our_conditions(vaes[0], inputs, items)
    first, middle, clip = conditions
    moved = [first, VideoCondition(middle.latent, 21), clip]
    wrong = {
        "middle keyframe dropped": [first, clip],
        "clip dropped": [first, middle],
        "middle keyframe at frame 21 instead of 13": moved,
        "clip at frame 8 instead of 16": [first, middle, VideoCondition(clip.latent, 8)],
        "first frame at strength 0.5": [VideoCondition(first.latent, 0, 0.5), middle, clip],
    }
    assert relative_error(run_sample(model, conditions, inputs), expected) < TOLERANCE
    for name, variant in wrong.items():
        assert relative_error(run_sample(model, variant, inputs), expected) > 1e-3, name
    causal = model.config.causal_temporal_positioning
    object.__setattr__(model.config, "causal_temporal_positioning", False)
    try:
        non_causal = run_sample(model, conditions, inputs)
    finally:
        object.__setattr__(model.config, "causal_temporal_positioning", causal)
    assert relative_error(non_causal, expected) > 1e-3, "frame positions without the causal fix"


@pytest.mark.parametrize(
    "items, message",
    [
        ([("image", 33, 1.0)], r"condition 1 \(image\) is at frame 33, outside the 33-frame video: use 0 to 32"),
        ([("image", -34, 1.0)], "outside the 33-frame video"),
        ([("clip", 12, 1.0)], r"condition 1 \(17-frame clip\) starts at frame 12: .* nearest valid index is 16"),
        ([("clip", 14, 1.0)], "nearest valid index is 16"),
        ([("clip", 24, 1.0)], r"runs past the end .* start it at frame 16 at the latest"),
        ([("image", 0, 1.0), ("clip", 0, 1.0)], "conditions 1 and 2 both cover latent frame 0"),
        ([("image", 0, 1.5)], r"strength 1\.5; it must lie in \[0, 1\]"),
    ],
)
def test_bad_conditions_are_named(model, vaes, inputs, items, message):
    with pytest.raises(InvalidInputError, match=message):
        run_sample(model, our_conditions(vaes[0], inputs, items), inputs)
