"""`sample` on LTX-Video against diffusers' LTXPipeline, on the same tiny random transformer.

Both sides start from the same noise and the same precomputed T5 features (batch 2, captions of 9 and 6 tokens,
negatives of 3 and 5). The pipeline works on packed tokens (B, F*H*W, C): it is given the packed noise as
`latents=` and returns packed latents with output_type="latent", which are unpacked here. Both stay in the
normalised latent space (the pipeline un-normalises with the VAE statistics only when it decodes), so they are
compared directly. The pipeline needs no VAE for this: without one it takes the release's 32 x 32 x 8
compression, which our latent_shape uses too.

What the comparison pins down (docs/sampling.md, 'LTX-Video sampling'): timestep = sigma x 1000 and no sign
flip; the schedule (token-count shift, terminal stretch to 0.1); plain CFG with diffusers' [uncond, cond] batch;
the frame rate reaching the temporal RoPE; 5-D latents through the sampler.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

from lumina_core.errors import InvalidInputError
from lumina_core.loading.transformer import load_transformer
from lumina_core.sampling import SamplingStats, sample
from lumina_core.sampling.schedules import ltx, ltx_shift
from tests.fixtures.ltxv_files import make_reference, write_layout
from tests.fixtures.metrics import relative_error
from tests.fixtures.prompts import prompt_pair

STEPS, CFG, FRAME_RATE = 4, 3.0, 24.0
FRAMES, HEIGHT, WIDTH = 17, 64, 96  # latent 3 x 2 x 3: 18 tokens
LATENT = (2, 8, 3, 2, 3)
# The released scheduler config (diffusers/LTX-Video-0.9.x scheduler_config.json;
# docs/sampling.md, 'LTX-Video schedule').
SCHEDULER = dict(
    use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024, max_image_seq_len=4096,
    shift_terminal=0.1,
)  # fmt: skip


@pytest.fixture(scope="module")
def reference():
    return make_reference(seed=0)


@pytest.fixture(scope="module")
def model(reference, tmp_path_factory):
    return load_transformer(write_layout(reference, "lightricks.safetensors", tmp_path_factory.mktemp("ckpt")))


@pytest.fixture(scope="module")
def pipe(reference):
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    return LTXPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, transformer=reference)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    prompts = prompt_pair(g, 12)
    return {
        "noise": torch.randn(LATENT, generator=g),
        **prompts,
    }


def run_pipeline(pipe, inputs, cfg: float = CFG) -> torch.Tensor:
    pos, neg = inputs["positive"], inputs["negative_padded"]
    packed = inputs["noise"].flatten(2).transpose(1, 2)  # (B, C, F, H, W) -> (B, F*H*W, C)
    out = pipe(
        prompt_embeds=pos.embeds, prompt_attention_mask=pos.mask.long(),
        negative_prompt_embeds=neg.embeds, negative_prompt_attention_mask=neg.mask.long(),
        latents=packed.clone(), height=HEIGHT, width=WIDTH, num_frames=FRAMES, frame_rate=FRAME_RATE,
        num_inference_steps=STEPS, guidance_scale=cfg, output_type="latent",
    ).frames  # fmt: skip
    return out.transpose(1, 2).unflatten(2, LATENT[2:])


def run_sample(model, inputs, **options) -> torch.Tensor:
    """`sample` with the LTX recipe: the ltx schedule with its token-count shift, Euler, plain CFG."""
    options = {
        "steps": STEPS, "cfg": CFG, "schedule": "ltx", "shift": None, "solver": "euler", "renorm_cfg": 0.0,
        "model_options": {"frame_rate": FRAME_RATE}, **options,
    }  # fmt: skip
    return sample(
        model, inputs["positive"], inputs["negative"], width=WIDTH, height=HEIGHT, frames=FRAMES, batch_size=2,
        noise=inputs["noise"].clone(), **options,
    )  # fmt: skip


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
@pytest.mark.parametrize("steps", [1, 4, 20])
def test_ltx_schedule_equals_the_pipeline_scheduler(steps):
    tokens = 13 * 16 * 24  # 768 x 512, 97 frames; mu 2.37, ComfyUI's default shift
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    mu = calculate_shift(tokens, 1024, 4096, 0.95, 2.05)
    scheduler.set_timesteps(sigmas=torch.linspace(1, 1 / steps, steps).numpy(), mu=mu)
    ours = ltx(steps, ltx_shift(tokens))
    if steps == 1:  # the scheduler divides 0 by 0 (nothing to stretch); we keep [1, 0]
        assert torch.isnan(scheduler.sigmas[0]) and ours.tolist() == [1.0, 0.0]
        return
    torch.testing.assert_close(ours.float(), scheduler.sigmas, rtol=0, atol=1e-6)
    assert abs(ours[-2].item() - 0.1) < 1e-12


@pytest.mark.parametrize("cfg", [CFG, 1.0], ids=["cfg", "no-cfg"])
def test_sample_matches_ltx_pipeline(model, pipe, inputs, cfg):
    expected = run_pipeline(pipe, inputs, cfg)
    stats = SamplingStats()
    ours = run_sample(model, inputs, cfg=cfg, stats=stats)
    assert relative_error(expected, inputs["noise"]) > 0.5  # the latent really moved
    assert relative_error(ours, expected) < 1e-5
    assert stats.model_calls == STEPS and stats.uncond_calls == (STEPS if cfg > 1 else 0)


def test_each_recipe_choice_moves_the_result(model, pipe, inputs):
    """The comparison above could fail: the schedule, its shift, the frame rate and the guidance all matter."""
    expected = run_pipeline(pipe, inputs)
    wrong = {
        "shifted_linear without the terminal stretch": run_sample(model, inputs, schedule="shifted_linear",
                                                                  shift=ltx_shift(18)),
        "static shift 6 instead of the token-count shift": run_sample(model, inputs, shift=6.0),
        "frame rate 25 instead of 24": run_sample(model, inputs, model_options={"frame_rate": 25.0}),
        "Lumina's norm clamp on": run_sample(model, inputs, renorm_cfg=1.0),
        "cfg 4": run_sample(model, inputs, cfg=4.0),
    }  # fmt: skip
    for name, result in wrong.items():
        assert relative_error(result, expected) > 1e-3, name


def test_video_models_need_frames_and_image_models_refuse_them(model, inputs):
    with pytest.raises(InvalidInputError, match="makes videos: pass frames"):
        sample(model, inputs["positive"], width=WIDTH, height=HEIGHT, steps=1, schedule="ltx")
    with pytest.raises(InvalidInputError, match=r"96 frames .* nearest is 97"):
        sample(model, inputs["positive"], width=WIDTH, height=HEIGHT, frames=96, steps=1, schedule="ltx")
