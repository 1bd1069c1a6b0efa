"""Per-token sigma in the LTX-Video transformer and `sample(init_latent, noise_mask)`, on a tiny random model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lumina_core.conditioning import Conditioning
from lumina_core.errors import InvalidInputError
from lumina_core.models.ltxv import LTXVideoConfig, LTXVideoTransformer
from lumina_core.sampling import SOLVERS, build_sigmas, sample
from lumina_core.tiny import randomise_parameters
from tests.fixtures.metrics import relative_error

LATENT = (2, 8, 3, 2, 3)  # batch, channels, frames, rows, columns
OPTIONS = dict(steps=3, schedule="ltx", shift=None, cfg=3.0, renorm_cfg=0.0, batch_size=2)


@pytest.fixture(scope="module")
def model() -> LTXVideoTransformer:
    cfg = LTXVideoConfig(
        in_channels=8, out_channels=8, dim=32, n_layers=2, n_heads=2, cross_attention_dim=32, caption_channels=12,
        ffn_hidden=64,
    )  # fmt: skip
    torch.manual_seed(0)
    return randomise_parameters(LTXVideoTransformer(cfg), seed=0, std=0.2)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


POSITIVE = Conditioning(randn(2, 5, 12, seed=1), torch.arange(5)[None] < torch.tensor([[5], [3]]))
NEGATIVE = Conditioning(randn(1, 4, 12, seed=2), torch.ones(1, 4, dtype=torch.bool))
INIT, NOISE = randn(*LATENT, seed=3), randn(*LATENT, seed=4)


def first_frame_mask(strength: float = 1.0, batch: int = 2) -> torch.Tensor:
    mask = torch.ones(batch, 1, LATENT[2], 1, 1)
    mask[:, :, 0] = 1 - strength
    return mask


def run(model, **options) -> torch.Tensor:
    options = {**OPTIONS, "init_latent": INIT, "noise_mask": first_frame_mask(), "noise": NOISE.clone(), **options}
    return sample(model, POSITIVE, NEGATIVE, **options)


# ---- the transformer ----


def test_per_token_sigma_shared_by_all_tokens_equals_the_per_sample_sigma(model):
    """Only the row count of the time-embedding matmuls differs (B vs B x tokens): float32 rounding, ~5e-7."""
    x, context = randn(*LATENT, seed=5), POSITIVE
    sigma = torch.tensor([0.3, 0.8])
    per_sample = model(x, sigma, context.embeds, context.mask)
    per_token = model(x, sigma.view(2, 1, 1, 1, 1).expand(2, 1, *LATENT[2:]), context.embeds, context.mask)
    assert relative_error(per_token, per_sample) < 2e-6
    assert relative_error(model(x, sigma.flip(0), context.embeds, context.mask), per_sample) > 1e-2


def test_each_token_gets_its_own_sigma(model):
    """A sample whose tokens all share a sigma is unaffected by another sample's per-token sigmas, and changing
    the sigma of the first frame's tokens alone changes the prediction."""
    x, context = randn(*LATENT, seed=5), POSITIVE
    sigma = torch.full((2, 1, *LATENT[2:]), 0.6)
    sigma[1, :, 0] = 0.0
    out = model(x, sigma, context.embeds, context.mask)
    alone = model(x[:1], torch.tensor([0.6]), context.embeds[:1], context.mask[:1])
    assert relative_error(out[:1], alone) < 2e-6
    uniform = model(x[1:], torch.tensor([0.6]), context.embeds[1:], context.mask[1:])
    assert relative_error(out[1:], uniform) > 1e-2


@pytest.mark.parametrize("shape", [(2, 1, 3, 2, 1), (2, 3, 2, 3), (1, 1, 3, 2, 3), (2, 1)])
def test_the_transformer_names_a_wrong_sigma_shape(model, shape):
    with pytest.raises(InvalidInputError, match=r"one per sample, or \(2, 1, 3, 2, 3\), one per latent token"):
        model(randn(*LATENT, seed=5), torch.rand(shape), POSITIVE.embeds, POSITIVE.mask)


# ---- the sampler ----


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_kept_tokens_come_back_exactly_and_the_rest_is_generated(model, solver):
    out = run(model, solver=solver, atol=1e-3, rtol=1e-2)
    assert torch.equal(out[:, :, 0], INIT[:, :, 0])
    assert relative_error(out[:, :, 1:], INIT[:, :, 1:]) > 0.5
    assert relative_error(out[:, :, 1:], NOISE[:, :, 1:]) > 0.5


def test_a_mask_of_ones_is_plain_sampling(model):
    """With every token generated, the per-token clock is the shared one: the path of `sample` without a mask."""
    for solver in ("euler", "heun"):
        plain = run(model, solver=solver, noise_mask=None)
        assert relative_error(run(model, solver=solver, noise_mask=torch.ones(1, 1, 1, 1, 1)), plain) < 2e-6


