"""Step caching (TeaCache) in the sampler, on a toy model with the cache stages: decisions, residuals, batch changes,
dopri5 rejections, runs that do not share state. The real transformers' stages are tested in tests/parity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lumina_core import tiny
from lumina_core.conditioning import Conditioning
from lumina_core.errors import InvalidInputError
from lumina_core.sampling import Dopri5, SamplingStats, sample
from lumina_core.sampling.step_cache import (
    COND,
    COND_UNCOND,
    LTX_VIDEO,
    LUMINA2_V1,
    LUMINA2_V2,
    LUMINA_NEXT,
    StepCache,
    TeaCache,
    relative_l1,
)


class StagedModel(nn.Module):
    """Tokens are the latent's cells; the "block stack" is a fixed non-linear map; records what each call did."""

    family = "lumina_next"  # for the polynomial

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.block_batches: list[int] = []  # the batch of every call that ran the stack
        self.calls = 0

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, ...]:
        return (batch_size, 4, height // 8, width // 8)

    def embed(self, x, sigma, context, context_mask, **options):
        self.calls += 1
        text = context.mean(dim=(1, 2))  # (B,)
        return {"x": x, "sigma": sigma, "text": text}, x.flatten(2).transpose(1, 2)  # (B, H*W, C)

    def probe(self, state, hidden):
        return hidden * (1 + state["sigma"][:, None, None]), None

    def run_blocks(self, state, hidden):
        self.block_batches.append(hidden.shape[0])
        return hidden + 0.8 * torch.tanh(hidden) + 0.1 * state["text"][:, None, None]

    def head(self, state, hidden):
        x = state["x"]
        return hidden.transpose(1, 2).reshape(x.shape) - 0.2 * x

    def forward(self, x, sigma, context, context_mask, **options):
        state, hidden = self.embed(x, sigma, context, context_mask)
        return self.head(state, self.run_blocks(state, hidden))


def prompt(tokens: int, value: float, batch: int = 1) -> Conditioning:
    return Conditioning(torch.full((batch, tokens, 8), value), torch.ones(batch, tokens, dtype=torch.bool))


POS, NEG = prompt(5, 1.0), prompt(3, -1.0)
SETTINGS = dict(width=32, height=24, steps=20, seed=3, shift=3.0, cfg=3.0, renorm_cfg=0.0)


def run(threshold: float | None, **overrides):
    model, stats = StagedModel(), SamplingStats()
    settings = {**SETTINGS, **overrides}
    latent = sample(model, POS, settings.pop("negative", NEG), cache=threshold, stats=stats, **settings)
    return latent, stats, model


def test_threshold_zero_equals_no_cache_bit_for_bit():
    plain, plain_stats, _ = run(None)
    cached, stats, model = run(0.0)
    assert torch.equal(cached, plain)
    assert stats.cached_calls == 0 and stats.model_calls == plain_stats.model_calls == len(model.block_batches)


def test_a_cached_run_skips_calls_and_stays_close():
    plain, _, _ = run(None)
    cached, stats, model = run(0.3)
    assert 0 < stats.cached_calls < stats.model_calls
    assert len(model.block_batches) == stats.model_calls - stats.cached_calls
    assert (cached - plain).norm() / plain.norm() < 0.05
    assert not torch.equal(cached, plain)


def test_the_skip_pattern_is_deterministic_and_runs_share_nothing():
    """Two runs give the same result and stats: each run starts with a fresh cache state."""
    model, first, second = StagedModel(), SamplingStats(), SamplingStats()
    a = sample(model, POS, NEG, cache=0.3, stats=first, **SETTINGS)
    pattern = list(model.block_batches)
    model.block_batches.clear()
    b = sample(model, POS, NEG, cache=0.3, stats=second, **SETTINGS)
    assert torch.equal(a, b) and first == second and model.block_batches == pattern


def test_more_threshold_never_means_more_computed_calls():
    computed = []
    for threshold in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 3.0):
        _, stats, _ = run(threshold)
        computed.append(stats.model_calls - stats.cached_calls)
    assert computed == sorted(computed, reverse=True)
    assert computed[0] > computed[-1]


def test_first_and_last_steps_always_compute():
    _, stats, model = run(100.0, steps=6, solver="midpoint")
    # A huge threshold skips everything it may: all but the 2 calls of step 0 and the 2 of the last step.
    assert stats.model_calls == 12 and stats.cached_calls == 8 and len(model.block_batches) == 4


