"""`sample` against diffusers' Lumina2Pipeline, and its original-semantics mode against a hand-written loop.

Both sides run the same tiny random transformer from the same initial latent and the same precomputed prompt
features (batch 2, captions of 9 and 6 tokens, negatives of 3 and 5). The pipeline returns the raw model-space
latent when output_type="latent" (the VAE's scale and shift are applied only before decoding), which is what
`sample` returns, so the two are compared directly.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn

from lumina_core.loading.transformer import load_transformer
from lumina_core.sampling import sample, shifted_linear
from tests.fixtures.diffusers_lumina2 import DiffusersLumina2Velocity, make_pipeline
from tests.fixtures.lumina2_files import make_reference, write_layout
from tests.fixtures.metrics import relative_error
from tests.fixtures.prompts import prompt_pair

SHIFT, STEPS, CFG = 6.0, 4, 4.0
HEIGHT, WIDTH = 64, 96  # latent 8 x 12: non-square


@pytest.fixture(scope="module")
def reference():
    return make_reference(seed=0)


@pytest.fixture(scope="module", params=["diffusers-transformer", "our-transformer"])
def model(request, reference, tmp_path_factory):
    """The reference behind our model convention, and our own port loaded from a ComfyUI file of its weights:
    the sampler is checked on its own, then end to end with our transformer."""
    if request.param == "diffusers-transformer":
        return DiffusersLumina2Velocity(reference)
    return load_transformer(write_layout(reference, "comfy.safetensors", tmp_path_factory.mktemp("ckpt")))


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


def run_pipeline(pipe, inputs, trunc_ratio: float, normalization: bool) -> torch.Tensor:
    pos, neg = inputs["positive"], inputs["negative_padded"]
    out = pipe(
        prompt_embeds=pos.embeds, prompt_attention_mask=pos.mask,
        negative_prompt_embeds=neg.embeds, negative_prompt_attention_mask=neg.mask,
        latents=inputs["latents"].clone(), height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
        guidance_scale=CFG, cfg_trunc_ratio=trunc_ratio, cfg_normalization=normalization, output_type="latent",
    )  # fmt: skip
    return out.images


def run_sample(model, inputs, **options) -> torch.Tensor:
    options = {"steps": STEPS, "cfg": CFG, "shift": SHIFT, "solver": "euler", **options}
    return sample(
        model, inputs["positive"], inputs["negative"], width=WIDTH, height=HEIGHT, batch_size=2,
        noise=inputs["latents"].clone(), **options,
    )  # fmt: skip


def test_scheduler_sigmas_are_our_shifted_linear():
    """Lumina2Pipeline passes sigmas linspace(1, 1/N, N) to a static-shift scheduler, which appends 0."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT, use_dynamic_shifting=False)
    scheduler.set_timesteps(sigmas=torch.linspace(1, 1 / 12, 12).tolist())
    torch.testing.assert_close(shifted_linear(12, SHIFT).float(), scheduler.sigmas, rtol=0, atol=1e-6)


@pytest.mark.parametrize("normalization", [True, False], ids=["norm", "no-norm"])
@pytest.mark.parametrize("trunc_ratio", [1.0, 0.5], ids=["no-trunc", "trunc-0.5"])
def test_diffusers_mode_matches_lumina2_pipeline(model, pipe, inputs, trunc_ratio, normalization):
    expected = run_pipeline(pipe, inputs, trunc_ratio, normalization)
    ours = run_sample(model, inputs, cfg_mode="diffusers", cfg_trunc=trunc_ratio, renorm_cfg=float(normalization))
    assert relative_error(expected, inputs["latents"]) > 0.5  # the latent really moved
    assert relative_error(ours, expected) < 1e-5


