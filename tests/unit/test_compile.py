"""torch.compile: every family's forward and cache stages trace into one graph each (fullgraph: no break), with
masks, batch > 1, the model options and GGUF layers; a sampling run compiles once and a new size at most once more.

Traced with a backend that only counts the graphs it is handed and runs them as traced (inductor's code generation
is the benches' business: compiling even a tiny model with it takes minutes on a small CPU).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from lumina_core import tiny
from lumina_core.compile import compiled
from lumina_core.conditioning import Conditioning
from lumina_core.gguf.convert import convert
from lumina_core.loading.transformer import load_transformer
from lumina_core.models.ltxv_keyframes import VideoCondition
from lumina_core.multiscale import MultiscaleRecipe, multiscale_sample
from lumina_core.sampling import SamplingStats, sample
from lumina_core.vae import VideoGuide
from tests.fixtures.metrics import relative_error

GRAPHS: list[torch.fx.GraphModule] = []


@torch._dynamo.register_backend(name="lumina_counting")
def counting_backend(graph: torch.fx.GraphModule, example_inputs) -> object:
    GRAPHS.append(graph)
    return graph.forward


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    GRAPHS.clear()
    yield
    torch._dynamo.reset()


def text(batch: int, tokens: int, width: int, padded: bool = True, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    if padded:
        mask[1:, tokens // 2 :] = False
    return torch.randn(batch, tokens, width, generator=g), mask


def lumina2():
    return tiny.make_transformer(0), torch.randn(2, 16, 8, 6), {}


def lumina_next(**options):
    return lambda: (tiny.make_lumina_next(0), torch.randn(2, 4, 8, 6), options)


def ltxv(per_token: bool = False, keyframe: bool = False):
    def build():
        model = tiny.make_ltxv_transformer(0)
        options = {"frame_rate": 24.0, "per_token": per_token}
        if keyframe:  # an appended guide frame placed at pixel frame 16, ahead of the video's two latent frames
            options["frame_positions"] = torch.tensor([16.0, 0.0, 8.0])
        return model, torch.randn(2, 128, 3 if keyframe else 2, 3, 4), options

    return build


def gguf(family: str, qtype: str):
    def build(tmp_path):
        if family == "lumina2":  # Linear inputs that are whole K-quant super-blocks of 256
            model = tiny.make_transformer(0, replace(tiny.TINY_TRANSFORMER, dim=256, n_heads=4, ffn_hidden=512,
                                                     axes_dims=(24, 20, 20)))  # fmt: skip
            source, x = tiny.write_transformer(model, "original.safetensors", tmp_path), torch.randn(2, 16, 6, 4)
        else:
            model = tiny.make_ltxv_transformer(0)
            source, x = tmp_path / "ltxv.safetensors", torch.randn(2, 128, 2, 3, 4)
            tensors = {f"model.diffusion_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
            save_file(tensors, source, metadata=tiny.ltxv_config_metadata(model.config))
        convert(source, tmp_path / "model.gguf", qtype)
        return load_transformer(tmp_path / "model.gguf"), x, {}

    return build


def fp8(tmp_path):  # weights kept in float8 and cast per layer (cast_ops), computing in bf16
    model = tiny.make_transformer(0)
    save_file({k: v.to(torch.float8_e4m3fn).contiguous() for k, v in model.state_dict().items()}, tmp_path / "f.st")
    loaded = load_transformer(tmp_path / "f.st")
    assert loaded.layers[0].attention.qkv.weight.dtype == torch.float8_e4m3fn
    return loaded, torch.randn(2, 16, 8, 6), {}


def zimage():  # Lumina 2's network with learned pad tokens up to 32 slots, captions from RoPE position 1
    return tiny.make_transformer(0, tiny.TINY_ZIMAGE), torch.randn(2, 16, 8, 6), {}


CASES = {
    "lumina2": lumina2,
    "zimage": zimage,
    "lumina_next-time_aware-extrapolated-context_drop": lumina_next(rope_scale=2.0, context_drop_ratio=2),
    "lumina_next-ntk-no_proportional": lumina_next(rope_scaling="ntk", rope_scale=1.5, proportional_attention=False),
    "ltxv-per_token_sigma": ltxv(per_token=True),
    "ltxv-keyframe_positions": ltxv(per_token=True, keyframe=True),
    "gguf-lumina2-Q4_K": gguf("lumina2", "Q4_K"),
    "gguf-ltxv-Q8_0": gguf("ltxv", "Q8_0"),
    "fp8-lumina2": fp8,
}


def call_args(model, x, options):
    options = dict(options)
    per_token = options.pop("per_token", False)
    width = getattr(model.config, "cap_feat_dim", None) or model.config.caption_channels
    context, mask = text(x.shape[0], 6, width)
    sigma = torch.tensor([0.9, 0.2])  # Lumina-Next's time-aware RoPE follows the first sample's t
    if per_token:  # image-to-video: the first frame kept (sigma 0)
        sigma = sigma.view(2, 1, 1, 1, 1).repeat(1, 1, *x.shape[2:])
        sigma[:, :, 0] = 0
    return (x, sigma, context, mask), options


@pytest.mark.parametrize("case", CASES)
def test_the_forward_is_one_graph(case, tmp_path):
    build = CASES[case]
    model, x, options = build(tmp_path) if case.startswith(("gguf", "fp8")) else build()
    args, options = call_args(model, x, options)
    with torch.no_grad():
        expected = model(*args, **options)
        compiled = torch.compile(model.forward, fullgraph=True, backend="lumina_counting")  # raises at any break
        assert relative_error(compiled(*args, **options), expected) < 1e-6
    assert len(GRAPHS) == 1


def test_the_latent_upsampler_is_one_graph():
    upsampler, latent = tiny.make_latent_upsampler(0), torch.randn(2, 128, 2, 3, 4)
    with torch.no_grad():
        compiled = torch.compile(upsampler, fullgraph=True, backend="lumina_counting")
        assert relative_error(compiled(latent), upsampler(latent)) < 1e-6
    assert len(GRAPHS) == 1


def prompts(width: int, seed: int = 0) -> tuple[Conditioning, Conditioning]:
    g = torch.Generator().manual_seed(seed)
    positive = Conditioning(torch.randn(1, 5, width, generator=g), torch.ones(1, 5, dtype=torch.bool))
    negative = Conditioning(torch.randn(1, 3, width, generator=g), torch.ones(1, 3, dtype=torch.bool))
    return positive, negative


FAMILY_RUNS = {
    "lumina2": (lambda: tiny.make_transformer(0), 32, {}),
    "lumina_next": (lambda: tiny.make_lumina_next(0), 32, {}),
    "ltxv": (lambda: tiny.make_ltxv_transformer(0), tiny.TINY_LTXV.caption_channels, {"frames": 9}),
    "zimage": (lambda: tiny.make_transformer(0, tiny.TINY_ZIMAGE), 32, {}),
}


@pytest.mark.parametrize("family", FAMILY_RUNS)
def test_a_sampling_run_compiles_once(family):
    """Counted over 4-step runs with guidance: sigma changes at every step, the graphs stay."""
    build, width, video = FAMILY_RUNS[family]
    model, (positive, negative) = build(), prompts(width)
    options = {"frame_rate": 24.0} if video else {}

    def run(size: int = 64, compile: str | None = "lumina_counting", **settings):
        return sample(model, positive, negative, width=size, height=64, steps=4, cfg=3.0, renorm_cfg=0.0,
                      compile=compile, model_options=options, **video, **settings)  # fmt: skip

    with torch.no_grad():
        assert relative_error(run(), run(compile=None)) < 1e-6
        assert len(GRAPHS) == 1
        run(seed=1)
        assert len(GRAPHS) == 1  # a second run reuses the graph
        if family == "zimage":  # no published TeaCache coefficients: the cache is refused
            return
        cached = run(cache=0.3)  # the step cache runs the forward in its four stages, each one graph
        assert len(GRAPHS) == 5
        assert relative_error(cached, run(compile=None, cache=0.3)) < 1e-6
        run(cache=0.3, seed=2)
        assert len(GRAPHS) == 5
        if family != "lumina_next":
            return
        run(cfg_trunc=0.1)  # guides the calls at sigma > 0.9 (the first two of four), then the cond rows alone
        assert len(GRAPHS) == 6  # the cond-only call: batch 1, no padding, no mask


@pytest.mark.parametrize("family", FAMILY_RUNS)
def test_a_new_size_compiles_at_most_once(family):
    """4-step guided runs at widths 64, 96, 128, 160: the second size recompiles once with its changed dims symbolic,
    and later sizes reuse that graph. Z-Image pads its image tokens to a multiple of 32 with learned tokens: a size
    needing no pad tokens (128: 32 tokens) is a graph of its own, once."""
    build, width, video = FAMILY_RUNS[family]
    model, (positive, negative) = build(), prompts(width)
    options = {"frame_rate": 24.0} if video else {}
    graphs = []
    with torch.no_grad():
        for size in (64, 96, 128, 160):
            sample(model, positive, negative, width=size, height=64, steps=4, cfg=3.0, renorm_cfg=0.0,
                   compile="lumina_counting", model_options=options, **video)  # fmt: skip
            graphs.append(len(GRAPHS))
    assert graphs == ([1, 2, 3, 3] if family == "zimage" else [1, 2, 2, 2])


def test_a_compiled_run_checks_interrupt_before_every_call_not_between_blocks():
    """Block hooks would be traced into the graph (ComfyUI's check takes a lock: a graph break); a compiled run calls
    `interrupt` before each model call and after each step instead."""

    class Cancelled(Exception):
        pass

    checks = []

    def interrupt():
        checks.append(len(checks))
        if len(checks) == 3:  # before call 1, after step 1, before call 2
            raise Cancelled

    model, (positive, negative) = tiny.make_transformer(0), prompts(32)
    with torch.no_grad(), pytest.raises(Cancelled):
        sample(model, positive, negative, width=64, height=64, steps=4, compile="lumina_counting", interrupt=interrupt)
    assert len(checks) == 3 and len(GRAPHS) == 1
    assert not any(block._forward_pre_hooks for block in model.layers)


def test_a_keyframe_run_compiles_once_and_caches():
    """LTX-Video with an image in place at frame 0 and a keyframe appended at frame 8 (per-token sigmas, explicit RoPE
    frame positions, a partial strength): one graph per run, the cached stages one each, and the cache at threshold 0
    the uncached run bit for bit."""
    model, (positive, negative) = tiny.make_ltxv_transformer(0), prompts(tiny.TINY_LTXV.caption_channels)
    g = torch.Generator().manual_seed(3)
    conditions = [VideoCondition(torch.randn(1, 128, 1, 2, 2, generator=g)),
                  VideoCondition(torch.randn(1, 128, 1, 2, 2, generator=g), frame_index=8, strength=0.6)]  # fmt: skip

    def run(compile: str | None = "lumina_counting", stats: SamplingStats | None = None, **settings):
        return sample(model, positive, negative, width=64, height=64, frames=17, steps=4, cfg=3.0, renorm_cfg=0.0,
                      conditions=conditions, condition_noise_scale=0.15, compile=compile, stats=stats,
                      model_options={"frame_rate": 24.0}, **settings)  # fmt: skip

    with torch.no_grad():
        eager = run(compile=None)
        assert relative_error(run(), eager) < 1e-6
        assert len(GRAPHS) == 1
        assert torch.equal(run(compile=None, cache=0.0), eager)
        stats = SamplingStats()
        cached = run(cache=10.0, stats=stats)  # skips every call but the first and the last
        assert len(GRAPHS) == 5 and stats.cached_calls == 2
        assert relative_error(cached, run(compile=None, cache=10.0)) < 1e-6


def test_the_multiscale_recipe_compiles_each_pass_once_and_caches():
    """Both passes of the two-pass recipe (the second at twice the size, from the upsampled latent, the guide encoded
    again): the second size costs one recompile of each graph, and the cache works in both passes."""
    model, (positive, negative) = tiny.make_ltxv_transformer(0), prompts(tiny.TINY_LTXV.caption_channels)
    upsampler, vae = tiny.make_latent_upsampler(0), tiny.make_ltx_vae(0)
    guide = VideoGuide(torch.rand(1, 3, 128, 192, generator=torch.Generator().manual_seed(4)))
    recipe = MultiscaleRecipe(first_pass={"steps": 3, "cfg": 3.0}, second_pass={"steps": 3, "cfg": 3.0,
                              "denoise": 0.5})  # fmt: skip

    def run(compile: str | None = "lumina_counting", **settings):
        return multiscale_sample(model, upsampler, vae, positive, negative, width=192, height=128, frames=9,
                                 guides=[guide], recipe=recipe, renorm_cfg=0.0, compile=compile,
                                 model_options={"frame_rate": 24.0}, **settings)  # fmt: skip

    with torch.no_grad():
        assert relative_error(run(), run(compile=None)) < 1e-6
        assert len(GRAPHS) == 2  # the forward at the small size, then once more at the large one
        stats = SamplingStats()
        cached = run(cache=10.0, stats=stats)
        assert len(GRAPHS) == 2 + 2 * 4 and stats.cached_calls == 1  # the four stages at each size; stats: pass 2
        assert relative_error(cached, run(compile=None, cache=10.0)) < 1e-6


def test_families_compiled_in_one_process_keep_their_own_shape_history():
    """Lumina 2 at two sizes (its dims turn dynamic), then LTX-Video: each family's forward has its own history, so
    LTX-Video's 5-D latent compiles for its own exact sizes, once, and computes as eager."""
    lumina2, ltxv = tiny.make_transformer(0), tiny.make_ltxv_transformer(0)
    context = torch.randn(2, 5, tiny.TINY_LTXV.caption_channels)
    with torch.no_grad():
        for width in (6, 8):
            compiled(lumina2, "lumina_counting")(torch.randn(2, 16, 8, width), torch.rand(2), torch.randn(2, 5, 32))
        assert len(GRAPHS) == 2
        x, sigma = torch.randn(2, 128, 2, 3, 4), torch.rand(2)
        out = compiled(ltxv, "lumina_counting")(x, sigma, context, frame_rate=24.0)
        assert relative_error(out, ltxv(x, sigma, context, frame_rate=24.0)) < 1e-6
    assert len(GRAPHS) == 3