def test_a_skipped_call_is_input_plus_the_cached_residual():
    model, cache = StagedModel(), StepCache(10.0, LUMINA_NEXT)
    x1 = torch.randn(2, 4, 3, 4)
    x2 = x1 * 1.01
    sigma, context = torch.tensor([0.8, 0.8]), torch.randn(2, 5, 8)
    args = (context, None, {})
    cache(model, x1, sigma, *args, step=0, total=3, rows=COND)
    out = cache(model, x2, sigma * 0.9, *args, step=1, total=3, rows=COND)
    assert cache.skipped == 1 and len(model.block_batches) == 1
    state1, hidden1 = model.embed(x1, sigma, context, None)
    residual = model.run_blocks(state1, hidden1) - hidden1
    state2, hidden2 = model.embed(x2, sigma * 0.9, context, None)
    assert torch.equal(out, model.head(state2, hidden2 + residual))


def test_truncated_guidance_continues_on_the_cond_half():
    """cfg_trunc stops the uncond pass mid-run: the batch halves, and the cache compares and reuses the cond rows."""
    model, cache = StagedModel(), StepCache(10.0, LUMINA_NEXT)
    x = torch.randn(1, 4, 3, 4)
    pair, single = torch.randn(2, 5, 8), torch.randn(1, 5, 8)
    sigma = torch.tensor([0.5])
    cache(model, torch.cat([x, x]), sigma.repeat(2), pair, None, {}, step=0, total=4, rows=COND_UNCOND)
    residual = cache.memory.residual[:1]
    out = cache(model, x * 1.01, sigma * 0.99, single, None, {}, step=1, total=4, rows=COND)
    assert cache.skipped == 1 and model.block_batches == [2]
    state, hidden = model.embed(x * 1.01, sigma * 0.99, single, None)
    assert torch.equal(out, model.head(state, hidden + residual))
    # uncond rows after cond-only calls are not covered by the memory: that call computes
    cache(model, torch.cat([x, x]), sigma.repeat(2), pair, None, {}, step=2, total=4, rows=COND_UNCOND)
    assert model.block_batches == [2, 2] and cache.skipped == 1


def test_a_run_with_truncated_guidance_caches_across_the_change():
    plain, _, _ = run(None, cfg_trunc=0.5)
    cached, stats, model = run(0.3, cfg_trunc=0.5)
    assert sorted(set(model.block_batches)) == [1, 2] and stats.cached_calls > 0
    assert (cached - plain).norm() / plain.norm() < 0.05


class Rewinds:
    """Records what Dopri5 asks of its rewind hook."""

    def __init__(self) -> None:
        self.state, self.events = 0, []

    def checkpoint(self):
        self.events.append("mark")
        return self.state

    def rollback(self, mark):
        self.events.append("rollback")
        self.state = mark


def test_dopri5_rolls_back_rejected_substeps():
    rewind = Rewinds()
    solver = Dopri5(atol=1e-9, rtol=1e-9, rewind=rewind)

    def velocity(x, sigma):
        rewind.state += 1  # every call changes the state
        return torch.sin(10 * x) * 5 - x * sigma

    solver(velocity, torch.ones(1, 4, 2, 2), 1.0, 0.0)
    assert solver.rejected > 0
    assert rewind.events.count("rollback") == solver.rejected + 1  # each rejection, and the initial step probe
    # The calls left counted are those of the accepted path: 1 start + 6 per accepted substep.
    assert rewind.state == 1 + 6 * solver.accepted


def test_dopri5_with_the_cache():
    # cfg_trunc puts a jump in the velocity, which dopri5 crosses with rejected substeps
    adaptive = dict(solver="dopri5", steps=4, atol=1e-4, rtol=1e-4, cfg_trunc=0.5)
    plain, plain_stats, _ = run(None, **adaptive)
    assert plain_stats.rejected_steps > 0
    zero, zero_stats, _ = run(0.0, **adaptive)
    assert torch.equal(zero, plain) and zero_stats == plain_stats
    cached, stats, _ = run(0.3, **adaptive)
    assert stats.cached_calls > 0 and stats.rejected_steps > 0
    assert (cached - plain).norm() / plain.norm() < 0.05
    again, again_stats, _ = run(0.3, **adaptive)
    assert torch.equal(again, cached) and again_stats == stats


