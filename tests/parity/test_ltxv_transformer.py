"""Our LTX-Video transformer against diffusers' LTXVideoTransformer3DModel, from every file layout.

diffusers takes packed tokens (B, F*H*W, C), timestep = sigma x 1000, and its RoPE positions from the caller:
either `rope_interpolation_scale` (8 / fps, 32, 32), as LTXPipeline (text-to-video) passes it, which never
applies the causal frame fix, or explicit `video_coords`, as LTXConditionPipeline builds them, causal-fixed.
Each case below gives ours the config and frame rate those stand for.
"""

import json

import pytest
import torch
from safetensors.torch import save_file

from lumina_core.errors import CheckpointError, InvalidInputError, UnsupportedModelError
from lumina_core.loading.detect import matching_signatures
from lumina_core.loading.keymaps.ltxv import BLOCK, TOP_LEVEL, map_diffusers_keys, to_diffusers
from lumina_core.loading.transformer import inspect_transformer, load_transformer
from tests.fixtures.ltxv_files import (
    LAYOUTS,
    LAYOUTS_WITH_CONFIG,
    NO_PADDING,
    lightricks_config,
    make_reference,
    original_state_dict,
    write_layout,
)
from tests.fixtures.metrics import relative_error

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference():
    return make_reference(seed=0)


@pytest.fixture(scope="module")
def ours(reference, tmp_path_factory):
    return load_transformer(write_layout(reference, "lightricks.safetensors", tmp_path_factory.mktemp("ckpt")))


@pytest.fixture(scope="module")
def ours_causal(reference, tmp_path_factory):
    path = write_layout(reference, "lightricks.safetensors", tmp_path_factory.mktemp("causal"), causal=True)
    return load_transformer(path)


