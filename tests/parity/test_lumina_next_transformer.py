"""Our Lumina-Next transformer against diffusers' LuminaNextDiT2DModel, from every file layout.

diffusers takes the RoPE table and proportional attention from its caller (the pipeline): the table
from `get_2d_rotary_pos_embed_lumina(..., linear_factor, ntk_factor)` and the proportional-attention base
as `cross_attention_kwargs={"base_sequence_length": N0}`. Each case below passes ours the options and the
reference the factors those options stand for.
"""

import math
import warnings

import pytest
import torch
from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina
from safetensors.torch import save_file

from lumina_core import latents
from lumina_core.errors import CheckpointError, InvalidInputError
from lumina_core.loading.detect import matching_signatures
from lumina_core.loading.keymaps.lumina_next import map_diffusers_keys, to_diffusers
from lumina_core.loading.transformer import inspect_transformer, load_transformer
from lumina_core.models.lumina_next import grid_positions, merge_tokens
from tests.fixtures import lumina2_files
from tests.fixtures.lumina_next_files import LAYOUTS, WIDE, make_reference, original_state_dict, write_layout
from tests.fixtures.metrics import relative_error

TOLERANCE = 1e-5
# Options that make ours compute exactly what diffusers computes with an identity RoPE table and no
# proportional attention (diffusers' model has no defaults for these: the pipeline chooses them).
PLAIN = dict(rope_scaling=None, proportional_attention=False)


@pytest.fixture(scope="module")
def reference():
    return make_reference(seed=0)


@pytest.fixture(scope="module")
def ours(reference, tmp_path_factory):
    return load_transformer(write_layout(reference, "comfy.safetensors", tmp_path_factory.mktemp("ckpt")))


