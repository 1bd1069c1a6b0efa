"""Schedules, solvers, guidance variants and the sampling loop, on fake models with known answers."""

from __future__ import annotations

import itertools
import math
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lumina_core.conditioning import Conditioning, concat_conditionings
from lumina_core.errors import InvalidInputError, SamplingError
from lumina_core.sampling import (
    SCHEDULES,
    SOLVERS,
    DiffusersCFG,
    Dopri5,
    OriginalCFG,
    SamplingStats,
    build_sigmas,
    dopri5,
    euler,
    heun,
    initial_noise,
    midpoint,
    rk4,
    sample,
    shift_sigmas,
    shifted_linear,
    sigmoid,
)


class FakeModel(nn.Module):
    """v = 0.5·x + the prompt's mean feature per sample, so cond and uncond differ; records every call.

    With `data` set it is instead the exact flow towards `data`: v = (x - data) / sigma, whose denoised estimate
    x - sigma·v is `data` at every step and which Euler follows without error.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, data: torch.Tensor | None = None) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros((), dtype=dtype), requires_grad=False)
        self.data = data
        self.calls: list[dict] = []

    def forward(self, x, sigma, context, context_mask, **options):
        raw_mask = context_mask
        if context_mask is None:  # the sampler passes None for prompts without padding
            context_mask = torch.ones(context.shape[:2], dtype=torch.bool)
        self.calls.append(
            {
                "x": x.clone(), "sigma": sigma.clone(), "tokens": context.shape[1], "mask": context_mask.clone(),
                "raw_mask": raw_mask, "options": options,
            }
        )  # fmt: skip
        if self.data is not None:
            return (x - self.data.to(x.dtype)) / sigma.view(-1, 1, 1, 1).to(x.dtype)
        mean = (context.mean(-1) * context_mask).sum(1) / context_mask.sum(1)  # (B, L, D) -> (B,)
        return 0.5 * x + mean.view(-1, 1, 1, 1).to(x.dtype)

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, ...]:
        if height % 16 or width % 16:
            raise InvalidInputError(f"width and height must be multiples of 16, got {width}x{height}.")
        return (batch_size, 4, height // 8, width // 8)

    @property
    def batch_sizes(self) -> list[int]:
        return [c["x"].shape[0] for c in self.calls]


def prompt(tokens: int, value: float, batch: int = 1) -> Conditioning:
    return Conditioning(torch.full((batch, tokens, 8), value), torch.ones(batch, tokens, dtype=torch.bool))


class NextLikeModel(FakeModel):
    """A FakeModel that, like Lumina-Next, asks for guidance on its first 3 latent channels only."""

    cfg_channels = 3


POS, NEG = prompt(5, 1.0), prompt(3, -1.0)
SMALL = {"width": 32, "height": 16, "steps": 4}  # latent (B, 4, 2, 4)
FIXED_STEP = [name for name, spec in SOLVERS.items() if spec.calls_per_step is not None]


def linear_flow_end(x1: torch.Tensor, m: float) -> torch.Tensor:
    """FakeModel's flow dx/dsigma = 0.5·x + m, solved exactly from sigma 1 to 0: (x1 + 2m)·e^-0.5 - 2m."""
    return (x1 + 2 * m) * math.exp(-0.5) - 2 * m


# ---------------------------------------------------------------- schedules


def test_shifted_linear_endpoints_and_monotone():
    sigmas = shifted_linear(30, 6.0)
    assert sigmas.shape == (31,) and sigmas.dtype == torch.float64
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert (sigmas[1:] < sigmas[:-1]).all()


@pytest.mark.parametrize("shift", [1.0, 3.0, 6.0])
def test_static_shift_is_the_lumina_time_shift(shift):
    sigmas = shifted_linear(20, shift)
    t = 1 - torch.linspace(1, 0, 21, dtype=torch.float64)  # Lumina time of the unshifted grid
    lumina = t / (t + shift - shift * t)
    torch.testing.assert_close(sigmas, 1 - lumina, rtol=0, atol=1e-15)


def test_shift_one_is_linear():
    torch.testing.assert_close(shifted_linear(7, 1.0), torch.linspace(1.0, 0.0, 8, dtype=torch.float64))


def test_every_schedule_uses_the_shift():
    # the sampler node shows a shift input next to the schedule: a schedule that ignored it would mislead
    for name in SCHEDULES:
        assert not torch.equal(build_sigmas(name, 8, 1.0), build_sigmas(name, 8, 6.0)), name


def test_denoise_keeps_the_tail_of_a_longer_schedule():
    sigmas = build_sigmas("shifted_linear", 10, 6.0, denoise=0.5)
    assert sigmas.shape == (11,)
    torch.testing.assert_close(sigmas, shifted_linear(20, 6.0)[-11:])
    # int(7 / 0.6) = 11 steps, as ComfyUI's KSampler.set_steps truncates
    torch.testing.assert_close(build_sigmas("shifted_linear", 7, 6.0, 0.6), shifted_linear(11, 6.0)[-8:])
    assert build_sigmas("shifted_linear", 10, 6.0, 1.0)[0] == 1.0


@pytest.mark.parametrize(
    "args, match",
    [
        (("shifted_linear", 0, 6.0), "steps must be at least 1, got 0"),
        (("shifted_linear", 10, 6.0, 0.0), r"denoise must be in \(0, 1\], got 0.0"),
        (("shifted_linear", 10, 6.0, 1.5), "got 1.5"),
        (("karras", 10, 6.0), "unknown schedule 'karras'"),
        (("shifted_linear", 10, 0.0), "shift must be greater than 0, got 0.0"),
    ],
)
def test_schedule_errors(args, match):
    with pytest.raises(InvalidInputError, match=match):
        build_sigmas(*args)


