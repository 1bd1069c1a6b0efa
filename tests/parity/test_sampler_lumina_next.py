"""`sample` on Lumina-Next against diffusers' LuminaPipeline and against the original sampler's semantics.

Both sides run the same tiny random `LuminaNextDiT2DModel` from the same initial latent and the same
precomputed prompt features (batch 2, captions of 9 and 6 tokens, negatives of 3 and 5). The pipeline's
output_type="latent" result is the raw latent, before the VAE's 1 / 0.13025 scaling, which is what `sample`
returns, so the two are compared directly.

What the comparison pins down (docs/sampling.md, 'Lumina-Next guidance'): the sign and time conversion (the network
takes t = 1 - sigma and returns data - noise), the learned-sigma half dropped, the scheduler's static shift, guidance on
the first 3 of the 4 channels with the 4th conditional, and the RoPE scaling / proportional attention options reaching
every call. The pipeline is given `sigmas=linspace(1, 1/N, N)`: its default schedule shifts the last sigma twice (see
`test_pipeline_default_schedule_is_not_shifted_linear`), which none of our schedules copies.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn

from lumina_core.sampling import SamplingStats, sample, shift_sigmas, shifted_linear
from tests.fixtures.diffusers_lumina_next import DiffusersLuminaNextVelocity, make_pipeline, make_reference, rope_table
from tests.fixtures.metrics import relative_error
from tests.fixtures.prompts import prompt_pair

SHIFT, STEPS, CFG = 4.0, 4, 4.0
HEIGHT, WIDTH = 128, 192  # latent 16 x 24, 8 x 12 tokens: 1.5x the area of the tiny model's 128 x 128 default
# RoPE: linear scaling while t < 0.1, NTK from then on; the 4 steps start at t = 0, 0.077, 0.2, 0.43.
OPTIONS = {"scaling_watershed": 0.1, "proportional_attention": True}


@pytest.fixture(scope="module")
def reference():
    return make_reference(seed=0)


@pytest.fixture(scope="module")
def model(reference):
    return DiffusersLuminaNextVelocity(reference)


@pytest.fixture(scope="module")
def pipe(reference):
    return make_pipeline(reference, shift=SHIFT)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    prompts = prompt_pair(g, 16)
    return {
        "latents": torch.randn(2, 4, HEIGHT // 8, WIDTH // 8, generator=g),
        **prompts,
    }


def run_pipeline(pipe, inputs, cfg: float = CFG, options: dict = OPTIONS) -> torch.Tensor:
    pos, neg = inputs["positive"], inputs["negative_padded"]
    out = pipe(
        prompt_embeds=pos.embeds, prompt_attention_mask=pos.mask,
        negative_prompt_embeds=neg.embeds, negative_prompt_attention_mask=neg.mask,
        latents=inputs["latents"].clone(), height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
        sigmas=torch.linspace(1, 1 / STEPS, STEPS).tolist(), guidance_scale=cfg, output_type="latent",
        scaling_watershed=options["scaling_watershed"], proportional_attn=options["proportional_attention"],
    )  # fmt: skip
    return out.images


def run_sample(model, inputs, **options) -> torch.Tensor:
    """`sample` with LuminaPipeline's semantics: Euler, step-fraction CFG without renormalisation."""
    options = {
        "steps": STEPS, "cfg": CFG, "shift": SHIFT, "solver": "euler", "cfg_mode": "diffusers", "renorm_cfg": 0.0,
        "model_options": OPTIONS, **options,
    }  # fmt: skip
    latents = inputs["latents"]
    return sample(
        model, inputs["positive"], inputs["negative"], width=latents.shape[-1] * 8, height=latents.shape[-2] * 8,
        batch_size=2, noise=latents.clone(), **options,
    )  # fmt: skip


