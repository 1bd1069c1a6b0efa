"""The VAE key map, config derivation from shapes, and the errors `load_vae` raises for wrong files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from lumina_core.errors import CheckpointError, InvalidInputError, UnsupportedModelError
from lumina_core.loading.files import open_checkpoint
from lumina_core.loading.keymaps import ldm_vae
from lumina_core.vae import Autoencoder, AutoencoderConfig, config_from_state_dict, load_vae

TINY = AutoencoderConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=16, num_groups=4)


def tiny_state_dict(config: AutoencoderConfig = TINY, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.to(dtype).contiguous() for k, v in Autoencoder(config).state_dict().items()}


def save_tiny(path: Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    save_file(tiny_state_dict() if tensors is None else tensors, path)
    return path


@pytest.fixture(scope="module")
def diffusers_vae() -> AutoencoderKL:
    # three levels, width changes (shortcut convs) and quant convs, so every rule has a key to match
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 32),
        layers_per_block=2,
        latent_channels=16,
        norm_num_groups=4,
    )


def test_every_diffusers_key_maps_to_exactly_one_original_key(diffusers_vae: AutoencoderKL):
    state = diffusers_vae.state_dict()
    for key in state:
        assert len(ldm_vae.matching_rules(key, ldm_vae.DIFFUSERS)) == 1, key
    mapping, unmatched = ldm_vae.map_keys_diffusers_to_original(state)
    assert unmatched == [] and mapping.keys() == state.keys()
    assert len(set(mapping.values())) == len(mapping)

    config = config_from_state_dict({mapping[k]: v for k, v in state.items()}, num_groups=4)
    expected = Autoencoder(config).state_dict()
    assert set(mapping.values()) == expected.keys()
    for key, tensor in state.items():
        assert ldm_vae.to_original_shape(mapping[key], tensor.shape) == expected[mapping[key]].shape, key


def test_inverse_map_round_trips(diffusers_vae: AutoencoderKL):
    state = diffusers_vae.state_dict()
    to_original, _ = ldm_vae.map_keys_diffusers_to_original(state)
    for key in to_original.values():
        assert len(ldm_vae.matching_rules(key, ldm_vae.ORIGINAL)) == 1, key
    to_diffusers, unmatched = ldm_vae.map_keys_original_to_diffusers(to_original.values())
    assert unmatched == []
    assert {k: to_diffusers[v] for k, v in to_original.items()} == {k: k for k in state}
    for key, tensor in state.items():
        original = to_original[key]
        assert ldm_vae.to_diffusers_shape(original, ldm_vae.to_original_shape(original, tensor.shape)) == tensor.shape


def test_every_rule_is_used(diffusers_vae: AutoencoderKL):
    used = {rule for key in diffusers_vae.state_dict() for rule in ldm_vae.matching_rules(key, ldm_vae.DIFFUSERS)}
    assert used == set(ldm_vae.RULES)


def test_config_is_read_from_shapes():
    config = AutoencoderConfig(
        channels=8, channel_mult=(1, 2, 4), num_res_blocks=3, z_channels=4, use_quant_conv=True, num_groups=4
    )
    derived = config_from_state_dict(tiny_state_dict(config), num_groups=4)
    assert derived == dataclasses.replace(config, scale=0.13025, shift=0.0)
    model = Autoencoder(derived)
    assert (model.latent_channels, model.downscale_factor) == (4, 4)


def test_config_is_read_from_a_checkpoint(tmp_path: Path):
    checkpoint = open_checkpoint(save_tiny(tmp_path / "ae.safetensors"))
    assert config_from_state_dict(checkpoint, num_groups=4) == TINY


def test_latent_normalisation_needs_known_channels_or_arguments():
    state = tiny_state_dict(dataclasses.replace(TINY, z_channels=8))
    with pytest.raises(UnsupportedModelError, match="8 latent channels.*scale="):
        config_from_state_dict(state, num_groups=4)
    assert config_from_state_dict(state, num_groups=4, scale=0.5).shift == 0.0


def test_default_group_count_rejects_tiny_widths():
    with pytest.raises(InvalidInputError, match="num_groups=32 must divide every level width"):
        config_from_state_dict(tiny_state_dict())


@pytest.mark.parametrize(
    ("file_dtype", "requested", "expected"),
    [
        (torch.float32, None, torch.float32),
        (torch.bfloat16, None, torch.bfloat16),
        (torch.float16, None, torch.float32),  # fp16 VAEs overflow
        (torch.float32, torch.bfloat16, torch.bfloat16),
    ],
)
def test_dtype(tmp_path: Path, file_dtype: torch.dtype, requested: torch.dtype | None, expected: torch.dtype):
    path = save_tiny(tmp_path / "ae.safetensors", tiny_state_dict(dtype=file_dtype))
    model = load_vae(path, dtype=requested, num_groups=4)
    assert {p.dtype for p in model.parameters()} == {expected}
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_model_input_is_checked():
    model = Autoencoder(TINY)
    with pytest.raises(InvalidInputError, match=r"\(B, 16, H, W\)"):
        model.decode(torch.zeros(1, 4, 8, 8))
    with pytest.raises(InvalidInputError, match="multiples of 2"):
        model.encode(torch.zeros(1, 3, 7, 8))


def test_text_file(tmp_path: Path):
    path = tmp_path / "ae.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 335304388\n")
    with pytest.raises(CheckpointError, match="text file") as err:
        load_vae(path)
    assert str(path) in str(err.value) and "Expected a .safetensors" in str(err.value)


def test_truncated_file(tmp_path: Path):
    path = save_tiny(tmp_path / "ae.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        load_vae(path, num_groups=4)
    assert str(path) in str(err.value) and "truncated" in str(err.value)


@pytest.mark.parametrize(
    ("tensors", "looks_like"),
    [
        ({"x_embedder.weight": torch.zeros(8, 4), "layers.0.attention.qkv.weight": torch.zeros(24, 8)}, "transformer"),
        ({"model.diffusion_model.x_embedder.weight": torch.zeros(8, 4)}, "diffusion model"),
    ],
)
def test_file_without_a_vae(tmp_path: Path, tensors: dict[str, torch.Tensor], looks_like: str):
    path = save_tiny(tmp_path / "lumina.safetensors", tensors)
    with pytest.raises(UnsupportedModelError) as err:
        load_vae(path)
    message = str(err.value)
    assert str(path) in message and looks_like in message and ldm_vae.MARKERS[ldm_vae.ORIGINAL] in message


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda sd: sd.pop("decoder.up.0.block.1.conv2.bias"), "Missing: decoder.up.0.block.1.conv2.bias"),
        (lambda sd: sd.update({"loss.logvar": torch.zeros(())}), "Unexpected: loss.logvar"),
        (
            lambda sd: sd.update({"encoder.mid.attn_1.q.weight": torch.zeros(16, 8, 1, 1)}),
            "encoder.mid.attn_1.q.weight (16, 8, 1, 1) (expected (16, 16, 1, 1))",
        ),
    ],
)
def test_tensors_that_do_not_fit(tmp_path: Path, edit, expected: str):
    state = tiny_state_dict()
    edit(state)
    path = save_tiny(tmp_path / "ae.safetensors", state)
    with pytest.raises(CheckpointError) as err:
        load_vae(path, num_groups=4)
    message = str(err.value)
    assert str(path) in message and "original-format VAE" in message and expected in message


def test_unknown_diffusers_key(tmp_path: Path, diffusers_vae: AutoencoderKL):
    state = {k: v.contiguous() for k, v in diffusers_vae.state_dict().items()}
    state["encoder.mid_block.attentions.0.query.weight"] = torch.zeros(32, 32)
    path = save_tiny(tmp_path / "vae.safetensors", state)
    with pytest.raises(UnsupportedModelError) as err:
        load_vae(path, num_groups=4)
    message = str(err.value)
    assert str(path) in message and "diffusers-format VAE" in message
    assert "encoder.mid_block.attentions.0.query.weight" in message


def test_missing_path(tmp_path: Path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_vae(tmp_path / "ae.safetensors")


def test_sdxl_vae_decodes_in_float32_by_default(tmp_path):
    """Half precision decodes black images with the SDXL VAE, so dtype=None never keeps bf16 or fp16 for it."""
    from safetensors.torch import save_file

    from lumina_core import tiny
    from lumina_core.vae import AutoencoderConfig

    sdxl = tiny.make_vae(
        0,
        AutoencoderConfig(
            channels=32,
            channel_mult=(1, 2),
            num_res_blocks=1,
            z_channels=4,
            use_quant_conv=True,
            use_post_quant_conv=True,
            scale=0.13025,
            shift=0.0,
        ),
    )
    save_file(
        {k: v.to(torch.bfloat16).contiguous() for k, v in sdxl.state_dict().items()}, tmp_path / "sdxl.safetensors"
    )
    assert load_vae(tmp_path / "sdxl.safetensors").decoder.conv_in.weight.dtype == torch.float32
    assert load_vae(tmp_path / "sdxl.safetensors", dtype=torch.bfloat16).decoder.conv_in.weight.dtype == torch.bfloat16