def test_relative_l1_weights_drop_padding_tokens():
    before = torch.randn(2, 6, 4)
    now = before + 0.1 * torch.randn(2, 6, 4)
    weights = torch.ones(2, 6)
    weights[1, 4:] = 0
    expected = (now - before).abs()[weights.bool()].sum() / before.abs()[weights.bool()].sum()
    assert relative_l1(now, before, weights) == pytest.approx(expected.item(), rel=1e-6)
    padded = now.clone()
    padded[1, 4:] += 100  # padding tokens do not count
    assert relative_l1(padded, before, weights) == pytest.approx(expected.item(), rel=1e-6)
    assert relative_l1(now, before) == pytest.approx(((now - before).abs().mean() / before.abs().mean()).item())


def test_published_polynomials():
    # Values of the published polynomials at a relative change of 0.1 (numpy.poly1d with the published coefficients).
    assert LUMINA_NEXT(0.1) == LUMINA2_V1(0.1) == pytest.approx(0.089937, abs=1e-6)
    assert LUMINA2_V2(0.1) == pytest.approx(13.467956, abs=1e-6)
    assert LTX_VIDEO(0.1) == pytest.approx(0.101415, abs=1e-6)
    assert TeaCache(0.2).polynomial("lumina2") is LUMINA2_V2
    assert TeaCache(0.2, "v1").polynomial("lumina2") is LUMINA2_V1
    assert TeaCache(0.05).polynomial("ltxv") is LTX_VIDEO


def test_bad_cache_settings_are_refused():
    with pytest.raises(InvalidInputError, match=">= 0"):
        TeaCache(-1.0)
    with pytest.raises(InvalidInputError, match="variant"):
        TeaCache(0.2, "v3").polynomial("lumina2")
    with pytest.raises(InvalidInputError, match="published coefficients"):
        TeaCache(0.2).polynomial("zimage")

    class Plain(StagedModel):
        run_blocks = None

    with pytest.raises(InvalidInputError, match="run_blocks"):
        sample(Plain(), POS, NEG, cache=0.2, **SETTINGS)


# The three transformers' cache stages.

TRANSFORMERS = {
    "lumina2": (lambda: tiny.make_transformer(0), lambda m: m.layers[0].attention, 32, {}),
    "lumina_next": (lambda: tiny.make_lumina_next(0), lambda m: m.layers[0].attention, 32, {}),
    "ltxv": (
        lambda: tiny.make_ltxv_transformer(0), lambda m: m.transformer_blocks[0].attn1,
        tiny.TINY_LTXV.caption_channels, {"frames": 9, "model_options": {"frame_rate": 24.0}},
    ),
}  # fmt: skip


def model_prompts(width: int) -> tuple[Conditioning, Conditioning]:
    g = torch.Generator().manual_seed(0)
    positive = Conditioning(torch.randn(2, 5, width, generator=g), torch.tensor([[True] * 5, [True] * 3 + [False] * 2]))
    return positive, Conditioning(torch.randn(1, 2, width, generator=g), torch.ones(1, 2, dtype=torch.bool))


@pytest.mark.parametrize("family", TRANSFORMERS)
def test_transformer_stages(family):
    build, first_attention, width, settings = TRANSFORMERS[family]
    model, (positive, negative) = build(), model_prompts(width)
    run = dict(width=64, height=64, batch_size=2, steps=6, cfg=3.0, renorm_cfg=0.0, **settings)
    with torch.no_grad():
        plain = sample(model, positive, negative, **run)
        stats = SamplingStats()
        assert torch.equal(sample(model, positive, negative, cache=0.0, stats=stats, **run), plain)
        assert stats.cached_calls == 0

        # The probe is what the first block's attention reads, for every row of a guided call.
        seen = []
        hook = first_attention(model).register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        x = torch.randn(4, *plain.shape[1:])
        context = torch.cat([positive.embeds, negative.embeds.repeat(2, 3, 1)[:, :5]])
        mask = torch.cat([positive.mask, torch.tensor([[True] * 2 + [False] * 3] * 2)])
        state, hidden = model.embed(x, torch.full((4,), 0.6), context, mask, **settings.get("model_options", {}))
        modulated, weights = model.probe(state, hidden)
        model.run_blocks(state, hidden)
        hook.remove()
        assert torch.equal(modulated, seen[0])
        if family == "lumina2":  # the joint sequence's padding slots do not count
            assert weights.shape == modulated.shape[:2] and weights.sum(1).tolist() == [5 + 16, 3 + 16, 2 + 16, 2 + 16]
        else:
            assert weights is None

        cached = sample(model, positive, negative, cache=1e6, stats=stats, **run)
        assert stats.cached_calls == 4  # all but the first and last of 6 steps
        assert not torch.equal(cached, plain)