class Negated(nn.Module):
    """A velocity model with the wrong sign convention (dx/dt instead of dx/dsigma)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args):
        return -self.model(*args)

    def latent_shape(self, *args):
        return self.model.latent_shape(*args)


def test_parity_check_catches_a_wrong_sign_or_shift(model, pipe, inputs):
    expected = run_pipeline(pipe, inputs, 1.0, True)
    assert relative_error(run_sample(Negated(model), inputs, cfg_mode="diffusers"), expected) > 0.5
    assert relative_error(run_sample(model, inputs, cfg_mode="diffusers", shift=3.0), expected) > 0.05


def alpha_vllm_loop(
    transformer, inputs, scale: float, cfg_trunc: float, renorm: float, solver: str = "euler"
) -> torch.Tensor:
    """The original sampler's semantics, written in its own terms: Lumina time t from 0 (noise) to 1, the raw
    network output v = data - noise, Euler or torchdiffeq's midpoint on the time-shifted grid, and
    `forward_with_cfg`'s rules at every evaluation (guide while t < cfg_trunc with cond and uncond in one batch,
    else cond alone; clamp the guided norm to renorm·|cond| over all dims). It runs one sample at a time because
    the original's `.item()` comparison needs batch 1."""
    t = torch.linspace(0, 1, STEPS + 1, dtype=torch.float64)
    grid = (t / (t + SHIFT - SHIFT * t)).tolist()  # Lumina time shift
    results = []
    for b in range(inputs["latents"].shape[0]):
        velocity = alpha_vllm_velocity(transformer, inputs, b, scale, cfg_trunc, renorm)
        z = inputs["latents"][b : b + 1]
        for t0, t1 in itertools.pairwise(grid):
            h = t1 - t0
            if solver == "euler":
                z = z + h * velocity(z, t0)
            else:  # midpoint: half an Euler step, then the full step with the velocity found there
                z = z + h * velocity(z + 0.5 * h * velocity(z, t0), t0 + 0.5 * h)
        results.append(z)
    return torch.cat(results)


def alpha_vllm_velocity(transformer, inputs, b: int, scale: float, cfg_trunc: float, renorm: float):
    """`forward_with_cfg` for sample b: (z (1, C, H, W), Lumina time t) -> the guided data - noise."""
    pos, neg = inputs["positive"], inputs["negative_padded"]

    def velocity(z: torch.Tensor, t: float) -> torch.Tensor:
        if t >= cfg_trunc:
            return transformer(z, torch.tensor([t]), pos.embeds[b : b + 1], pos.mask[b : b + 1]).sample
        out = transformer(
            hidden_states=torch.cat([z, z]), timestep=torch.tensor([t, t]),
            encoder_hidden_states=torch.cat([pos.embeds[b : b + 1], neg.embeds[b : b + 1]]),
            encoder_attention_mask=torch.cat([pos.mask[b : b + 1], neg.mask[b : b + 1]]),
        ).sample  # fmt: skip
        cond, uncond = out[:1], out[1:]
        v = uncond + scale * (cond - uncond)
        limit, norm = renorm * cond.norm().item(), v.norm().item()
        return v * (limit / norm) if renorm > 0 and norm >= limit else v

    return velocity


@torch.no_grad()
def test_original_mode_matches_the_alpha_vllm_semantics(reference, model, pipe, inputs):
    # Lumina time on the grid: 0, 0.053, 0.143, 0.333 -> cfg_trunc 0.2 guides three steps and skips the last.
    expected = alpha_vllm_loop(reference, inputs, CFG, cfg_trunc=0.2, renorm=1.0)
    ours = run_sample(model, inputs, cfg_mode="original", cfg_trunc=0.2, renorm_cfg=1.0)
    assert relative_error(ours, expected) < 1e-5
    untruncated = run_sample(model, inputs, cfg_mode="original")
    assert relative_error(untruncated, alpha_vllm_loop(reference, inputs, CFG, cfg_trunc=100, renorm=1.0)) < 1e-5
    # the skipped uncond pass changes the result far beyond the tolerance, so the first check tests truncation
    assert relative_error(ours, untruncated) > 0.05
    # same options, diffusers' rules (step-fraction truncation, row-wise rescaling): a different image
    assert relative_error(untruncated, run_pipeline(pipe, inputs, 1.0, True)) > 0.05


@torch.no_grad()
def test_original_mode_midpoint_matches_the_alpha_vllm_semantics(reference, model, inputs):
    # Midpoints sit at t 0.026, 0.098, 0.238, 0.667: cfg_trunc 0.2 guides both evaluations of the first two steps,
    # only the start of the third, and neither of the last.
    expected = alpha_vllm_loop(reference, inputs, CFG, cfg_trunc=0.2, renorm=1.0, solver="midpoint")
    ours = run_sample(model, inputs, solver="midpoint", cfg_mode="original", cfg_trunc=0.2, renorm_cfg=1.0)
    assert relative_error(ours, expected) < 1e-5
    euler = alpha_vllm_loop(reference, inputs, CFG, cfg_trunc=0.2, renorm=1.0)
    assert relative_error(ours, euler) > 0.05  # the solver really differs