def test_the_model_sees_each_tokens_sigma_and_start(model):
    """Partial strength 0.75 on frame 0 (level 0.25): the model gets min(sigma, 0.25) there, for the cond and uncond
    halves alike, and frame 0 starts re-noised to its own level: (1 - s0)·init + s0·noise, s0 = min(0.25, sigma0).
    """
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append((args[0].clone(), args[1].clone())))
    try:
        run(model, noise_mask=first_frame_mask(0.75), denoise=0.8)
    finally:
        hook.remove()
    sigmas = build_sigmas("ltx", 3, None, 0.8, tokens=18).tolist()
    assert len(calls) == 3
    for (x, sigma), expected in zip(calls, sigmas, strict=False):
        assert sigma.shape == (4, 1, *LATENT[2:]) and x.shape == (4, *LATENT[1:])
        torch.testing.assert_close(sigma[:, :, 0], torch.full((4, 1, 2, 3), min(0.25, expected)), rtol=0, atol=1e-7)
        torch.testing.assert_close(sigma[:, :, 1:], torch.full((4, 1, 2, 2, 3), expected), rtol=0, atol=1e-7)
    start = torch.tensor([min(0.25, sigmas[0]), sigmas[0], sigmas[0]])[:, None, None]  # (F, 1, 1): each frame's s0
    expected_start = (1 - start) * INIT + start * NOISE
    assert torch.allclose(calls[0][0], torch.cat([expected_start, expected_start]), atol=1e-6)


def test_a_partial_level_waits_until_the_schedule_reaches_it(model):
    """Level 0.25 on frame 0: those tokens stay where they started while the step's sigma is above 0.25, then move."""
    seen = []
    run(model, noise_mask=first_frame_mask(0.75), callback=lambda i, total, x, denoised: seen.append(x.clone()))
    sigmas = build_sigmas("ltx", 3, None, tokens=18).tolist()
    start = 0.75 * INIT[:, :, 0] + 0.25 * NOISE[:, :, 0]
    for x, sigma in zip(seen, sigmas, strict=False):
        waited = torch.allclose(x[:, :, 0], start, atol=1e-6)
        assert waited == (sigma > 0.25), sigma
    assert any(sigma > 0.25 for sigma in sigmas[:-1]) and any(sigma < 0.25 for sigma in sigmas[:-1])


def test_broadcast_masks_equal_the_full_mask(model):
    full = run(model, noise_mask=first_frame_mask().expand(2, 1, *LATENT[2:]).contiguous())
    assert torch.equal(run(model, noise_mask=first_frame_mask(batch=1)), full)
    assert torch.equal(run(model, noise_mask=first_frame_mask()), full)


def test_denoise_keeps_the_masked_frame_and_starts_the_rest_from_init(model):
    out = run(model, denoise=0.3)
    assert torch.equal(out[:, :, 0], INIT[:, :, 0])
    full = run(model)
    assert relative_error(out[:, :, 1:], INIT[:, :, 1:]) < relative_error(full[:, :, 1:], INIT[:, :, 1:])


class ImageModel(nn.Module):
    """An image model: one sigma per sample, no per_token_sigma."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x, sigma, context, context_mask):
        return x

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, ...]:
        return (batch_size, 4, height // 8, width // 8)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"noise_mask": torch.ones(2, 1, 3, 1), "init_latent": INIT}, r"must be \(2, 1, 3, 2, 3\) or broadcast"),
        ({"noise_mask": torch.ones(2, 8, 3, 1, 1), "init_latent": INIT}, "one channel"),
        ({"noise_mask": torch.ones(3, 1, 3, 1, 1), "init_latent": INIT}, "batch 1 or 2"),
        ({"noise_mask": torch.ones(2, 1, 2, 1, 1), "init_latent": INIT}, r"e\.g\. \(2, 1, 3, 1, 1\)"),
        ({"noise_mask": first_frame_mask(1.5), "init_latent": INIT}, r"in \[0, 1\].*from -0\.5 to 1\.0"),
        ({"noise_mask": torch.full((2, 1, 3, 1, 1), float("nan")), "init_latent": INIT}, r"in \[0, 1\]"),
        ({"noise_mask": first_frame_mask(), "init_latent": None, "frames": 17, "height": 64, "width": 96},
         "no init_latent was given"),
    ],
)  # fmt: skip
def test_bad_masks_are_named(model, options, message):
    with pytest.raises(InvalidInputError, match=message):
        sample(model, POSITIVE, **{**OPTIONS, "steps": 1, **options})


def test_models_without_per_token_sigma_refuse_a_mask():
    init = torch.zeros(1, 4, 8, 8)
    with pytest.raises(InvalidInputError, match="ImageModel model takes one sigma per sample"):
        sample(ImageModel(), POSITIVE, init_latent=init, noise_mask=torch.ones(1, 1, 8, 8), steps=1)
