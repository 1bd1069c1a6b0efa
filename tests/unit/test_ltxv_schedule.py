"""The LTX-Video schedule and the sampler's video path (frames, 5-D latents), without any reference model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lumina_core.conditioning import Conditioning
from lumina_core.errors import InvalidInputError
from lumina_core.models.ltxv import LTXVideoConfig, LTXVideoTransformer, config_from_shapes
from lumina_core.sampling import build_sigmas, check_settings, initial_noise, sample, shifted_linear
from lumina_core.sampling.schedules import LTX_TERMINAL, default_shift, ltx, ltx_shift, stretch_to_terminal


@pytest.mark.parametrize(
    ("tokens", "mu"), [(1024, 0.95), (4096, 2.05), (2560, 1.5), (13 * 16 * 24, 0.95 + 3968 * 1.1 / 3072)]
)
def test_ltx_shift_is_linear_in_tokens_through_the_release_points(tokens, mu):
    # 768 x 512 x 97 frames is 13 x 16 x 24 = 4992 tokens: ComfyUI's default shift 2.37 is this mu.
    assert ltx_shift(tokens) == pytest.approx(math.exp(mu), rel=1e-9)


def test_ltx_shift_extrapolates_below_the_first_point():
    assert ltx_shift(18) == pytest.approx(math.exp(0.95 + (18 - 1024) * 1.1 / 3072), rel=1e-12)
    with pytest.raises(InvalidInputError, match="token count"):
        ltx_shift(0)


@pytest.mark.parametrize("steps", [2, 8, 40])
def test_ltx_schedule_is_the_shifted_schedule_stretched_to_the_terminal(steps):
    shift = ltx_shift(4992)
    sigmas, shifted = ltx(steps, shift), shifted_linear(steps, shift)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and len(sigmas) == steps + 1
    assert sigmas[-2].item() == pytest.approx(LTX_TERMINAL, abs=1e-12)
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    # one factor scales every distance from 1 of the non-zero sigmas
    ratios = (1 - sigmas[1:-1]) / (1 - shifted[1:-1])
    torch.testing.assert_close(ratios, torch.full_like(ratios, ratios[0].item()))


def test_a_single_step_has_nothing_to_stretch():
    assert ltx(1, 3.0).tolist() == [1.0, 0.0]
    assert stretch_to_terminal(torch.tensor([1.0, 0.0], dtype=torch.float64), 0.1).tolist() == [1.0, 0.0]


def test_the_ltx_shift_comes_from_tokens_only_when_no_shift_is_given():
    torch.testing.assert_close(build_sigmas("ltx", 8, None, tokens=4992), ltx(8, ltx_shift(4992)))
    torch.testing.assert_close(build_sigmas("ltx", 8, 2.0, tokens=4992), ltx(8, 2.0))
    assert not torch.equal(build_sigmas("ltx", 8, None, tokens=1024), build_sigmas("ltx", 8, None, tokens=4096))
    torch.testing.assert_close(build_sigmas("shifted_linear", 8, None, tokens=4992), shifted_linear(8, 6.0))
    assert default_shift("sigmoid", None) == 6.0
    with pytest.raises(InvalidInputError, match="derives its shift from the latent's token count"):
        build_sigmas("ltx", 8, None)


def test_denoise_keeps_the_tail_of_the_stretched_schedule():
    torch.testing.assert_close(build_sigmas("ltx", 5, None, 0.5, tokens=100), ltx(10, ltx_shift(100))[-6:])


def test_check_settings_accepts_an_unresolved_shift():
    check_settings(steps=10, cfg=3.0, schedule="ltx", shift=None)
    with pytest.raises(InvalidInputError, match="steps"):
        check_settings(steps=0, cfg=3.0, schedule="ltx", shift=None)


class FakeVideoModel(nn.Module):
    """A video model in the package convention: a fixed velocity pulls every latent towards `target`."""

    family = None
    is_video = True

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.frame_rates: list[float] = []

    def latent_shape(self, batch_size: int, height: int, width: int, frames: int = 1, frame_rate: float = 25.0):
        return (batch_size, 4, (frames - 1) // 8 + 1, height // 32, width // 32)

    def forward(self, x, sigma, context, context_mask, frame_rate: float = 25.0):
        self.frame_rates.append(frame_rate)
        target = torch.full_like(x, 0.5)
        return (x - target) / sigma.clamp(min=1e-3)[:, None, None, None, None] * self.scale


def conditioning(batch: int = 1) -> Conditioning:
    return Conditioning(torch.randn(batch, 3, 6), torch.ones(batch, 3, dtype=torch.bool))


def test_sample_runs_video_latents_with_frames_and_frame_rate():
    model = FakeVideoModel()
    out = sample(model, conditioning(), conditioning(), width=96, height=64, frames=17, batch_size=2, steps=3,
                 cfg=2.0, schedule="ltx", renorm_cfg=0.0, model_options={"frame_rate": 30.0}, seed=3)  # fmt: skip
    assert out.shape == (2, 4, 3, 2, 3)
    assert set(model.frame_rates) == {30.0}
    # Euler on v = (x - target) / sigma reaches the target exactly at sigma 0, whatever the schedule
    torch.testing.assert_close(out, torch.full_like(out, 0.5))


def test_video_noise_is_drawn_on_the_cpu_with_the_latent_shape():
    model = FakeVideoModel()
    model.scale.data.zero_()  # velocity 0: the result is sigma0 x noise = the noise
    out = sample(model, conditioning(), width=64, height=32, frames=9, steps=2, schedule="ltx", seed=5)
    torch.testing.assert_close(out, initial_noise((1, 4, 2, 1, 2), 5))


def test_a_video_init_latent_sets_the_shape():
    model = FakeVideoModel()
    init = torch.zeros(1, 4, 5, 2, 2)
    out = sample(model, conditioning(), init_latent=init, steps=2, schedule="ltx", denoise=0.5, batch_size=2)
    assert out.shape == (2, 4, 5, 2, 2)


def test_frames_are_required_for_video_and_refused_for_images():
    with pytest.raises(InvalidInputError, match="makes videos: pass frames"):
        sample(FakeVideoModel(), conditioning(), width=64, height=64, steps=1)

    class ImageModel(FakeVideoModel):
        is_video = False

    with pytest.raises(InvalidInputError, match="frames=9 was given, but this ImageModel model makes images"):
        sample(ImageModel(), conditioning(), width=64, height=64, frames=9, steps=1)


def test_the_transformer_validates_sizes_on_the_meta_device():
    with torch.device("meta"):
        model = LTXVideoTransformer(LTXVideoConfig())  # the released 2B, no memory
    assert model.family == "ltxv" and model.is_video
    assert model.latent_shape(1, 512, 768, frames=97) == (1, 128, 13, 16, 24)
    assert model.latent_shape(1, 704, 1216, frames=121) == (1, 128, 16, 22, 38)
    with pytest.raises(InvalidInputError, match=r"height 720 .*multiples of 32.* nearest is 704"):
        model.latent_shape(1, 720, 1280, frames=97)
    with pytest.raises(InvalidInputError, match=r"100 frames .* 8k \+ 1 .* nearest is 97"):
        model.latent_shape(1, 512, 768, frames=100)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(n_heads=5), "does not split into 5 attention heads"),
        (dict(cross_attention_dim=4096), "needs them equal"),
        (dict(patch_size=2), "patch sizes"),
    ],
)
def test_impossible_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        LTXVideoConfig(**fields)


@pytest.mark.parametrize(
    "release",
    [
        LTXVideoConfig(),  # 2B, 0.9.0-0.9.6 and 0.9.8-distilled
        LTXVideoConfig(dim=4096, n_layers=48, cross_attention_dim=4096, ffn_hidden=16384),  # 13B, 0.9.7 / 0.9.8
    ],
    ids=["2B", "13B"],
)
def test_release_shapes_give_back_the_release_config(release):
    """Everything but the head count and the constants comes from the shapes; 32 heads is every release's."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LTXVideoTransformer(release).state_dict().items()}
    assert config_from_shapes(shapes) == release
    assert config_from_shapes(shapes, head_dim=release.dim // 32) == release