def inputs(batch=3, frames=3, height=4, width=6, lengths=(7, 4, 1), channels=8, caption=12, seed=1):
    """Right-padded captions of different lengths (one of a single token), one sigma per sample."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, frames, height, width, generator=g)
    context = torch.randn(batch, max(lengths), caption, generator=g)
    mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    sigma = torch.rand(batch, generator=g)
    return x, sigma, context, mask


def causal_video_coords(batch: int, frames: int, height: int, width: int, frame_rate: float) -> torch.Tensor:
    """(B, 3, F*H*W) pixel positions as LTXConditionPipeline builds them: causal frame fix, frames in seconds."""
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in (frames, height, width)), indexing="ij"))
    pixels = (grid.flatten(1) * torch.tensor([8, 32, 32])[:, None]).float()
    pixels[0] = (pixels[0] + 1 - 8).clamp(min=0) * (1.0 / frame_rate)
    return pixels[None].repeat(batch, 1, 1)


@torch.no_grad()
def reference_velocity(reference, x, sigma, context, mask, frame_rate=25.0, causal=False):
    batch, _, frames, height, width = x.shape
    if causal:
        positions = {"video_coords": causal_video_coords(batch, frames, height, width, frame_rate)}
    else:
        positions = {"rope_interpolation_scale": (8 / frame_rate, 32, 32)}
    out = reference(
        x.flatten(2).transpose(1, 2), context, sigma * 1000, mask.float(), num_frames=frames, height=height,
        width=width, return_dict=False, **positions,
    )[0]  # fmt: skip
    return out.transpose(1, 2).unflatten(2, (frames, height, width))


SHAPES = {"3x4x6": (3, 4, 6), "one-frame-odd": (1, 5, 3), "odd-7-wide": (2, 3, 7), "single-token": (1, 1, 1)}


@pytest.mark.parametrize("frame_rate", [25.0, 24.0, 30.0])
@pytest.mark.parametrize("shape", SHAPES)
@torch.no_grad()
def test_forward_matches_diffusers(reference, ours, shape, frame_rate):
    frames, height, width = SHAPES[shape]
    args = inputs(frames=frames, height=height, width=width)
    expected = reference_velocity(reference, *args, frame_rate=frame_rate)
    assert relative_error(ours(*args, frame_rate=frame_rate), expected) < TOLERANCE


@pytest.mark.parametrize("shape", ["3x4x6", "one-frame-odd"])
@torch.no_grad()
def test_causal_positions_match_diffusers_video_coords(reference, ours_causal, shape):
    frames, height, width = SHAPES[shape]
    args = inputs(frames=frames, height=height, width=width)
    expected = reference_velocity(reference, *args, frame_rate=24.0, causal=True)
    assert relative_error(ours_causal(*args, frame_rate=24.0), expected) < TOLERANCE


@torch.no_grad()
def test_width_divisible_by_six_has_no_rope_padding(tmp_path):
    reference = make_reference(seed=2, **NO_PADDING)
    model = load_transformer(write_layout(reference, "lightricks.safetensors", tmp_path))
    assert model.config.dim == 24 and model.config.n_heads == 3
    args = inputs(frames=2, height=3, width=5)
    assert relative_error(model(*args), reference_velocity(reference, *args)) < TOLERANCE


@torch.no_grad()
def test_equal_full_captions_take_the_unmasked_path(reference, ours):
    args = inputs(batch=2, lengths=(5, 5))
    assert relative_error(ours(*args), reference_velocity(reference, *args)) < TOLERANCE


@torch.no_grad()
def test_each_input_moves_the_output_far_beyond_the_tolerance(ours, ours_causal):
    """The comparisons above could fail: captions, mask, time, frame rate and every position axis matter."""
    x, sigma, context, mask = inputs(frames=3, height=4, width=4)  # square, so rows and columns can be swapped
    base = ours(x, sigma, context, mask)
    shorter = mask.clone()
    shorter[0, 6] = False

    def swap_rows_and_columns(latent):
        return latent.transpose(-1, -2)

    # Without RoPE the network treats tokens as a set: only positions tell these apart.
    perturbed = {
        "caption features": ours(x, sigma, context + 0.05 * torch.randn_like(context), mask),
        "caption mask": ours(x, sigma, context, shorter),
        "timestep": ours(x, sigma + 0.01, context, mask),
        "frame rate 24 instead of 25": ours(x, sigma, context, mask, frame_rate=24.0),
        "causal frame positions": ours_causal(x, sigma, context, mask),
        "latent rows and columns transposed": swap_rows_and_columns(ours(swap_rows_and_columns(x), sigma, context,
                                                                         mask)),
        "frames reversed": ours(x.flip(2), sigma, context, mask).flip(2),
    }  # fmt: skip
    deltas = {name: relative_error(moved, base) for name, moved in perturbed.items()}
    for name, delta in deltas.items():
        assert delta > 100 * TOLERANCE, (name, delta)


@torch.no_grad()
def test_one_frame_is_the_same_with_and_without_the_causal_fix(ours, ours_causal):
    """Frame 0 sits at pixel 0 either way: the conventions differ only from the second latent frame on."""
    args = inputs(frames=1)
    torch.testing.assert_close(ours_causal(*args), ours(*args), rtol=0, atol=0)


# Loading


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_the_same_parameters(reference, layout, tmp_path):
    heads = {} if layout in LAYOUTS_WITH_CONFIG else {"n_heads": 2}
    model = load_transformer(write_layout(reference, layout, tmp_path), **heads)
    assert model.family == "ltxv" and model.config.n_heads == 2
    expected = original_state_dict(reference)
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key


def test_config_is_derived_from_shapes_and_stored_config(ours, reference, tmp_path):
    cfg = ours.config
    assert (cfg.dim, cfg.n_layers, cfg.in_channels, cfg.out_channels) == (32, 2, 8, 8)
    assert (cfg.cross_attention_dim, cfg.caption_channels, cfg.ffn_hidden) == (32, 12, 128)
    assert (cfg.n_heads, cfg.head_dim, cfg.causal_temporal_positioning) == (2, 16, False)
    assert inspect_transformer(write_layout(reference, "diffusers_pipeline", tmp_path)).config.n_heads == 2


def test_the_head_count_is_not_in_the_weights(reference, ours, tmp_path):
    """Without a config the release's 32 heads are assumed; only the caller can correct a smaller model."""
    bare = write_layout(reference, "bare.safetensors", tmp_path)
    assumed = load_transformer(bare)
    assert assumed.config.n_heads == 32  # 32 heads of 1 channel: it loads, and computes something else
    args = inputs()
    with torch.no_grad():
        assert relative_error(assumed(*args), ours(*args)) > 100 * TOLERANCE
        assert relative_error(load_transformer(bare, n_heads=2)(*args), ours(*args)) == 0.0
    with pytest.raises(CheckpointError, match="does not split into 5 attention heads"):
        load_transformer(bare, n_heads=5)


def test_metadata_config_is_honoured(reference, tmp_path):
    custom = dict(positional_embedding_theta=500.0, positional_embedding_max_pos=[10, 1024, 1024])
    metadata = lightricks_config(reference, causal=True, timestep_scale_multiplier=500, **custom)
    path = tmp_path / "custom.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in original_state_dict(reference).items()}, path,
              metadata={"config": json.dumps(metadata)})  # fmt: skip
    cfg = inspect_transformer(path).config
    assert (cfg.causal_temporal_positioning, cfg.rope_theta, cfg.max_positions) == (True, 500.0, (10.0, 1024.0, 1024.0))
    assert cfg.timestep_scale == 500
    assert inspect_transformer(path, causal_temporal_positioning=False).config.causal_temporal_positioning is False


