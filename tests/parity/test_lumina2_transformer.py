"""Our Lumina-Image 2.0 transformer against diffusers' Lumina2Transformer2DModel, from every file layout."""

import pytest
import torch

from lumina_core.errors import InvalidInputError
from lumina_core.loading.transformer import load_transformer
from tests.fixtures.lumina2_files import LAYOUTS, WIDE, make_reference, original_state_dict, write_layout
from tests.fixtures.metrics import relative_error

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference():
    return make_reference(seed=0)


@pytest.fixture(scope="module")
def ours(reference, tmp_path_factory):
    return load_transformer(write_layout(reference, "comfy.safetensors", tmp_path_factory.mktemp("ckpt")))


def inputs(batch=3, height=8, width=12, lengths=(9, 5, 7), seed=1):
    """Non-square latent, captions of different lengths, one sigma per sample."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, height, width, generator=g)
    context = torch.randn(batch, max(lengths), 16, generator=g)
    mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    sigma = torch.rand(batch, generator=g)
    return x, sigma, context, mask


@torch.no_grad()
def reference_velocity(reference, x, sigma, context, mask):
    # diffusers runs in Lumina time (t = 1 - sigma) and predicts data - noise.
    return -reference(x, 1 - sigma, context, mask).sample


@pytest.mark.parametrize("lengths", [(9, 5, 7), (9, 9, 9), (1, 9, 4)], ids=["mixed", "equal", "one-token"])
@torch.no_grad()
def test_forward_matches_diffusers(reference, ours, lengths):
    args = inputs(lengths=lengths)
    assert relative_error(ours(*args), reference_velocity(reference, *args)) < TOLERANCE


@torch.no_grad()
def test_padding_beyond_longest_caption_is_ignored(reference, ours):
    x, sigma, context, mask = inputs(lengths=(6, 4, 2))
    padded_context = torch.cat([context, torch.randn(3, 20, 16)], dim=1)
    padded_mask = torch.nn.functional.pad(mask, (0, 20), value=False)
    expected = reference_velocity(reference, x, sigma, context, mask)
    assert relative_error(ours(x, sigma, padded_context, padded_mask), expected) < TOLERANCE


@torch.no_grad()
def test_wide_model_takes_the_1024_adaln_branch(tmp_path):
    reference = make_reference(seed=3, **WIDE)
    model = load_transformer(write_layout(reference, "original.safetensors", tmp_path))
    assert model.config.t_emb_dim == 1024 and model.config.axes_dims == (46, 42, 42)
    args = inputs(batch=2, height=4, width=6, lengths=(9, 3))
    assert relative_error(model(*args), reference_velocity(reference, *args)) < TOLERANCE


@torch.no_grad()
def test_each_input_moves_the_output_far_beyond_the_tolerance(ours):
    """The comparison above could fail: every input, the mask and the positions matter."""
    x, sigma, context, mask = inputs()
    base = ours(x, sigma, context, mask)
    shorter = mask.clone()
    shorter[0, 8] = False
    flipped = x.flip(-1)  # same values at mirrored positions: only RoPE tells them apart
    perturbed = {
        "caption features": ours(x, sigma, context + 0.05 * torch.randn_like(context), mask),
        "caption mask": ours(x, sigma, context, shorter),
        "timestep": ours(x, sigma + 0.05, context, mask),
        "positions": ours(flipped, sigma, context, mask).flip(-1),
    }
    for name, moved in perturbed.items():
        assert relative_error(moved, base) > 100 * TOLERANCE, name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_the_same_parameters(reference, layout, tmp_path):
    model = load_transformer(write_layout(reference, layout, tmp_path))
    assert model.family == "lumina2"
    expected = original_state_dict(reference)
    expected.pop("norm_final.weight")
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        if layout == "comfy_bf16.safetensors":
            tensor = tensor.to(torch.bfloat16)
        assert torch.equal(loaded[key], tensor), key


def test_config_is_derived_from_shapes(ours):
    cfg = ours.config
    assert (cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (32, 4, 2, 8)
    assert (cfg.n_layers, cfg.n_refiner_layers, cfg.cap_feat_dim, cfg.in_channels) == (2, 1, 16, 4)
    assert cfg.axes_dims == (4, 2, 2)


def test_dtype_is_applied_while_loading(reference, tmp_path):
    model = load_transformer(write_layout(reference, "original.safetensors", tmp_path), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    args = inputs()
    with torch.no_grad():
        assert relative_error(model(*args).float(), reference_velocity(reference, *args)) < 5e-2


@torch.no_grad()
def test_a_non_default_rope_split_comes_from_config_json_or_the_caller(tmp_path):
    """Shapes cannot tell the RoPE split: diffusers folders say it in config.json, other files need the caller."""
    reference = make_reference(seed=5, axes_dim_rope=(2, 2, 4))
    args = inputs(lengths=(9, 5, 7))
    expected = reference_velocity(reference, *args)
    from_folder = load_transformer(write_layout(reference, "diffusers_pipeline", tmp_path))
    assert from_folder.config.axes_dims == (2, 2, 4)
    assert relative_error(from_folder(*args), expected) < TOLERANCE
    original = write_layout(reference, "original.safetensors", tmp_path)
    assert relative_error(load_transformer(original, axes_dims=(2, 2, 4))(*args), expected) < TOLERANCE
    assert relative_error(load_transformer(original)(*args), expected) > 100 * TOLERANCE  # default split differs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, s, c, m: (x[:, :3], s, c, m), "expects a latent"),
        (lambda x, s, c, m: (x[..., :11], s, c, m), "multiples of 2"),
        (lambda x, s, c, m: (x, s, c[..., :8], m), "text features of width 16"),
        (lambda x, s, c, m: (x, s[:2], c, m), "batch mismatch"),
    ],
)
def test_bad_inputs_are_named(ours, change, message):
    with pytest.raises(InvalidInputError, match=message):
        ours(*change(*inputs()))


def test_fp8_file_computes_in_bf16(reference, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.to(torch.float8_e4m3fn) for k, v in original_state_dict(reference).items()}
    save_file(state, tmp_path / "fp8.safetensors")
    model = load_transformer(tmp_path / "fp8.safetensors")
    linear = {m.weight.dtype for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert linear == {torch.float8_e4m3fn} and model.compute_dtype == torch.bfloat16  # kept fp8, cast per layer
    with torch.no_grad():
        assert torch.isfinite(model(*inputs()).float()).all()