def logistic(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_sigmoid_schedule_values():
    """Lumina time t_i = (S(k(i/N - 1/2)) - S(-k/2)) / (S(k/2) - S(-k/2)) with k = 6, then sigma = 1 - t."""
    expected = [1 - (logistic(6 * (i / 4 - 0.5)) - logistic(-3)) / (logistic(3) - logistic(-3)) for i in range(5)]
    torch.testing.assert_close(sigmoid(4, 1.0), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    assert sigmoid(4, 1.0)[1].item() == pytest.approx(0.850854, abs=1e-6)
    torch.testing.assert_close(build_sigmas("sigmoid", 4, 1.0), sigmoid(4, 1.0))


def test_sigmoid_packs_steps_at_both_ends():
    sigmas = sigmoid(10, 1.0)
    assert sigmas.dtype == torch.float64 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    sizes = sigmas[:-1] - sigmas[1:]
    assert (sizes > 0).all()
    torch.testing.assert_close(sizes, sizes.flip(0))  # symmetric in time without a shift
    assert sizes[0] < 0.5 * sizes[5] and sizes[-1] < 0.5 * sizes[5] and sizes[0] < 1 / 10
    # a gentle curve is nearly linear, a steep one packs the ends harder
    torch.testing.assert_close(sigmoid(8, 1.0, steepness=1e-4), torch.linspace(1, 0, 9, dtype=torch.float64))
    assert sigmoid(10, 1.0, steepness=10)[-2] < sigmas[-2]


@pytest.mark.parametrize("shift", [2.0, 4.0, 6.0])
def test_sigmoid_takes_the_shift_last(shift):
    torch.testing.assert_close(sigmoid(10, shift), shift_sigmas(sigmoid(10, 1.0), shift), rtol=0, atol=0)
    sigmas = sigmoid(10, shift)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and (sigmas[1:] < sigmas[:-1]).all()
    # the shift moves the middle towards the noise, but the last step stays shorter than shifted_linear's
    assert sigmas[5] > sigmoid(10, 1.0)[5]
    assert sigmas[-2] < shifted_linear(10, shift)[-2]


def test_sigmoid_errors():
    with pytest.raises(InvalidInputError, match="steepness must be greater than 0, got 0"):
        sigmoid(10, 1.0, steepness=0)
    with pytest.raises(InvalidInputError, match="shift must be greater than 0, got -1.0.*Lumina-Next uses 4"):
        build_sigmas("sigmoid", 10, -1.0)
    with pytest.raises(InvalidInputError, match="steps must be at least 1"):
        sigmoid(0, 1.0)


# ---------------------------------------------------------------- solvers


def counting(fn):
    calls = []

    def velocity(x, sigma):
        calls.append(sigma)
        return fn(x, sigma)

    return velocity, calls


@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_solver_is_exact_for_a_constant_velocity(name):
    c = torch.tensor([0.3, -1.2])
    x = torch.tensor([1.0, 2.0])
    x_next, v_start = SOLVERS[name].step(lambda x, s: c, x, 0.9, 0.4)
    torch.testing.assert_close(x_next, x - 0.5 * c)
    torch.testing.assert_close(v_start, c)


@pytest.mark.parametrize("name, order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_solver_orders_on_exponential_ode(name, order):
    """dx/dsigma = x from sigma 1 to 0.1 has x(0.1) = x(1)·e^-0.9; halving the step divides the error by 2^order."""

    def error(steps: int) -> float:
        grid = torch.linspace(1.0, 0.1, steps + 1, dtype=torch.float64).tolist()
        x = torch.tensor([1.0], dtype=torch.float64)
        for a, b in itertools.pairwise(grid):
            x, _ = SOLVERS[name].step(lambda x, s: x, x, a, b)
        return abs(x.item() - math.exp(-0.9))

    observed = math.log2(error(8) / error(16))
    assert abs(observed - order) < 0.2, observed


@pytest.mark.parametrize("name", FIXED_STEP)
def test_calls_per_step_and_start_velocity(name):
    velocity, calls = counting(lambda x, s: x * s)
    x = torch.ones(3)
    _, v_start = SOLVERS[name].step(velocity, x, 0.8, 0.5)
    assert len(calls) == SOLVERS[name].calls_per_step and calls[0] == 0.8
    torch.testing.assert_close(v_start, x * 0.8)


@pytest.mark.parametrize("name", FIXED_STEP)
def test_model_calls_of_a_whole_run(name):
    """N steps cost N * calls_per_step evaluations, except heun, whose step to sigma 0 makes one call."""
    model = FakeModel()
    sample(model, POS, **SMALL, solver=name)
    steps, per_step = SMALL["steps"], SOLVERS[name].calls_per_step
    assert len(model.calls) == (steps * per_step - 1 if name == "heun" else steps * per_step)


def test_heun_falls_back_to_euler_on_the_last_step():
    velocity, calls = counting(lambda x, s: x * (1 + s))
    x = torch.tensor([2.0])
    torch.testing.assert_close(heun(velocity, x, 0.3, 0.0)[0], euler(velocity, x, 0.3, 0.0)[0])
    assert calls == [0.3, 0.3]  # one call each


def test_midpoint_and_rk4_evaluate_inside_the_interval():
    velocity, calls = counting(lambda x, s: x)
    midpoint(velocity, torch.ones(1), 0.9, 0.3)
    rk4(velocity, torch.ones(1), 0.9, 0.3)
    assert calls == pytest.approx([0.9, 0.6, 0.9, 0.7, 0.5, 0.3])


# ---------------------------------------------------------------- dopri5


def run_dopri5(fn, grid, x, **tolerances):
    """Integrate fn over the grid with one Dopri5; returns the end point, the solver and the sigmas of the calls."""
    velocity, calls = counting(fn)
    solver = Dopri5(**tolerances)
    for a, b in itertools.pairwise(grid):
        x, _ = solver(velocity, x, a, b)
    return x, solver, calls


@pytest.mark.parametrize("tolerances, bound", [({}, 3e-3), ({"atol": 1e-10, "rtol": 1e-7}, 3e-8)])
def test_dopri5_accuracy_follows_the_tolerance(tolerances, bound):
    """dx/dsigma = -2·sigma·cos(3·sigma)·x from 1 to 0: x(s) = x(1)·exp(F(1) - F(s)) with
    F(s) = (2/3)·s·sin(3s) + (2/9)·cos(3s). The tolerances bound each substep's error, so the end point's error
    is of their order."""

    def big_f(s: float) -> float:
        return (2 / 3) * s * math.sin(3 * s) + (2 / 9) * math.cos(3 * s)

    x1 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    x, solver, calls = run_dopri5(lambda x, s: -2 * s * math.cos(3 * s) * x, [1.0, 0.0], x1, **tolerances)
    exact = x1 * math.exp(big_f(1.0) - big_f(0.0))
    assert (x - exact).abs().max().item() < bound
    assert solver.accepted >= 2 and len(calls) == 2 + 6 * (solver.accepted + solver.rejected)


def test_dopri5_is_fifth_order_on_a_fixed_grid():
    """With tolerances too loose to reject anything, every interval is one Dormand-Prince step."""

    def error(steps: int) -> float:
        grid = torch.linspace(1.0, 0.1, steps + 1, dtype=torch.float64).tolist()
        x, solver, _ = run_dopri5(lambda x, s: x, grid, torch.tensor([1.0], dtype=torch.float64), atol=1e3, rtol=1e3)
        assert (solver.accepted, solver.rejected) == (steps, 0)
        return abs(x.item() - math.exp(-0.9))

    assert abs(math.log2(error(4) / error(8)) - 5) < 0.4


def test_dopri5_counts_calls_and_keeps_its_step_size_across_intervals():
    grid = sigmoid(6, 4.0).tolist()
    x, solver, calls = run_dopri5(lambda x, s: x * (1 + s), grid, torch.ones(3))
    # one call opens each interval, one more picks the first step size, six per accepted or rejected substep
    assert len(calls) == 6 + 1 + 6 * (solver.accepted + solver.rejected)
    # every interval starts with its own call at its start and no call leaves [0, 1]
    assert all(s in calls for s in grid[:-1]) and min(calls) == 0.0 and max(calls) == 1.0
    torch.testing.assert_close(x, torch.ones(3) * math.exp(-1.5), rtol=1e-3, atol=0)


def test_dopri5_is_exact_for_a_constant_velocity_and_reports_the_start_velocity():
    velocity, calls = counting(lambda x, s: torch.full_like(x, 0.25))
    solver = Dopri5()
    x_next, v_start = solver(velocity, torch.ones(2), 0.9, 0.1)
    torch.testing.assert_close(x_next, torch.full((2,), 0.8))
    torch.testing.assert_close(v_start, torch.full((2,), 0.25))
    # zero error: nothing rejected, the step grows tenfold and the second substep reaches the end
    assert calls[0] == 0.9 and (solver.accepted, solver.rejected) == (2, 0) and len(calls) == 2 + 6 * 2
    torch.testing.assert_close(dopri5(velocity, torch.ones(2), 0.9, 0.1)[0], x_next)  # the one-off form


def test_dopri5_nan_velocity_raises_a_sampling_error():
    with pytest.raises(SamplingError, match="dopri5: the model returned NaN/inf"):
        dopri5(lambda x, s: x * float("nan") if s < 0.5 else x, torch.ones(2), 1.0, 0.0)


@pytest.mark.parametrize("atol, rtol", [(-1.0, 1e-3), (0.0, 0.0)])
def test_dopri5_tolerance_errors(atol, rtol):
    with pytest.raises(InvalidInputError, match="dopri5 needs atol >= 0 and rtol >= 0"):
        Dopri5(atol, rtol)


# ---------------------------------------------------------------- guidance


def original_batch1_reference(cond, uncond, scale, renorm):
    """Alpha-VLLM's rule written for one sample at a time, with the norm comparison on Python floats."""
    guided = uncond + scale * (cond - uncond)
    limit = renorm * cond.norm().item()
    norm = guided.norm().item()
    return guided * (limit / norm) if norm >= limit else guided


def test_original_renorm_clamps_each_sample_on_its_own():
    cond = torch.randn(3, 4, 2, 4, generator=torch.Generator().manual_seed(0))
    uncond = cond.clone()
    uncond[0] = -cond[0]  # guided = 7·cond: far above the limit
    uncond[1] = cond[1] * 1.1  # guided = 0.7·cond: below it
    uncond[2] = 0.9 * cond[2]  # guided = 1.3·cond: above
    guidance = OriginalCFG(4.0, renorm=1.2)
    out = guidance.combine(cond, uncond)
    for i in range(3):
        torch.testing.assert_close(out[i], original_batch1_reference(cond[i], uncond[i], 4.0, 1.2))
    torch.testing.assert_close(out[1], 0.7 * cond[1])  # untouched
    for i in (0, 2):
        assert out[i].norm().item() == pytest.approx(1.2 * cond[i].norm().item(), rel=1e-5)


def test_original_renorm_zero_disables():
    cond, uncond = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    torch.testing.assert_close(OriginalCFG(4.0, renorm=0.0).combine(cond, uncond), 4 * cond)


def test_original_renorm_of_a_zero_prediction_stays_finite():
    zero = torch.zeros(1, 4, 2, 2)
    assert torch.equal(OriginalCFG(4.0).combine(zero, zero), zero)


def test_diffusers_normalisation_matches_each_row_along_the_last_axis():
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 4, 3, 5, generator=g)
    out = DiffusersCFG(4.0, normalize=True).combine(cond, uncond)
    torch.testing.assert_close(out.norm(dim=-1), cond.norm(dim=-1))
    direction = (uncond + 4 * (cond - uncond)) / out
    torch.testing.assert_close(direction, direction[..., :1].expand_as(direction))  # rows only rescaled
    torch.testing.assert_close(DiffusersCFG(4.0, normalize=False).combine(cond, uncond), uncond + 4 * (cond - uncond))


def test_truncation_rules():
    original = OriginalCFG(4.0, cfg_trunc=0.25)
    assert original.needs_uncond(0.8, step=29, total=30)  # t = 0.2 < 0.25: early, noisy part
    assert not original.needs_uncond(0.7, step=0, total=30)  # t = 0.3
    never = OriginalCFG(4.0, cfg_trunc=1.0)
    assert never.needs_uncond(0.0, 0, 1)  # rk4's last stage at sigma 0 stays guided
    assert not OriginalCFG(4.0, cfg_trunc=0.0).needs_uncond(1.0, 0, 1)
    ratio = DiffusersCFG(4.0, trunc_ratio=0.25)
    assert [ratio.needs_uncond(0.5, i, 8) for i in range(4)] == [True, True, False, False]
    assert not DiffusersCFG(1.0).needs_uncond(1.0, 0, 8)  # the pipeline guides only when cfg > 1


# ---------------------------------------------------------------- sampler: model calls


def test_truncation_scenario_call_counts():
    """30 Euler steps, cfg 4, truncation 0.25, shift 6: what the uncond pass costs under each semantics.

    Counted: model calls and the batch of each (B = 1 here). A guided step is one call on a batch of 2B
    (cond + uncond), worth two batch-B passes; a truncated step one call on B.
    - Original (guide while t = 1 - sigma < 0.25): with shift 6, sigma_i > 0.75 for the first 20 of 30 steps
      (1 - i/30 > 1/3; step 20 sits exactly at sigma 0.75, t 0.25, which is not < 0.25), so 20 calls of 2B +
      10 calls of B = 30 calls, 50 batch-B passes instead of 60.
    - diffusers (guide while (i + 1)/30 <= 0.25): 7 guided steps, so 7 calls of 2B + 23 of B = 37 batch-B
      passes; the pipeline itself makes them as 30 cond + 7 uncond = 37 calls. That is the "about 38 instead of
      60" of the bench (30 + 30/4 = 37.5).
    """
    model = FakeModel()
    sample(model, POS, NEG, width=16, height=16, steps=30, cfg=4.0, shift=6.0, cfg_trunc=0.25)
    assert model.batch_sizes == [2] * 20 + [1] * 10
    sigmas = [c["sigma"][0].item() for c in model.calls]
    assert sigmas[19] > 0.75 and sigmas[20] == pytest.approx(0.75)

    model = FakeModel()
    sample(model, POS, NEG, width=16, height=16, steps=30, cfg=4.0, shift=6.0, cfg_trunc=0.25, cfg_mode="diffusers")
    assert model.batch_sizes == [2] * 7 + [1] * 23
    assert sum(model.batch_sizes) == 37


@pytest.mark.parametrize("cfg, negative", [(1.0, NEG), (4.0, None)])
def test_no_uncond_call_without_guidance(cfg, negative):
    model = FakeModel()
    sample(model, POS, negative, cfg=cfg, batch_size=3, **SMALL)
    assert model.batch_sizes == [3] * 4
    assert all(c["tokens"] == 5 for c in model.calls)


def test_cond_and_uncond_share_one_padded_call():
    model = FakeModel()
    sample(model, POS, NEG, batch_size=2, **SMALL)
    assert model.batch_sizes == [4] * 4
    call = model.calls[0]
    assert call["tokens"] == 5  # the 3-token negative is padded to the positive's 5
    assert call["mask"].sum(1).tolist() == [5, 5, 3, 3]  # [cond, cond, uncond, uncond]
    assert torch.equal(call["x"][:2], call["x"][2:])


@pytest.mark.parametrize("solver, calls", [("euler", 4), ("midpoint", 8), ("heun", 7), ("rk4", 16)])
def test_model_calls_per_solver(solver, calls):
    model = FakeModel()
    sample(model, POS, NEG, solver=solver, **SMALL)
    assert len(model.calls) == calls


def test_original_truncation_is_tested_at_every_evaluation():
    """Midpoint's second evaluation can fall past the threshold while its step's first one is still guided."""
    sigmas = shifted_linear(4, 6.0).tolist()  # 1, 0.947, 0.857, 0.667, 0
    mid = (sigmas[2] + sigmas[3]) / 2  # 0.762: t = 0.238
    model = FakeModel()
    sample(model, POS, NEG, solver="midpoint", cfg_trunc=0.2, **SMALL)  # guide while sigma > 0.8
    assert [c["sigma"][0].item() for c in model.calls][5] == pytest.approx(mid)
    assert model.batch_sizes == [2, 2, 2, 2, 2, 1, 1, 1]


def test_guided_velocity_is_the_cfg_combination():
    """One Euler step from x with sigma 1 -> s1 must move by (s1 - 1)·combine(cond, uncond)."""
    noise = initial_noise((1, 4, 2, 4), 0)
    model = FakeModel()
    out = sample(model, POS, NEG, steps=1, width=32, height=16, cfg=3.0, renorm_cfg=0.0, noise=noise)
    cond, uncond = 0.5 * noise + 1.0, 0.5 * noise - 1.0
    torch.testing.assert_close(out, noise - (uncond + 3.0 * (cond - uncond)))


# ---------------------------------------------------------------- sampler: seeds, start, callback, precision


def test_seed_reproduces_and_noise_is_drawn_on_the_cpu():
    a = sample(FakeModel(), POS, NEG, seed=7, **SMALL)
    b = sample(FakeModel(), POS, NEG, seed=7, **SMALL)
    c = sample(FakeModel(), POS, NEG, seed=8, **SMALL)
    assert torch.equal(a, b) and not torch.equal(a, c)
    model = FakeModel()
    sample(model, POS, NEG, seed=7, **SMALL)
    expected = torch.randn((1, 4, 2, 4), generator=torch.Generator().manual_seed(7))
    assert torch.equal(model.calls[0]["x"][:1], expected)


def test_batch_repeats_a_single_prompt_and_latents_differ_per_sample():
    model = FakeModel()
    out = sample(model, POS, NEG, batch_size=3, **SMALL)
    assert out.shape == (3, 4, 2, 4) and out.dtype == torch.float32
    assert not torch.equal(out[0], out[1])


def test_exact_flow_lands_on_the_data_and_previews_it():
    data = torch.randn(2, 4, 2, 4, generator=torch.Generator().manual_seed(3))
    seen = []
    out = sample(FakeModel(data=data), POS, batch_size=2, callback=lambda *a: seen.append(a), **SMALL)
    torch.testing.assert_close(out, data)
    assert [(s, total) for s, total, _, _ in seen] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    for _, _, _, denoised in seen:
        torch.testing.assert_close(denoised, data)
    assert torch.equal(seen[-1][2], out)


def test_img2img_starts_from_the_noised_init_latent():
    data = torch.randn(1, 4, 2, 4, generator=torch.Generator().manual_seed(4))
    init = data + 0.1
    noise = initial_noise(data.shape, 5)
    sigma0 = build_sigmas("shifted_linear", 4, 6.0, 0.5)[0].item()
    model = FakeModel(data=data)
    out = sample(model, POS, steps=4, denoise=0.5, init_latent=init, noise=noise)
    torch.testing.assert_close(model.calls[0]["x"], (1 - sigma0) * init + sigma0 * noise)
    assert model.calls[0]["sigma"].item() == pytest.approx(sigma0) and sigma0 < 0.9
    torch.testing.assert_close(out, data)
    # denoise 1: pure noise, init_latent only gives the shape (ComfyUI's behaviour)
    model = FakeModel(data=data)
    sample(model, POS, steps=4, init_latent=init, noise=noise)
    assert torch.equal(model.calls[0]["x"], noise)


def test_init_latent_shape_wins_over_width_and_height():
    model = FakeModel()
    out = sample(model, POS, batch_size=2, steps=2, init_latent=torch.zeros(1, 4, 6, 10))
    assert out.shape == (2, 4, 6, 10)


def test_width_and_height_are_not_checked_when_init_latent_sets_the_size():
    out = sample(FakeModel(), POS, steps=2, width=1000, height=7, init_latent=torch.zeros(1, 4, 6, 10))
    assert out.shape == (1, 4, 6, 10)


def test_callback_exception_propagates_and_stops_sampling():
    class Cancelled(Exception):
        pass

    def cancel(step, total, x, denoised):
        if step == 1:
            raise Cancelled

    model = FakeModel()
    with pytest.raises(Cancelled):
        sample(model, POS, NEG, callback=cancel, **SMALL)
    assert len(model.calls) == 2


def test_bf16_model_gets_bf16_inputs_and_x_stays_float32():
    model = FakeModel(dtype=torch.bfloat16)
    seen = []
    out = sample(model, POS, NEG, callback=lambda s, t, x, d: seen.append(x.dtype), **SMALL)
    assert all(c["x"].dtype == torch.bfloat16 for c in model.calls)
    assert all(c["sigma"].dtype == torch.float32 for c in model.calls)
    assert out.dtype == torch.float32 and set(seen) == {torch.float32}


class Overflow(FakeModel):
    """Returns inf from its third call on, from finite inputs."""

    def forward(self, x, sigma, context, context_mask):
        v = super().forward(x, sigma, context, context_mask)
        return v if len(self.calls) < 3 else v * float("inf")


def test_non_finite_model_output_names_the_step_model_and_dtype_without_blaming_float16():
    with pytest.raises(SamplingError) as caught:
        sample(Overflow(), POS, NEG, **SMALL)
    message = str(caught.value)
    assert re.match(
        r"the Overflow transformer returned NaN/inf at step 3 of 4 \(sigma 0\.8571\) in its conditional "
        r"\+ unconditional call \(64 inf among 64 values\) from finite inputs, computing in float32",
        message,
    )
    assert "float16" not in message and "Lumina-Image 2.0" not in message and "\n" not in message
    assert message.index("weights that are finite but far out of range") < message.index("inputs it was not made for")


def test_non_finite_output_in_float16_puts_overflow_first():
    with pytest.raises(SamplingError, match=r"computing in float16\..*\(1\) float16 overflows in this transformer"):
        sample(Overflow(dtype=torch.float16), POS, NEG, **SMALL)


def test_non_finite_weight_is_named_as_the_cause():
    model = Overflow()
    model.anchor.fill_(float("nan"))
    model.source = "/models/broken.safetensors"
    with pytest.raises(SamplingError, match=r"Cause: its weight anchor holds 1 NaN among 1 values: "
                       r"/models/broken\.safetensors is damaged"):  # fmt: skip
        sample(model, POS, NEG, **SMALL)


def test_non_finite_conditioning_is_refused_before_any_model_call():
    bad = Conditioning(torch.full((1, 3, 8), float("nan")), torch.ones(1, 3, dtype=torch.bool))
    model = FakeModel()
    with pytest.raises(SamplingError, match=r"the negative conditioning holds NaN/inf \(24 NaN among 24 values, "
                       r"float32\) before sampling: the text encoder made it so"):  # fmt: skip
        sample(model, POS, bad, **SMALL)
    assert model.calls == []


def test_latent_overflow_with_finite_model_outputs_blames_the_guidance():
    with pytest.raises(SamplingError, match=r"the latent became NaN/inf after step 1 of 4 .* every output of the "
                       r"FakeModel transformer \(float32\) was finite: the guidance \(cfg 3e\+38\)"):  # fmt: skip
        sample(FakeModel(), POS, NEG, **{**SMALL, "cfg": 3e38, "renorm_cfg": 0.0})


# ---------------------------------------------------------------- sampler: channels, model options, stats


def one_guided_step(model, **options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Euler step from noise: returns (velocity used, cond, uncond) for FakeModel's known predictions."""
    noise = initial_noise((1, 4, 2, 4), 0)
    out = sample(model, POS, NEG, steps=1, width=32, height=16, cfg=3.0, renorm_cfg=0.0, noise=noise, **options)
    return noise - out, 0.5 * noise + 1.0, 0.5 * noise - 1.0


def test_lumina_next_guides_three_channels_by_default():
    v, cond, uncond = one_guided_step(NextLikeModel())
    torch.testing.assert_close(v[:, :3], (uncond + 3.0 * (cond - uncond))[:, :3])
    torch.testing.assert_close(v[:, 3:], cond[:, 3:])  # the 4th channel is the conditional prediction


@pytest.mark.parametrize("model, cfg_channels", [(NextLikeModel(), 4), (FakeModel(), None), (FakeModel(), 4)])
def test_every_channel_is_guided_without_the_quirk(model, cfg_channels):
    v, cond, uncond = one_guided_step(model, cfg_channels=cfg_channels)
    torch.testing.assert_close(v, uncond + 3.0 * (cond - uncond))


def test_cfg_channels_overrides_the_model_default():
    v, cond, uncond = one_guided_step(NextLikeModel(), cfg_channels=2)
    torch.testing.assert_close(v[:, :2], (uncond + 3.0 * (cond - uncond))[:, :2])
    torch.testing.assert_close(v[:, 2:], cond[:, 2:])


def test_renormalisation_measures_only_the_guided_channels():
    noise = initial_noise((1, 4, 2, 4), 0)
    out = sample(NextLikeModel(), POS, NEG, steps=1, width=32, height=16, cfg=3.0, renorm_cfg=1.0, noise=noise)
    cond, uncond = 0.5 * noise + 1.0, 0.5 * noise - 1.0
    guided = OriginalCFG(3.0, renorm=1.0).combine(cond[:, :3], uncond[:, :3])
    torch.testing.assert_close(noise - out, torch.cat([guided, cond[:, 3:]], 1))
    assert guided.norm().item() == pytest.approx(cond[:, :3].norm().item(), rel=1e-5)  # the clamp was active


def test_unguided_calls_ignore_cfg_channels():
    model = NextLikeModel()
    noise = initial_noise((1, 4, 2, 4), 0)
    out = sample(model, POS, steps=1, width=32, height=16, noise=noise)
    torch.testing.assert_close(noise - out, 0.5 * noise + 1.0)


def test_model_options_reach_every_call_and_none_are_passed_by_default():
    model = FakeModel()
    options = {"scaling_watershed": 0.3, "proportional_attn": True}
    sample(model, POS, NEG, solver="midpoint", model_options=options, **SMALL)
    assert len(model.calls) == 8 and all(c["options"] == options for c in model.calls)
    model = FakeModel()
    sample(model, POS, NEG, model_options={}, **SMALL)
    assert all(c["options"] == {} for c in model.calls)


@pytest.mark.parametrize("name", FIXED_STEP)
def test_stats_count_model_calls_and_steps(name):
    model, stats = FakeModel(), SamplingStats()
    sample(model, POS, NEG, solver=name, cfg_trunc=0.1, stats=stats, **SMALL)
    assert stats.model_calls == len(model.calls) and stats.uncond_calls == model.batch_sizes.count(2)
    assert 0 < stats.uncond_calls < stats.model_calls
    assert (stats.solver_steps, stats.rejected_steps) == (SMALL["steps"], 0)


def test_stats_are_reset_and_kept_when_cancelled():
    stats = SamplingStats(model_calls=99, uncond_calls=99, solver_steps=99, rejected_steps=99)

    def cancel(step, total, x, denoised):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample(FakeModel(), POS, NEG, callback=cancel, stats=stats, **SMALL)
    assert stats == SamplingStats(model_calls=2, uncond_calls=2, solver_steps=2, rejected_steps=0)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_dopri5_sample_matches_the_exact_flow_and_reports_its_calls(schedule):
    noise = initial_noise((1, 4, 2, 4), 2)
    model, stats = FakeModel(), SamplingStats()
    out = sample(
        model, POS, NEG, width=32, height=16, steps=5, cfg=3.0, renorm_cfg=0.0, shift=4.0, schedule=schedule,
        solver="dopri5", noise=noise, stats=stats,
    )  # fmt: skip
    exact = linear_flow_end(noise, m=2 * 3.0 - 1)  # guided velocity 0.5·x + (3·1 + (1 - 3)·1)
    assert ((out - exact).norm() / exact.norm()).item() < 1e-3
    assert stats.model_calls == len(model.calls) == 5 + 1 + 6 * (stats.solver_steps + stats.rejected_steps)
    assert stats.uncond_calls == stats.model_calls  # never truncated
    euler = sample(FakeModel(), POS, NEG, width=32, height=16, steps=5, cfg=3.0, renorm_cfg=0.0, noise=noise)
    assert ((euler - exact).norm() / exact.norm()).item() > 1e-2  # the same steps with Euler are far off


def test_dopri5_hardly_depends_on_the_output_points():
    runs = [
        sample(FakeModel(), POS, NEG, width=32, height=16, steps=steps, solver="dopri5", schedule=schedule, seed=3)
        for steps, schedule in [(1, "shifted_linear"), (8, "sigmoid"), (20, "shifted_linear")]
    ]
    for run in runs[1:]:
        assert ((run - runs[0]).norm() / runs[0].norm()).item() < 1e-3


def test_dopri5_tightening_the_tolerance_costs_calls():
    loose, tight = SamplingStats(), SamplingStats()
    sample(FakeModel(), POS, NEG, solver="dopri5", stats=loose, **SMALL)
    sample(FakeModel(), POS, NEG, solver="dopri5", atol=1e-9, rtol=1e-7, stats=tight, **SMALL)
    assert tight.model_calls > loose.model_calls


@pytest.mark.parametrize("cfg_mode, trunc", [("original", 0.3), ("diffusers", 0.5)])
def test_dopri5_truncation_is_tested_per_call_or_per_output_step(cfg_mode, trunc):
    """Original: every call is guided iff t = 1 - sigma < cfg_trunc. diffusers: every call of output interval i
    is guided iff (i + 1) / N <= ratio, so with 4 intervals and 0.5 those above sigmas[2] are guided, those below
    are not, and at sigmas[2] itself the substep ends of interval 1 are guided and the start of interval 2 is
    not."""
    model = FakeModel()
    sample(model, POS, NEG, solver="dopri5", cfg_mode=cfg_mode, cfg_trunc=trunc, shift=4.0, **SMALL)
    sigmas = [c["sigma"][0].item() for c in model.calls]
    if cfg_mode == "original":
        assert all((b == 2) == (1 - s < trunc) for s, b in zip(sigmas, model.batch_sizes, strict=True))
    else:
        boundary = build_sigmas("shifted_linear", 4, 4.0)[2].item()
        assert all(b == 2 for s, b in zip(sigmas, model.batch_sizes, strict=True) if s > boundary + 1e-6)
        assert all(b == 1 for s, b in zip(sigmas, model.batch_sizes, strict=True) if s < boundary - 1e-6)
        at_boundary = [b for s, b in zip(sigmas, model.batch_sizes, strict=True) if abs(s - boundary) < 1e-6]
        assert at_boundary[-1] == 1 and set(at_boundary[:-1]) == {2}  # ends of substeps of interval 1, then 2
    assert 2 in model.batch_sizes and 1 in model.batch_sizes


# ---------------------------------------------------------------- sampler: input errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, r"steps must be a whole number from 1 to 10000 .*; got 0"),
        ({"cfg": -1.0}, "cfg must be a finite number of at least 0.*got -1.0"),
        ({"denoise": 0.0}, r"denoise must be a finite number above 0 and at most 1 .*; got 0.0"),
        ({"denoise": 1.2}, r"denoise must be a finite number above 0 and at most 1 .*; got 1.2"),
        ({"solver": "dpm"}, "unknown solver 'dpm'; choose one of"),
        ({"schedule": "karras"}, "unknown schedule 'karras'"),
        ({"cfg_mode": "comfy"}, "unknown cfg_mode 'comfy'; choose one of"),
        ({"cfg_trunc": -0.1}, "cfg_trunc must be a finite number of at least 0 .*; got -0.1"),
        ({"cfg_mode": "diffusers", "renorm_cfg": 2.0}, "renorm_cfg must be 1 or 0, got 2.0"),
        ({"batch_size": 0}, "batch_size must be a whole number of at least 1 .*; got 0"),
        ({"width": 100}, "multiples of 16, got 100x16"),
        ({"init_latent": torch.zeros(1, 16, 2, 4)}, r"init_latent has shape \(1, 16, 2, 4\).*\(batch, 4, \.\.\.\)"),
        ({"init_latent": torch.zeros(3, 4, 2, 4), "batch_size": 2}, "batch 1 or 2"),
        ({"noise": torch.zeros(1, 4, 4, 4)}, r"noise has shape \(1, 4, 4, 4\), the latent is \(1, 4, 2, 4\)"),
        ({"cfg_channels": 0}, "cfg_channels must be a whole number of at least 1 .*None takes the model's.*; got 0"),
        ({"cfg_channels": 5}, "cfg_channels is 5 but the latent has 4 channels.*the model's default is None"),
        ({"solver": "dopri5", "rtol": -1.0}, "rtol must be a finite number of at least 0 .*; got -1.0"),
    ],
)
def test_sample_input_errors(kwargs, match):
    options = {**SMALL, **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        sample(FakeModel(), POS, NEG, **options)


def tagged(family: str | None) -> Conditioning:
    return Conditioning(torch.ones(1, 3, 8), torch.ones(1, 3, dtype=torch.bool), family)


@pytest.mark.parametrize("role", ["positive", "negative"])
def test_features_from_another_familys_encoder_name_both_families(role):
    model = FakeModel()
    model.family = "lumina_next"
    pair = {"positive": tagged("lumina_next"), "negative": tagged("lumina_next"), role: tagged("lumina2")}
    with pytest.raises(InvalidInputError) as err:
        sample(model, pair["positive"], pair["negative"], width=16, height=16, steps=1)
    message = str(err.value)
    assert role in message and "Lumina-Next" in message and "Lumina-Image 2.0" in message and "Gemma-2-2B" in message


def test_untagged_and_matching_features_pass_the_family_check():
    model = FakeModel()
    model.family = "lumina2"
    sample(model, tagged(None), tagged("lumina2"), width=16, height=16, steps=1)


def test_family_survives_batching_and_mixed_families_do_not_batch():
    assert tagged("ltxv").repeat_to(2).padded_to(5).to("cpu").family == "ltxv"
    assert concat_conditionings([tagged("ltxv"), tagged(None)]).family == "ltxv"
    with pytest.raises(InvalidInputError, match="different models"):
        concat_conditionings([tagged("ltxv"), tagged("lumina2")])


@pytest.mark.parametrize(
    "mask, message",
    [
        (torch.tensor([[True, True, False], [False, False, False]]), "at least one token"),
        (torch.tensor([[True, True, False], [False, True, True]]), "right-padded"),
    ],
    ids=["empty-row", "left-padded"],
)
def test_text_masks_are_checked_once_when_the_conditioning_is_made(mask, message):
    """The models take the mask on trust (their forward reads no tensor value on the host): a `Conditioning` checks it
    when it is made, so every prompt reaching `sample` has been checked, once."""
    with pytest.raises(InvalidInputError, match=message):
        Conditioning(torch.zeros(2, 3, 8), mask)


def test_prompts_reach_the_model_trimmed_and_unmasked_when_full():
    model = FakeModel()
    padded = Conditioning(torch.ones(1, 7, 8), torch.tensor([[True] * 4 + [False] * 3]))
    sample(model, padded, NEG, width=16, height=16, steps=1)  # guided: [cond; uncond], 4 and 3 tokens
    assert model.calls[0]["tokens"] == 4 and model.calls[0]["mask"].tolist() == [[True] * 4, [True] * 3 + [False]]
    sample(model, padded, None, width=16, height=16, steps=1)  # cond alone: 4 real tokens, no padding left
    assert model.calls[-1]["tokens"] == 4 and model.calls[-1]["raw_mask"] is None


# ---------------------------------------------------------------- sampler: hardening (seeds, limits, interrupts)


def test_the_highest_seed_is_accepted_and_negative_seeds_do_not_wrap_onto_it():
    top = sample(FakeModel(), POS, seed=2**64 - 1, **SMALL)
    assert not torch.equal(top, sample(FakeModel(), POS, seed=0, **SMALL))
    for seed in (-1, 2**64):
        with pytest.raises(InvalidInputError, match=r"seed must be a whole number from 0 to 18446744073709551615"):
            sample(FakeModel(), POS, seed=seed, **SMALL)


class Blocks(FakeModel):
    """FakeModel run through a stack of 4 blocks, like a transformer's `layers`; counts the blocks run."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Identity() for _ in range(4))
        self.blocks_run = 0

    def forward(self, x, sigma, context, context_mask):
        for block in self.layers:
            x = block(x)
            self.blocks_run += 1
        return super().forward(x, sigma, context, context_mask)


def test_interrupt_stops_a_model_call_between_blocks_and_its_hooks_go_away():
    class Cancelled(Exception):
        pass

    checks = []

    def interrupt():
        checks.append(len(checks))
        if len(checks) == 7:  # 4 blocks and the end of step 1, the first block of step 2, then its second block
            raise Cancelled

    model = Blocks()
    with pytest.raises(Cancelled):
        sample(model, POS, NEG, interrupt=interrupt, **SMALL)
    assert model.blocks_run == 5  # 4 in the first call, then 1 more: the stop came inside a call
    sample(model, POS, NEG, **SMALL)  # without interrupt: no hook left behind
    assert len(checks) == 7 and model.blocks_run == 5 + 4 * 4


def test_memory_refusal_asks_the_host_to_make_room_first(monkeypatch):
    from lumina_core.sampling import memory

    free = [1024]
    asked = []
    monkeypatch.setattr(memory, "available_bytes", lambda device: free[0])

    def make_room(needed, device):
        asked.append(needed)
        free[0] = needed  # the host unloaded enough

    model = FakeModel()
    model.config = SimpleNamespace(dim=64, ffn_hidden=256, patch_size=2)  # what the estimate reads
    sample(model, POS, make_room=make_room, **SMALL)
    assert len(asked) == 1 and asked[0] > 1024
    free[0] = 1024
    with pytest.raises(InvalidInputError, match=r"needs at least .* but only 1.0 KiB is available"):
        sample(model, POS, **SMALL)


def test_sizes_stop_where_the_models_rope_positions_end():
    from lumina_core import tiny
    from lumina_core.models.lumina_next import LuminaNextTransformer

    lumina2 = tiny.make_transformer(0)
    assert lumina2.latent_shape(1, 8192, 16)[-2:] == (1024, 2)
    with pytest.raises(InvalidInputError, match=r"height 8208 is too large: Lumina-Image 2.0 addresses at most 512"):
        lumina2.latent_shape(1, 8208, 16)
    with torch.device("meta"):
        lumina_next = LuminaNextTransformer(tiny.TINY_LUMINA_NEXT)
    lumina_next.latent_shape(1, 16, 6144)
    with pytest.raises(InvalidInputError, match=r"width 6160 is too large: Lumina-Next .* 384 patches .* 6144 px"):
        lumina_next.latent_shape(1, 16, 6160)
    with torch.device("meta"):
        ltxv = tiny.LTXVideoTransformer(tiny.TINY_LTXV)
    assert ltxv.latent_shape(1, 2048, 32, frames=497)[2] == 63  # 496 frames after the first: 19.84 s at 25 fps
    with pytest.raises(InvalidInputError, match=r"505 frames at 25 fps is too long"):
        ltxv.latent_shape(1, 32, 32, frames=505)
    ltxv.latent_shape(1, 32, 32, frames=1001, frame_rate=50.0)  # the same 20 s at 50 fps