def test_dtype_is_applied_while_loading(reference, tmp_path):
    model = load_transformer(write_layout(reference, "lightricks.safetensors", tmp_path), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and model.compute_dtype == torch.bfloat16
    args = inputs()
    with torch.no_grad():
        out = model(*args)
    assert out.dtype == torch.float32  # returned in the latent's dtype
    assert relative_error(out, reference_velocity(reference, *args)) < 5e-2


@pytest.mark.parametrize(
    ("metadata", "error", "message"),
    [
        ("{not json", CheckpointError, "not readable JSON"),
        (json.dumps({"transformer": {"standardization_norm": "layer_norm"}}), CheckpointError, "layer_norm"),
        (json.dumps({"transformer": {"use_audio_video_cross_attention": True}}), UnsupportedModelError, "LTX-2"),
    ],
    ids=["bad-json", "layer-norm", "ltx-2"],
)
def test_bad_metadata_config_is_named(reference, tmp_path, metadata, error, message):
    path = tmp_path / "odd.safetensors"
    save_file(original_state_dict(reference), path, metadata={"config": metadata})
    with pytest.raises(error, match=message) as err:
        inspect_transformer(path)
    assert str(path) in str(err.value)


def test_a_scale_only_modulation_is_refused(reference, tmp_path):
    state = original_state_dict(reference)
    state["adaln_single.linear.weight"] = torch.zeros(4 * 32, 32)
    save_file(state, tmp_path / "single_scale.safetensors")
    with pytest.raises(CheckpointError, match="6 x 32"):
        inspect_transformer(tmp_path / "single_scale.safetensors")


def test_a_missing_block_tensor_is_reported(reference, tmp_path):
    state = original_state_dict(reference)
    del state["transformer_blocks.1.attn2.k_norm.weight"]
    save_file(state, tmp_path / "partial.safetensors")
    with pytest.raises(CheckpointError, match="Missing: transformer_blocks.1.attn2.k_norm.weight"):
        load_transformer(tmp_path / "partial.safetensors", n_heads=2)


# Key map and detection


def test_every_diffusers_key_maps_to_one_original_key_and_back(reference):
    diffusers_sd = reference.state_dict()
    plan, unmatched = map_diffusers_keys(list(diffusers_sd))
    assert unmatched == [] and all(len(sources) == 1 for sources in plan.values())
    assert sorted(s for sources in plan.values() for s in sources) == sorted(diffusers_sd)
    assert plan["transformer_blocks.1.attn1.q_norm.weight"] == ["transformer_blocks.1.attn1.norm_q.weight"]
    assert plan["adaln_single.emb.timestep_embedder.linear_2.bias"] == [
        "time_embed.emb.timestep_embedder.linear_2.bias"
    ]
    back = to_diffusers(original_state_dict(reference))
    assert set(back) == set(diffusers_sd) and all(torch.equal(back[k], diffusers_sd[k]) for k in back)
    assert len(set(TOP_LEVEL.values())) == len(TOP_LEVEL) and len(set(BLOCK.values())) == len(BLOCK)


def test_unknown_diffusers_keys_are_reported():
    _, unmatched = map_diffusers_keys(["transformer_blocks.0.attn1.to_q.weight", "transformer_blocks.0.lora_A.weight"])
    assert unmatched == ["transformer_blocks.0.lora_A.weight"]


def test_real_key_sets_match_one_signature(reference):
    for layout, state in (("original", original_state_dict(reference)), ("diffusers", reference.state_dict())):
        hits = matching_signatures(set(state))
        assert [(h.family, h.layout) for h in hits] == [("ltxv", layout)]
    # diffusers-keyed PixArt shares adaln_single and the block names, but has no patchify_proj
    pixart = {"adaln_single.linear.weight", "transformer_blocks.0.attn1.to_q.weight", "pos_embed.proj.weight"}
    assert matching_signatures(pixart) == []


# Sizes and bad input


def test_latent_shape_follows_the_vae(ours):
    assert ours.latent_shape(2, 512, 768, frames=97) == (2, 8, 13, 16, 24)
    assert ours.latent_shape(1, 32, 32) == (1, 8, 1, 1, 1)


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((500, 768, 97), r"height 500 .* multiples of 32.* nearest is 512"),
        ((512, 720, 97), r"width 720 .* nearest is 704"),
        ((512, 16, 97), r"width 16 .* nearest is 32"),
        ((512, 768, 96), r"96 frames .* 8k \+ 1 .* nearest is 97"),
        ((512, 768, 0), r"0 frames .* nearest is 1"),
    ],
)
def test_bad_sizes_name_the_rule_and_the_nearest_valid_value(ours, size, message):
    height, width, frames = size
    with pytest.raises(InvalidInputError, match=message):
        ours.latent_shape(1, height, width, frames=frames)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, s, c, m: (x[:, :, 0], s, c, m), "expects a video latent"),
        (lambda x, s, c, m: (x[:, :4], s, c, m), "expects a video latent"),
        (lambda x, s, c, m: (x, s, torch.randn(3, 7, 4096), m), "width 12 .T5-XXL"),
        (lambda x, s, c, m: (x, s[:1], c, m), "batch mismatch"),
    ],
)
def test_bad_inputs_are_named(ours, change, message):
    with pytest.raises(InvalidInputError, match=message):
        ours(*change(*inputs()))


def test_bad_frame_rate_is_named(ours):
    with pytest.raises(InvalidInputError, match="frame_rate must be a positive"):
        ours(*inputs(), frame_rate=0)
