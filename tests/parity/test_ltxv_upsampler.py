"""LTX-Video latent upsamplers: `load_latent_upsampler` against diffusers' LTXLatentUpsamplerModel, every layout and
variant, with every parameter random (GroupNorm gains near 1)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from lumina_core.errors import CheckpointError, UnsupportedModelError
from lumina_core.loading.keymaps import ltxv_upsampler as keymap
from lumina_core.loading.transformer import load_transformer
from lumina_core.loading.upsampler import load_latent_upsampler
from lumina_core.models import ltxv_upsampler
from tests.fixtures.ltxv_files import make_reference as make_transformer
from tests.fixtures.ltxv_files import write_layout
from tests.fixtures.ltxv_upsampler_files import VARIANTS, make_reference, write_layouts
from tests.fixtures.metrics import relative_error

TOLERANCE = 1e-5
LATENT = (2, 8, 3, 5, 7)  # batch 2, odd frames / rows / columns


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return {name: (make_reference(name, seed=i), write_layouts(make_reference(name, seed=i),
                                                               tmp_path_factory.mktemp("up")))
            for i, name in enumerate(VARIANTS)}  # fmt: skip


def latent(seed: int = 1) -> torch.Tensor:
    return torch.randn(LATENT, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", ["original file", "bare file", "diffusers folder", "pipeline folder"])
def test_upsampler_matches_diffusers(files, variant, layout):
    reference, paths = files[variant]
    ours = load_latent_upsampler(paths[layout])
    x = latent()
    with torch.no_grad():
        expected = reference(x)
        out = ours(x)
    f, h, w = LATENT[2:]
    t, s = ours.config.factors[0], ours.config.factors[1]
    assert out.shape == (2, 8, 1 + t * (f - 1), s * h, s * w) == expected.shape
    assert relative_error(out, expected) < TOLERANCE
    # positions matter: the result is not that of the mirrored latent, mirrored back
    mirrored = ours(x.flip(-1)).flip(-1)
    assert relative_error(mirrored, expected) > 1e-2


def test_every_layout_loads_the_same_parameters(files):
    reference, paths = files["spatial 3-D (the 0.9.7/0.9.8 release)"]
    loaded = [load_latent_upsampler(path).state_dict() for path in paths.values()]
    for state in loaded[1:]:
        assert all(torch.equal(state[k], loaded[0][k]) for k in loaded[0])
    assert sorted(loaded[0]) == keymap.keys(reference.config.num_blocks_per_stage)


def test_the_shuffle_order_matters(files, monkeypatch):
    """The depth-to-space channel order (channel, then row factor, then column factor) is what makes the match:
    swapping the two spatial factors' places in the channels breaks it."""
    reference, paths = files["spatial 3-D (the 0.9.7/0.9.8 release)"]
    ours = load_latent_upsampler(paths["original file"])
    x = latent()
    expected = reference(x).detach()
    plain = ltxv_upsampler.depth_to_space

    def swapped(tensor, factors):
        n, c, *dims = tensor.shape
        return plain(tensor.unflatten(1, (-1, *factors)).transpose(2, 3).flatten(1, 3), factors)

    monkeypatch.setattr(ltxv_upsampler, "depth_to_space", swapped)
    assert relative_error(ours(x), expected) > 1e-2


def test_an_upsampler_file_given_to_the_transformer_loader_is_named(files):
    path = files["spatial 3-D (the 0.9.7/0.9.8 release)"][1]["original file"]
    with pytest.raises(UnsupportedModelError, match=r"holds an LTX-Video latent upsampler; load_transformer .* Load it "
                                                    r"with load_latent_upsampler"):  # fmt: skip
        load_transformer(path)


def test_a_transformer_file_given_to_the_upsampler_loader_is_named(tmp_path):
    path = write_layout(make_transformer(seed=0), "lightricks.safetensors", tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"holds an LTX-Video transformer .*; load_latent_upsampler loads "
                                                    r"LTX-Video latent upsamplers .* Load transformers with "
                                                    "load_transformer"):  # fmt: skip
        load_latent_upsampler(path)


def test_a_stored_config_that_contradicts_the_tensors_is_named(files, tmp_path):
    reference, _ = files["spatial 3-D (the 0.9.7/0.9.8 release)"]
    config = {"dims": 3, "spatial_upsample": True, "temporal_upsample": True}
    save_file(reference.state_dict(), tmp_path / "up.safetensors", metadata={"config": json.dumps(config)})
    with pytest.raises(CheckpointError, match="its stored config says temporal_upsample = True but its tensors make "
                                              "False"):  # fmt: skip
        load_latent_upsampler(tmp_path / "up.safetensors")


def test_an_ltx2_upsampler_is_refused(files, tmp_path):
    reference, _ = files["spatial 3-D (the 0.9.7/0.9.8 release)"]
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("upsampler.0.")}
    state["upsampler.conv.weight"] = torch.zeros(256, 64, 3, 3)
    state["upsampler.blur_down.kernel"] = torch.zeros(1, 1, 5, 5)
    save_file(state, tmp_path / "ltx2.safetensors")
    with pytest.raises(UnsupportedModelError, match="holds an LTX-2 latent upsampler"):
        load_latent_upsampler(tmp_path / "ltx2.safetensors")


def test_every_layer_comes_from_the_operations_namespace(files):
    """The operations convention: a host's layer classes (ComfyUI's comfy.ops) build every conv and norm."""

    class Conv2d(torch.nn.Conv2d):
        pass

    class Conv3d(torch.nn.Conv3d):
        pass

    class GroupNorm(torch.nn.GroupNorm):
        pass

    operations = SimpleNamespace(Conv2d=Conv2d, Conv3d=Conv3d, GroupNorm=GroupNorm)
    reference, paths = files["spatial 3-D (the 0.9.7/0.9.8 release)"]
    ours = load_latent_upsampler(paths["original file"], operations=operations)
    layers = [m for m in ours.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.GroupNorm))]
    assert layers and all(type(m) in (Conv2d, Conv3d, GroupNorm) for m in layers)
    x = latent()
    assert relative_error(ours(x), reference(x).detach()) < TOLERANCE