def test_pipeline_default_schedule_is_not_shifted_linear():
    """Without sigmas the scheduler runs linspace(1, shift(1/1000), N) through the shift again (its sigma_min was
    shifted when it was built), then appends 0; with sigmas=linspace(1, 1/N, N) it gives our shifted_linear."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT, use_dynamic_shifting=False)
    scheduler.set_timesteps(STEPS)
    sigma_min = shift_sigmas(torch.tensor(1e-3, dtype=torch.float64), SHIFT)
    default = shift_sigmas(torch.linspace(1, sigma_min.item(), STEPS, dtype=torch.float64), SHIFT)
    default = torch.cat([default, torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(scheduler.sigmas, default.float(), rtol=0, atol=1e-6)
    assert (scheduler.sigmas[1:-1] - shifted_linear(STEPS, SHIFT)[1:-1].float()).abs().max() > 0.1
    scheduler.set_timesteps(sigmas=torch.linspace(1, 1 / STEPS, STEPS).tolist())
    torch.testing.assert_close(scheduler.sigmas, shifted_linear(STEPS, SHIFT).float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "cfg, options",
    [(CFG, OPTIONS), (CFG, {"scaling_watershed": 1.0, "proportional_attention": False}), (1.0, OPTIONS)],
    ids=["cfg-ntk-proportional", "cfg-diffusers-defaults-no-proportional", "no-cfg"],
)
def test_sample_matches_lumina_pipeline(model, pipe, inputs, cfg, options):
    expected = run_pipeline(pipe, inputs, cfg, options)
    stats = SamplingStats()
    ours = run_sample(model, inputs, cfg=cfg, model_options=options, stats=stats)
    assert relative_error(expected, inputs["latents"]) > 0.5  # the latent really moved
    assert relative_error(ours, expected) < 1e-5
    assert stats.model_calls == STEPS and stats.uncond_calls == (STEPS if cfg > 1 else 0)


class Negated(nn.Module):
    """The model with the wrong sign convention (dx/dt instead of dx/dsigma)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.cfg_channels = model.cfg_channels

    def forward(self, *args, **options):
        return -self.model(*args, **options)

    def latent_shape(self, *args):
        return self.model.latent_shape(*args)


def test_parity_check_catches_a_wrong_sign_shift_channel_rule_or_option(model, pipe, inputs):
    expected = run_pipeline(pipe, inputs)
    assert relative_error(run_sample(model, inputs), expected) < 1e-5
    errors = {
        "sign": relative_error(run_sample(Negated(model), inputs), expected),
        "shift": relative_error(run_sample(model, inputs, shift=3.0), expected),
        "all channels guided": relative_error(run_sample(model, inputs, cfg_channels=4), expected),
        "no model options": relative_error(run_sample(model, inputs, model_options=None), expected),
    }
    assert errors["sign"] > 0.5
    assert all(error > 0.05 for error in errors.values()), errors


# ---------------------------------------------------------------- the original sampler's semantics