def inputs(batch=2, height=8, width=12, lengths=(7, 5), sigma=None, seed=1):
    """Non-square latent, right-padded captions of different lengths, one sigma per sample."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, height, width, generator=g)
    context = torch.randn(batch, max(lengths), 16, generator=g)
    mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    sigma = torch.rand(batch, generator=g) if sigma is None else torch.tensor(sigma)
    return x, sigma, context, mask


@torch.no_grad()
def reference_velocity(reference, x, sigma, context, mask, linear=1.0, ntk=1.0, base_tokens=None):
    # diffusers runs in Lumina time (t = 1 - sigma), predicts data - noise and returns both learn-sigma halves.
    rope = get_2d_rotary_pos_embed_lumina(reference.head_dim, 64, 64, linear_factor=linear, ntk_factor=ntk)
    kwargs = {} if base_tokens is None else {"base_sequence_length": base_tokens}
    out = reference(x, 1 - sigma, context, mask, rope, cross_attention_kwargs=kwargs).sample
    return -out[:, : x.shape[1]]


@pytest.mark.parametrize("lengths", [(7, 5, 3), (7, 7, 7), (1, 7, 4)], ids=["mixed", "equal", "one-token"])
@torch.no_grad()
def test_forward_matches_diffusers(reference, ours, lengths):
    args = inputs(batch=3, lengths=lengths)
    assert relative_error(ours(*args, **PLAIN), reference_velocity(reference, *args)) < TOLERANCE


# base_resolution 64 px makes the tiny latents extrapolate: N0 = (64 / 16)^2 = 16 training tokens, and an
# 8 x 12 latent (24 tokens, 64 x 96 px) has scale s = sqrt(64 * 96) / 64.
S = math.sqrt(64 * 96) / 64
SMALL_BASE = dict(base_resolution=64)
SCALED = {
    # name: (our options, sigma, diffusers (linear_factor, ntk_factor, base_sequence_length))
    "proportional": (dict(SMALL_BASE, rope_scaling=None), (0.5, 0.5), (1.0, 1.0, 16)),
    "time-aware-early-linear": (dict(SMALL_BASE, scaling_watershed=0.5), (0.7, 0.1), (S, 1.0, 16)),
    "time-aware-late-ntk": (dict(SMALL_BASE, scaling_watershed=0.5), (0.2, 0.9), (1.0, S, 16)),
    "linear-no-proportional": (dict(SMALL_BASE, rope_scaling="linear", proportional_attention=False), (0.2, 0.9),
                               (S, 1.0, None)),
    "ntk-no-proportional": (dict(SMALL_BASE, rope_scaling="ntk", proportional_attention=False), (0.7, 0.1),
                            (1.0, S, None)),
    "explicit-scale-below-one": (dict(rope_scaling="linear", rope_scale=0.75, proportional_attention=False),
                                 (0.5, 0.5), (0.75, 1.0, None)),
    # The defaults at the released training size 1024 px: s floors at 1, N0 = 4096.
    "defaults": ({}, (0.5, 0.5), (1.0, 1.0, 4096)),
}  # fmt: skip


@pytest.mark.parametrize("shape", [(8, 12), (12, 8)], ids=["wide", "tall"])
@pytest.mark.parametrize("case", SCALED)
@torch.no_grad()
def test_extrapolation_options_match_diffusers(reference, ours, case, shape):
    options, sigma, (linear, ntk, base_tokens) = SCALED[case]
    args = inputs(height=shape[0], width=shape[1], sigma=sigma)
    expected = reference_velocity(reference, *args, linear=linear, ntk=ntk, base_tokens=base_tokens)
    assert relative_error(ours(*args, **options), expected) < TOLERANCE


@torch.no_grad()
def test_each_input_moves_the_output_far_beyond_the_tolerance(ours):
    """The comparisons above could fail: every input, the mask, the positions and each option matter."""
    x, sigma, context, mask = inputs(height=12, width=12)  # square, beyond the 64 px base: s = 1.5
    base = ours(x, sigma, context, mask, **SMALL_BASE)
    shorter = mask.clone()
    shorter[0, 6] = False

    def transpose_grid(latent):  # swap patch rows and columns, each 2x2 patch unchanged
        return latent.unflatten(2, (-1, 2)).unflatten(4, (-1, 2)).permute(0, 1, 4, 3, 2, 5).flatten(4).flatten(2, 3)

    # Without RoPE the network is equivariant to moving whole patches: only positions tell these apart.
    perturbed = {
        "caption features": ours(x, sigma, context + 0.05 * torch.randn_like(context), mask, **SMALL_BASE),
        "caption mask": ours(x, sigma, context, shorter, **SMALL_BASE),
        "timestep": ours(x, sigma + 0.05, context, mask, **SMALL_BASE),
        "positions (patch grid rolled)": ours(x.roll(2, -1), sigma, context, mask, **SMALL_BASE).roll(-2, -1),
        "positions (patch grid transposed)": transpose_grid(ours(transpose_grid(x), sigma, context, mask,
                                                                 **SMALL_BASE)),
        "proportional attention off": ours(x, sigma, context, mask, **SMALL_BASE, proportional_attention=False),
        "rope scaling off": ours(x, sigma, context, mask, **SMALL_BASE, rope_scaling=None),
        "ntk instead of linear": ours(x, sigma, context, mask, **SMALL_BASE, rope_scaling="ntk"),
    }  # fmt: skip
    for name, moved in perturbed.items():
        assert relative_error(moved, base) > 100 * TOLERANCE, name


@torch.no_grad()
def test_wide_model_takes_the_1024_adaln_branch(tmp_path):
    reference = make_reference(seed=3, **WIDE)
    model = load_transformer(write_layout(reference, "original.safetensors", tmp_path))
    assert model.config.t_emb_dim == 1024 and model.config.head_dim == 136
    args = inputs(height=4, width=6, lengths=(7, 2))
    assert relative_error(model(*args, **PLAIN), reference_velocity(reference, *args)) < TOLERANCE


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_the_same_parameters(reference, layout, tmp_path):
    model = load_transformer(write_layout(reference, layout, tmp_path))
    assert model.family == "lumina_next"
    expected = original_state_dict(reference, pad_token=False)
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key


def test_config_is_derived_from_shapes_and_config_json(ours, reference, tmp_path):
    cfg = ours.config
    assert (cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_hidden) == (32, 4, 2, 8, 96)
    assert (cfg.n_layers, cfg.cap_feat_dim, cfg.in_channels, cfg.out_channels, cfg.qk_norm) == (2, 16, 4, 8, True)
    assert cfg.sample_size == 128  # original files do not say it: the released 1024 px
    assert inspect_transformer(write_layout(reference, "diffusers_pipeline", tmp_path)).config.sample_size == 16
    assert ours.latent_shape(2, 1024, 512) == (2, 4, 128, 64)
    assert ours.latent_format == latents.SDXL == latents.LatentFormat(0.13025, 0.0)
    with pytest.raises(InvalidInputError, match="multiples of 16"):
        ours.latent_shape(1, 1000, 512)


def test_dtype_is_applied_while_loading(reference, tmp_path):
    model = load_transformer(write_layout(reference, "original.safetensors", tmp_path), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and model.compute_dtype == torch.bfloat16
    args = inputs()
    with torch.no_grad():
        assert relative_error(model(*args, **PLAIN).float(), reference_velocity(reference, *args)) < 5e-2


# Key map and detection


def test_every_diffusers_key_maps_to_one_original_key_and_back(reference):
    diffusers_sd = reference.state_dict()
    plan, unmatched = map_diffusers_keys(list(diffusers_sd))
    assert unmatched == []
    sources = [s for group in plan.values() for s in group]
    assert sorted(sources + ["pad_token"]) == sorted(diffusers_sd)  # each used once, none left over
    assert plan["layers.1.attention.wq.weight"] == ["layers.1.attn1.to_q.weight", "layers.1.attn2.to_q.weight"]
    back = to_diffusers(original_state_dict(reference))
    assert set(back) == set(diffusers_sd) and all(torch.equal(back[k], diffusers_sd[k]) for k in back)


def test_a_lone_copy_of_a_duplicated_tensor_is_reported():
    plan, unmatched = map_diffusers_keys(["layers.0.attn2.to_q.weight", "layers.0.mystery.weight", "pad_token"])
    assert plan == {} and sorted(unmatched) == ["layers.0.attn2.to_q.weight", "layers.0.mystery.weight"]


def test_diverging_diffusers_copies_are_refused(reference, tmp_path):
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    state["layers.1.attn2.norm_q.bias"] += 0.01
    save_file(state, tmp_path / "edited.safetensors")
    with pytest.raises(CheckpointError, match="layers.1.attn1.norm_q.bias and layers.1.attn2.norm_q.bias") as err:
        load_transformer(tmp_path / "edited.safetensors")
    assert "must be identical" in str(err.value)


def test_the_older_lumina_t2i_layout_is_refused(reference, tmp_path):
    state = original_state_dict(reference)
    state["layers.0.adaLN_modulation.1.weight"] = torch.zeros(6 * 32, 32)  # shift + scale + gate, twice
    save_file(state, tmp_path / "t2i.safetensors")
    with pytest.raises(CheckpointError, match="Lumina-T2I"):
        load_transformer(tmp_path / "t2i.safetensors")


def test_real_key_sets_match_one_signature_and_each_family_loads_as_itself(reference, tmp_path):
    lumina2 = lumina2_files.make_reference(seed=0)
    key_sets = {
        ("lumina_next", "original"): original_state_dict(reference),
        ("lumina_next", "diffusers"): reference.state_dict(),
        ("lumina2", "original"): lumina2_files.original_state_dict(lumina2),
        ("lumina2", "diffusers"): lumina2.state_dict(),
    }
    for (family, layout), state in key_sets.items():
        hits = matching_signatures(set(state))
        assert [(h.family, h.layout) for h in hits] == [(family, layout)]
    assert load_transformer(lumina2_files.write_layout(lumina2, "comfy.safetensors", tmp_path)).family == "lumina2"
    assert load_transformer(write_layout(reference, "comfy.safetensors", tmp_path)).family == "lumina_next"


# Bad input


def test_gemma2_features_name_both_families(ours):
    x, sigma, _, mask = inputs()
    with pytest.raises(InvalidInputError) as err:
        ours(x, sigma, torch.randn(2, 7, 2304), mask)
    message = str(err.value)
    assert "Lumina-Next" in message and "Lumina-Image 2.0" in message and "Gemma-2-2B" in message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, s, c, m: (x[:, :3], s, c, m), "expects a latent"),
        (lambda x, s, c, m: (x[..., :11], s, c, m), "multiples of 2"),
        (lambda x, s, c, m: (x, s[:1], c, m), "batch mismatch"),
    ],
)
def test_bad_inputs_are_named(ours, change, message):
    with pytest.raises(InvalidInputError, match=message):
        ours(*change(*inputs()))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(rope_scaling="yarn"), "rope_scaling must be one of"),
        (dict(rope_scale=0.0), "rope_scale must be a positive"),
        (dict(base_resolution=16), "base_resolution"),
        (dict(context_drop_ratio=0), "context_drop_ratio"),
        (dict(context_drop_ratio=1.5), "context_drop_ratio"),
    ],
)
def test_bad_options_are_named(ours, options, message):
    with pytest.raises(InvalidInputError, match=message):
        ours(*inputs(), **options)


@torch.no_grad()
def test_extrapolating_beyond_four_times_the_trained_tokens_warns(ours):
    """Once per sampling run (`check_run`, which `sample` calls), not in the forward, which compiles."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.check_run((2, 4, 16, 16), **SMALL_BASE)  # 64 tokens = 4 x 16: allowed silently
    with pytest.warns(UserWarning, match=r"72 image tokens, 4\.5x the 16"):
        ours.check_run((2, 4, 18, 16), **SMALL_BASE)
    with pytest.raises(InvalidInputError, match="context_drop_ratio"):
        ours.check_run((2, 4, 16, 16), context_drop_ratio=0)


# Context drop


def test_merge_tokens_averages_windows_and_ragged_edges():
    tokens = torch.arange(15.0).reshape(1, 15, 1, 1)  # a 3 x 5 grid
    merged = merge_tokens(tokens, (3, 5), 2).flatten().tolist()
    assert merged == [3.0, 5.0, 6.5, 10.5, 12.5, 14.0]
    centroids = merge_tokens(grid_positions(3, 5), (3, 5), 2)[0].tolist()
    assert centroids == [[0.5, 0.5], [0.5, 2.5], [0.5, 4.0], [2.0, 0.5], [2.0, 2.5], [2.0, 4.0]]


@torch.no_grad()
def test_context_drop_changes_keys_only(ours):
    args = inputs(height=12, width=16)
    full = ours(*args, **SMALL_BASE)
    assert torch.equal(ours(*args, **SMALL_BASE, context_drop_ratio=1), full)
    for ratio in (2, 3):  # 6 x 8 tokens: 3 x 4 and ragged 2 x 3 windows
        dropped = ours(*args, **SMALL_BASE, context_drop_ratio=ratio)
        assert dropped.shape == full.shape and torch.isfinite(dropped).all()
        assert 100 * TOLERANCE < relative_error(dropped, full) < 1.0
