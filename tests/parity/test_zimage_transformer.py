"""Our Z-Image transformer against diffusers' ZImageTransformer2DModel, from every file layout."""

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from lumina_core.conditioning import Conditioning
from lumina_core.errors import InvalidInputError
from lumina_core.gguf.convert import convert
from lumina_core.loading.transformer import inspect_transformer, load_transformer
from lumina_core.models.zimage import ZImageTransformer
from lumina_core.sampling import sample
from tests.fixtures.metrics import relative_error
from tests.fixtures.zimage_files import (
    LAYOUTS,
    WIDE,
    DiffusersZImageVelocity,
    make_reference,
    original_state_dict,
    write_layout,
)

TOLERANCE = 1e-5
AXES = (2, 2, 4)  # TINY's RoPE split, which original files do not store


@pytest.fixture(scope="module")
def reference():
    return make_reference(seed=0)


@pytest.fixture(scope="module")
def ours(reference, tmp_path_factory):
    return load_transformer(
        write_layout(reference, "comfy.safetensors", tmp_path_factory.mktemp("ckpt")), axes_dims=AXES
    )


def inputs(batch=3, height=10, width=14, lengths=(9, 40, 1), seed=1):
    """Odd latent (5 x 7 = 35 patches: 29 image pad tokens), captions of mixed lengths, one sigma per sample."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, height, width, generator=g)
    context = torch.randn(batch, max(lengths), 16, generator=g)
    mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    sigma = torch.rand(batch, generator=g)
    return x, sigma, context, mask


@torch.no_grad()
def reference_velocity(reference, *args):
    return DiffusersZImageVelocity(reference)(*args)


@pytest.mark.parametrize(
    ("lengths", "size"),
    [((9, 40, 1), (10, 14)), ((32, 32, 32), (8, 16)), ((33, 7, 64), (6, 4)), ((5, 5, 5), (16, 2))],
    ids=["mixed-odd", "whole-blocks", "across-blocks", "equal-tall"],
)
@torch.no_grad()
def test_forward_matches_diffusers(reference, ours, lengths, size):
    args = inputs(lengths=lengths, height=size[0], width=size[1])
    assert relative_error(ours(*args), reference_velocity(reference, *args)) < TOLERANCE


@torch.no_grad()
def test_padding_beyond_the_caption_is_ignored(reference, ours):
    x, sigma, context, mask = inputs(lengths=(6, 4, 2))
    padded_context = torch.cat([context, torch.randn(3, 50, 16)], dim=1)
    padded_mask = torch.nn.functional.pad(mask, (0, 50), value=False)
    expected = reference_velocity(reference, x, sigma, context, mask)
    assert relative_error(ours(x, sigma, padded_context, padded_mask), expected) < TOLERANCE


@torch.no_grad()
def test_wide_model_takes_the_256_adaln_branch(tmp_path):
    reference = make_reference(seed=3, **WIDE)
    model = load_transformer(write_layout(reference, "diffusers_pipeline", tmp_path))
    assert (model.config.t_emb_dim, model.config.t_hidden_dim, model.config.axes_dims) == (256, 1024, (24, 24, 24))
    args = inputs(batch=2, height=4, width=6, lengths=(9, 3))
    assert relative_error(model(*args), reference_velocity(reference, *args)) < TOLERANCE


def _with(model: ZImageTransformer, **changes) -> ZImageTransformer:
    """The same weights under a changed config (RoPE theta, time scale ...)."""
    other = ZImageTransformer(dataclasses.replace(model.config, **changes))
    other.load_state_dict(model.state_dict())
    return other.eval()


@torch.no_grad()
def test_each_input_and_quirk_moves_the_output_far_beyond_the_tolerance(ours):
    """The comparison above could fail: inputs, mask, positions, pad tokens, RoPE theta and time scale all matter."""
    args = x, sigma, context, mask = inputs()
    base = ours(*args)
    shorter = mask.clone()
    shorter[0, 8] = False
    pads = {name: torch.randn_like(p) for name, p in ours.named_parameters() if name.endswith("pad_token")}
    other_pads = _with(ours)
    for name, value in pads.items():
        getattr(other_pads, name).copy_(value)
    perturbed = {
        "caption features": ours(x, sigma, context + 0.05 * torch.randn_like(context), mask),
        "caption mask": ours(x, sigma, context, shorter),
        "timestep": ours(x, sigma + 0.05, context, mask),
        "positions": ours(x.flip(-1), sigma, context, mask).flip(-1),
        "pad tokens": other_pads(*args),
        "RoPE theta 10000": _with(ours, rope_theta=10000.0)(*args),
        "time scale 1": _with(ours, time_scale=1.0)(*args),
    }
    for name, moved in perturbed.items():
        assert relative_error(moved, base) > 100 * TOLERANCE, name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_the_same_parameters(reference, layout, tmp_path):
    model = load_transformer(write_layout(reference, layout, tmp_path), axes_dims=AXES)
    assert model.family == "zimage"
    expected, loaded = original_state_dict(reference), model.state_dict()
    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        if layout == "comfy_bf16.safetensors":
            tensor = tensor.to(torch.bfloat16)
        assert torch.equal(loaded[key], tensor), key


def test_config_is_derived_from_shapes_and_config_json(reference, ours, tmp_path):
    cfg = ours.config
    assert (cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_hidden) == (32, 4, 4, 8, 85)
    assert (cfg.n_layers, cfg.n_refiner_layers, cfg.cap_feat_dim, cfg.in_channels) == (2, 1, 16, 4)
    assert (cfg.t_emb_dim, cfg.t_hidden_dim, cfg.time_scale, cfg.rope_theta, cfg.pad_multiple) == (
        32, 1024, 1000.0, 256.0, 32,
    )  # fmt: skip
    assert inspect_transformer(write_layout(reference, "diffusers_pipeline", tmp_path)).config.axes_dims == AXES


def test_the_released_rope_split_is_the_default_for_head_128():
    from lumina_core.models.zimage import default_axes_dims

    assert default_axes_dims(128) == (32, 48, 48)


def test_lumina2_and_zimage_files_are_told_apart(reference, tmp_path):
    from tests.fixtures.lumina2_files import make_reference as make_lumina2
    from tests.fixtures.lumina2_files import write_layout as write_lumina2

    zimage_file = write_layout(reference, "comfy.safetensors", tmp_path)
    assert inspect_transformer(zimage_file, axes_dims=AXES).family == "zimage"
    assert inspect_transformer(write_lumina2(make_lumina2(), "comfy.safetensors", tmp_path)).family == "lumina2"


def test_a_gemma_conditioning_is_refused_naming_both_models(ours):
    gemma = Conditioning(torch.randn(1, 4, 16), torch.ones(1, 4, dtype=torch.bool), "lumina2")
    with pytest.raises(InvalidInputError, match=r"Gemma-2-2B.*Lumina-Image 2.0.*Z-Image.*Qwen3-4B"):
        sample(ours, gemma, width=32, height=32, steps=1)


def test_features_of_another_width_name_their_encoder(ours):
    x, sigma, _, mask = inputs()
    with pytest.raises(InvalidInputError, match=r"width 16 \(Qwen3-4B\).*Gemma-2-2B features, which Lumina-Image"):
        ours(x, sigma, torch.randn(3, 40, 2304), mask)


@torch.no_grad()
def test_scaled_fp8_file_stays_fp8_and_computes_in_bf16(reference, tmp_path):
    tensors = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for name, value in original_state_dict(reference).items():
        if value.ndim == 2 and "layers." in name:
            scale = value.abs().max() / 448.0
            tensors |= {name: (value / scale).to(torch.float8_e4m3fn), name[:-7] + ".scale_weight": scale.reshape(())}
        else:
            tensors[name] = value.to(torch.bfloat16)
    save_file(tensors, tmp_path / "fp8_scaled.safetensors")
    model = load_transformer(tmp_path / "fp8_scaled.safetensors", axes_dims=AXES)
    assert model.compute_dtype == torch.bfloat16 and model.layers[0].attention.qkv.weight.dtype == torch.float8_e4m3fn
    args = inputs()
    assert relative_error(model(*args).float(), reference_velocity(reference, *args)) < 0.1


@torch.no_grad()
def test_gguf_from_our_converter_is_a_lumina2_file_that_loads_as_zimage(reference, ours, tmp_path):
    from lumina_core.gguf.reader import read_metadata

    path = tmp_path / "zimage-Q8_0.gguf"
    convert(write_layout(reference, "comfy.safetensors", tmp_path), path, "Q8_0")
    assert read_metadata(path)["general.architecture"] == "lumina2"  # as city96's converter writes it
    model = load_transformer(path, axes_dims=AXES)
    assert model.family == "zimage"
    args = inputs()
    assert relative_error(model(*args), ours(*args)) < 0.02


def test_the_diffusers_key_map_is_a_bijection(reference):
    """Every diffusers name maps to one original name, each used once, and back (the tables name every tensor)."""
    from lumina_core.loading.keymaps.zimage import map_diffusers_keys, to_diffusers

    keys = list(reference.state_dict())
    plan, unmatched = map_diffusers_keys(keys)
    assert unmatched == [] and sorted(s for group in plan.values() for s in group) == sorted(keys)
    assert plan["layers.0.attention.qkv.weight"] == [f"layers.0.attention.to_{p}.weight" for p in "qkv"]
    back = to_diffusers(original_state_dict(reference), dim=reference.config.dim)
    assert set(back) == set(keys) and all(torch.equal(back[k], reference.state_dict()[k]) for k in keys)
    assert map_diffusers_keys(["siglip_embedder.1.weight"])[1] == ["siglip_embedder.1.weight"]  # Omni: not ours