def original_loop(
    transformer, inputs, solver: str, steps: int, watershed: float = OPTIONS["scaling_watershed"]
) -> torch.Tensor:
    """Alpha-VLLM's Lumina-Next sampler written in its own terms: Lumina time t from 0 (noise) to 1 on
    linspace(0, 1, steps + 1) under the time shift t / (t + s - s·t), torchdiffeq's Euler or 3/8-rule rk4 on
    dx/dt, and `forward_with_cfg` at every evaluation: the cond half duplicated, the network's data - noise on
    [prompt, negative], guidance on channels 0-2 only, channel 3 from each branch, the cond half kept. RoPE is
    scaled as the demo does: linear before scale_watershed, NTK after, with the area ratio as the factor."""
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    grid = (t / (t + SHIFT - SHIFT * t)).tolist()
    pos, neg = inputs["positive"], inputs["negative_padded"]
    context, mask = torch.cat([pos.embeds, neg.embeds]), torch.cat([pos.mask, neg.mask])
    area = inputs["latents"].shape[-2] * inputs["latents"].shape[-1] * 8**2
    scale_factor = math.sqrt(area / (transformer.config.sample_size * 8) ** 2)

    def forward_with_cfg(z: torch.Tensor, t: float) -> torch.Tensor:
        half = z[: len(z) // 2]
        linear, ntk = (scale_factor, 1.0) if t < watershed else (1.0, scale_factor)
        rope = rope_table(transformer.head_dim, linear, ntk)
        out = transformer(
            hidden_states=torch.cat([half, half]), timestep=torch.full((len(z),), t), encoder_hidden_states=context,
            encoder_mask=mask, image_rotary_emb=rope,
            cross_attention_kwargs={"base_sequence_length": (transformer.config.sample_size * 8 // 16) ** 2},
        ).sample[:, :4]  # fmt: skip
        eps, rest = out[:, :3], out[:, 3:]
        cond_eps, uncond_eps = eps.chunk(2)
        half_eps = uncond_eps + CFG * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)

    z = torch.cat([inputs["latents"], inputs["latents"]])  # the ODE state is [cond, uncond]
    for t0, t1 in itertools.pairwise(grid):
        h = t1 - t0
        if solver == "euler":
            z = z + h * forward_with_cfg(z, t0)
        else:  # torchdiffeq "rk4": the 3/8 rule
            k1 = forward_with_cfg(z, t0)
            k2 = forward_with_cfg(z + h * k1 / 3, t0 + h / 3)
            k3 = forward_with_cfg(z + h * (k2 - k1 / 3), t0 + 2 * h / 3)
            k4 = forward_with_cfg(z + h * (k1 - k2 + k3), t1)
            z = z + h * (k1 + 3 * (k2 + k3) + k4) / 8
    return z[: len(z) // 2]


def run_original_mode(model, inputs, **options) -> torch.Tensor:
    """`sample` with the original Lumina-Next rules: per-call CFG, never truncated, no renormalisation."""
    return run_sample(model, inputs, cfg_mode="original", cfg_trunc=1.0, renorm_cfg=0.0, **options)


@torch.no_grad()
@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_original_mode_matches_the_alpha_vllm_sampler(reference, model, inputs, solver):
    expected = original_loop(reference, inputs, solver, STEPS)
    assert relative_error(run_original_mode(model, inputs, solver=solver), expected) < 1e-5
    assert relative_error(run_original_mode(model, inputs, solver=solver, cfg_channels=4), expected) > 0.05


@torch.no_grad()
def test_dopri5_converges_to_the_fine_grid_solution(reference, model, inputs):
    """dopri5 at tight tolerances against the original rk4 on 40 intervals (itself within 5e-6 of 80 intervals);
    at the default tolerances (atol 1e-6, rtol 1e-3) the error is of the order of rtol, at about a third of the
    calls. RoPE stays on linear scaling throughout (watershed 2): a switch to NTK is a jump in the velocity that no
    fixed grid resolves, and watershed 1 (diffusers' default) makes the very last evaluation, at t = 1, an NTK
    one. On an 8 x 12 latent to keep the ~450 calls fast."""
    small = {**inputs, "latents": inputs["latents"][..., :8, :12]}
    expected = original_loop(reference, small, "rk4", 40, watershed=2.0)
    smooth = {"scaling_watershed": 2.0, "proportional_attention": True}
    tight, default = SamplingStats(), SamplingStats()
    ours = run_original_mode(model, small, solver="dopri5", atol=1e-8, rtol=1e-6, stats=tight, model_options=smooth)
    assert relative_error(ours, expected) < 2e-5
    coarse = run_original_mode(model, small, solver="dopri5", stats=default, model_options=smooth)
    assert 1e-4 < relative_error(coarse, expected) < 1e-2
    assert default.model_calls == STEPS + 1 + 6 * (default.solver_steps + default.rejected_steps)
    assert default.model_calls < tight.model_calls / 2
