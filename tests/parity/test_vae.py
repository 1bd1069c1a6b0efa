"""lumina_core.vae against diffusers' AutoencoderKL, on tiny re-randomised FLUX- and SDXL-shaped models saved in
every layout `load_vae` reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import save_file
from torch import nn

from lumina_core.latents import LatentFormat
from lumina_core.loading.keymaps import ldm_vae
from lumina_core.tiny import randomise_parameters
from lumina_core.vae import Autoencoder, load_vae
from tests.fixtures.metrics import relative_error

TOLERANCE = 1e-5  # relative L2 error, float32
LATENT_HW = (6, 10)  # non-square, so a swapped H/W cannot pass

# name -> (AutoencoderKL arguments, prefix of the VAE in the all-in-one file)
CONFIGS = {
    "flux": (
        {
            "block_out_channels": (8, 16, 16),
            "layers_per_block": 2,
            "latent_channels": 16,
            "norm_num_groups": 4,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
            "scaling_factor": 0.3611,
            "shift_factor": 0.1159,
        },
        "vae.",
    ),
    "sdxl": (
        {
            "block_out_channels": (8, 16),
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 4,
            "use_quant_conv": True,
            "use_post_quant_conv": True,
            "scaling_factor": 0.13025,
        },
        "first_stage_model.",
    ),
}


@dataclass
class Case:
    reference: AutoencoderKL
    layouts: dict[str, tuple[Path, dict]]  # layout name -> (path, extra load_vae arguments)

    @property
    def scale(self) -> float:
        return self.reference.config.scaling_factor

    @property
    def shift(self) -> float:
        return self.reference.config.shift_factor or 0.0

    def load(self, layout: str = "original file") -> Autoencoder:
        path, kwargs = self.layouts[layout]
        return load_vae(path, **kwargs)


def build_reference(kwargs: dict, seed: int) -> AutoencoderKL:
    levels = len(kwargs["block_out_channels"])
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels, **kwargs
    )
    return randomise_parameters(vae, seed, std=0.2)


def to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names, unmatched = ldm_vae.map_keys_diffusers_to_original(state_dict)
    assert not unmatched
    return {
        names[k]: v.reshape(ldm_vae.to_original_shape(names[k], v.shape)).contiguous() for k, v in state_dict.items()
    }


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    kwargs, prefix = CONFIGS[request.param]
    reference = build_reference(kwargs, seed=len(request.param))
    root = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(root / "pipeline" / "vae")
    original = to_original(reference.state_dict())
    save_file(original, root / "ae.safetensors")
    transformer = {
        "model.diffusion_model.x_embedder.weight": torch.randn(32, 16),
        "model.diffusion_model.layers.0.attention.qkv.weight": torch.randn(96, 32),
    }
    save_file({**transformer, **{prefix + k: v for k, v in original.items()}}, root / "all_in_one.safetensors")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, root / "diffusers_keys.safetensors")
    groups = {"num_groups": kwargs["norm_num_groups"]}  # files without a config.json cannot tell
    layouts = {
        "original file": (root / "ae.safetensors", groups),
        f"all-in-one under {prefix}": (root / "all_in_one.safetensors", groups),
        "single diffusers file": (root / "diffusers_keys.safetensors", groups),
        "diffusers folder": (root / "pipeline" / "vae", {}),
        "pipeline folder": (root / "pipeline", {}),
    }
    return Case(reference, layouts)


def reference_decode(case: Case, latent: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        sample = case.reference.decode(latent / case.scale + case.shift).sample
    return ((sample + 1) / 2).clamp(0, 1)


def reference_encode(case: Case, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        mean = case.reference.encode(images * 2 - 1).latent_dist.mean
    return (mean - case.shift) * case.scale


def sample_latent(model: Autoencoder) -> torch.Tensor:
    return torch.randn(2, model.latent_channels, *LATENT_HW, generator=torch.Generator().manual_seed(1))


def sample_images(model: Autoencoder) -> torch.Tensor:
    h, w = (n * model.downscale_factor for n in LATENT_HW)
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(2))


def test_every_layout_loads_the_same_parameters(case: Case):
    expected = case.load().state_dict()
    for layout in case.layouts:
        model = case.load(layout)
        assert model.latent_format == LatentFormat(case.scale, case.shift), layout
        loaded = model.state_dict()
        assert loaded.keys() == expected.keys(), layout
        for key, tensor in expected.items():
            assert loaded[key].dtype == torch.float32 and torch.equal(loaded[key], tensor), (layout, key)


def test_key_map_agrees_with_diffusers_converter(case: Case):
    original = case.load().state_dict()
    levels = len(case.reference.config.block_out_channels)
    config = {"down_block_types": [None] * levels, "up_block_types": [None] * levels}
    converted = convert_ldm_vae_checkpoint(original, config)
    expected = case.reference.state_dict()
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)


def test_decode_matches_diffusers(case: Case):
    model = case.load()
    latent = sample_latent(model)
    images = model.decode(latent)
    expected = reference_decode(case, latent)
    assert images.shape == (2, 3, LATENT_HW[0] * model.downscale_factor, LATENT_HW[1] * model.downscale_factor)
    assert ((expected > 0) & (expected < 1)).float().mean() > 0.5, "mostly clamped: the comparison would be weak"
    assert relative_error(images, expected) < TOLERANCE


def test_encode_matches_diffusers(case: Case):
    model = case.load()
    images = sample_images(model)
    assert relative_error(model.encode(images), reference_encode(case, images)) < TOLERANCE


def test_decode_comparison_catches_errors(case: Case):
    model = case.load()
    latent = sample_latent(model)
    expected = reference_decode(case, latent)
    swapped = model.decode(latent.transpose(2, 3)).transpose(2, 3)
    assert relative_error(swapped, expected) > 100 * TOLERANCE
    perturb_attention_query(model.decoder.mid.attn_1)
    assert relative_error(model.decode(latent), expected) > 100 * TOLERANCE


def test_encode_comparison_catches_errors(case: Case):
    model = case.load()
    images = sample_images(model)
    expected = reference_encode(case, images)
    perturb_attention_query(model.encoder.mid.attn_1)
    assert relative_error(model.encode(images), expected) > 100 * TOLERANCE


def perturb_attention_query(attention: nn.Module) -> None:
    noise = torch.randn(attention.q.weight.shape, generator=torch.Generator().manual_seed(3))
    attention.q.weight = nn.Parameter(attention.q.weight + 0.3 * noise, requires_grad=False)
