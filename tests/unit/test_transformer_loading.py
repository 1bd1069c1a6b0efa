"""Loading rules: key map bijection, detection by tensor names, and errors that say what was found."""

import argparse

import pytest
import torch
from safetensors.torch import save_file

from lumina_core.errors import CheckpointError, UnsupportedModelError
from lumina_core.loading.detect import SIGNATURES, matching_signatures
from lumina_core.loading.keymaps.lumina2 import map_diffusers_keys, to_diffusers
from lumina_core.loading.transformer import load_transformer
from tests.fixtures.lumina2_files import make_reference, original_state_dict, write_layout


@pytest.fixture(scope="module")
def reference():
    return make_reference(seed=0)


def test_every_diffusers_key_maps_to_exactly_one_original_key(reference):
    diffusers_keys = list(reference.state_dict())
    plan, unmatched = map_diffusers_keys(diffusers_keys)
    assert unmatched == []
    sources = [s for group in plan.values() for s in group]
    assert sorted(sources) == sorted(diffusers_keys)  # each used once, none left over
    qkv = plan["layers.0.attention.qkv.weight"]
    assert qkv == ["layers.0.attn.to_q.weight", "layers.0.attn.to_k.weight", "layers.0.attn.to_v.weight"]


def test_inverse_map_round_trips(reference):
    original = original_state_dict(reference)
    original.pop("norm_final.weight")
    back = to_diffusers(original, dim=reference.config.hidden_size)
    expected = reference.state_dict()
    assert set(back) == set(expected)
    assert all(torch.equal(back[k], expected[k]) for k in expected)


def test_unknown_diffusers_key_is_reported():
    _, unmatched = map_diffusers_keys(["layers.0.attn.to_q.weight", "layers.0.attn.mystery.weight"])
    assert sorted(unmatched) == ["layers.0.attn.mystery.weight", "layers.0.attn.to_q.weight"]  # a lone q cannot fuse


def save(tmp_path, name, tensors):
    path = tmp_path / name
    save_file(tensors, path)
    return path


FOREIGN = {
    "flux": ({"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2)}, "FLUX"),
    "sdxl": ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, "SDXL UNet"),
    "vae": ({"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}, "a VAE"),
    "gemma": ({"model.layers.0.post_feedforward_layernorm.weight": torch.zeros(4)}, "Gemma-2 text encoder"),
    "unknown": ({"some.weight": torch.zeros(4)}, "no model this package recognises"),
}  # fmt: skip


@pytest.mark.parametrize("kind", FOREIGN)
def test_foreign_checkpoint_names_what_it_is(tmp_path, kind):
    tensors, what = FOREIGN[kind]
    path = save(tmp_path, f"{kind}.safetensors", tensors)
    with pytest.raises(UnsupportedModelError) as err:
        load_transformer(path)
    message = str(err.value)
    assert str(path) in message and what in message and "Lumina-Image 2.0" in message


def test_lumina_next_names_are_recognised_as_lumina_next_not_lumina2(tmp_path):
    """Lumina-Next files hold `cap_embedder.1.weight`, ComfyUI's Lumina 2 key, yet are never taken for Lumina 2."""
    tensors = {"cap_embedder.1.weight": torch.zeros(4, 4), "layers.0.attention.gate": torch.zeros(2),
               "layers.0.attention.wk_y.weight": torch.zeros(4, 4)}  # fmt: skip
    path = save(tmp_path, "partial_next.safetensors", tensors)
    with pytest.raises(CheckpointError, match="looks like a Lumina-Next transformer but its shapes") as err:
        load_transformer(path)
    assert not isinstance(err.value, UnsupportedModelError)


def test_text_file_is_named(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("this is not a checkpoint\n" * 20)
    with pytest.raises(CheckpointError, match="text file"):
        load_transformer(path)


def test_truncated_file_is_named(reference, tmp_path):
    path = write_layout(reference, "original.safetensors", tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_transformer(path)
    assert str(path) in str(err.value)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_transformer(tmp_path / "absent.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_transformer(tmp_path / "empty.safetensors")


def test_pickle_with_objects_is_refused(tmp_path):
    path = tmp_path / "model_args.pth"  # the original release pickles its argparse Namespace
    torch.save({"args": argparse.Namespace(dim=2304)}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_transformer(path)


def test_wrong_shape_is_reported_with_the_key(reference, tmp_path):
    state = original_state_dict(reference)
    state["layers.1.feed_forward.w2.weight"] = torch.zeros(32, 64)
    with pytest.raises(CheckpointError, match="layers.1.feed_forward.w2.weight"):
        load_transformer(save(tmp_path, "bad.safetensors", state))


def test_missing_tensor_is_reported(reference, tmp_path):
    state = original_state_dict(reference)
    del state["layers.1.ffn_norm2.weight"]
    with pytest.raises(CheckpointError, match="Missing: layers.1.ffn_norm2.weight"):
        load_transformer(save(tmp_path, "partial.safetensors", state))


def test_signatures_exclude_each_other():
    """Each signature's own keys match it alone, so detection never depends on the table's order."""
    for signature in SIGNATURES:
        assert matching_signatures(set(signature.required)) == [signature], signature.description


def test_consensus_shapes_outvote_one_damaged_block_tensor_only():
    from lumina_core.loading.consensus import consensus_shapes

    shapes = {
        "layers.0.feed_forward.w1.weight": (64, 256),  # transposed
        "layers.1.feed_forward.w1.weight": (256, 64),
        "noise_refiner.0.feed_forward.w1.weight": (256, 64),  # breaks the 1 : 1 tie within `layers`
        "layers.0.attention.qkv.weight": (128, 64),
        "layers.1.attention.qkv.weight": (128, 64),
        "cap_embedder.0.weight": (32,),  # an nn.Sequential, not a block list: never voted on
        "cap_embedder.1.weight": (64, 32),
        "t_embedder.mlp.0.weight": (64, 256),
        "t_embedder.mlp.2.weight": (64, 64),
    }
    agreed = consensus_shapes(shapes)
    assert agreed == {**shapes, "layers.0.feed_forward.w1.weight": (256, 64)}
    assert consensus_shapes({k: v for k, v in shapes.items() if "noise_refiner" not in k})[
        "layers.0.feed_forward.w1.weight"
    ] == (64, 256)  # a tie with nothing to break it: the tensor keeps its own shape
