"""Checkpoint containers: told apart by content, not by name; shard indexes and weight variants in folders."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lumina_core.errors import CheckpointError
from lumina_core.loading.files import open_checkpoint, read_json

TENSORS = {"a.weight": torch.arange(6.0).reshape(2, 3), "b.bias": torch.tensor([1, 2], dtype=torch.int64)}


def assert_holds_tensors(path: Path) -> None:
    checkpoint = open_checkpoint(path)
    assert sorted(checkpoint.keys) == sorted(TENSORS)
    for key, tensor in TENSORS.items():
        assert torch.equal(checkpoint.load(key), tensor) and checkpoint.shape(key) == tuple(tensor.shape)


# ---------------------------------------------------------------- single files


@pytest.mark.parametrize("name", ["model.pth", "model.bin", "model.ckpt", "model"])
def test_safetensors_under_any_name_loads(tmp_path, name):
    save_file(TENSORS, tmp_path / name)
    assert_holds_tensors(tmp_path / name)


@pytest.mark.parametrize("name", ["model.pth", "model.safetensors"])
def test_torch_zip_under_any_name_loads(tmp_path, name):
    torch.save(TENSORS, tmp_path / name)
    assert_holds_tensors(tmp_path / name)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 3")  # torch's note that its default is 2
@pytest.mark.parametrize("protocol", [2, 3])
def test_legacy_torch_save_loads_without_mmap(tmp_path, protocol):
    path = tmp_path / "consolidated.00-of-01.pth"
    torch.save(TENSORS, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    assert not path.read_bytes().startswith(b"PK")  # really the pre-zip format, which mmap refuses
    assert_holds_tensors(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_with_an_object_is_refused(tmp_path, legacy):
    path = tmp_path / "model_args.pth"
    torch.save({"args": argparse.Namespace(dim=8), **TENSORS}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle.*argparse\.Namespace") as err:
        open_checkpoint(path)
    assert str(path) in str(err.value)


def test_damaged_legacy_pickle_is_not_called_an_object(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(TENSORS, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(path)
    assert str(path) in str(err.value) and "refusing" not in str(err.value)


@pytest.mark.parametrize("name", ["model.safetensors", "model.pth"])
def test_text_file_is_named_whatever_its_suffix(tmp_path, name):
    (tmp_path / name).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 335304388\n")
    with pytest.raises(CheckpointError, match="is a text file, not a checkpoint"):
        open_checkpoint(tmp_path / name)


@pytest.mark.parametrize("keep", [0.5, 0.0001])  # tensor data cut off, or the header itself
@pytest.mark.parametrize("name", ["model.safetensors", "model.pth"])
def test_truncated_safetensors_is_named_whatever_its_suffix(tmp_path, name, keep):
    path = tmp_path / name
    save_file({"big": torch.zeros(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: max(10, int(len(data) * keep))])
    with pytest.raises(CheckpointError, match="truncated") as err:
        open_checkpoint(path)
    assert str(path) in str(err.value)


def test_truncated_zip_is_named(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"big": torch.zeros(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(path)


def test_gguf_is_named(tmp_path):
    # Recognised by its first bytes whatever its name, and read by the GGUF reader, which names what is wrong.
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable GGUF file"):
        open_checkpoint(path)


# ---------------------------------------------------------------- JSON and shard indexes


def write_shards(folder: Path, stem: str, index_name: str | None) -> None:
    """TENSORS in two shards named stem-0000i-of-00002.safetensors, with an index called index_name."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {key: f"{stem}-{i + 1:05d}-of-00002.safetensors" for i, key in enumerate(sorted(TENSORS))}
    for key, name in names.items():
        save_file({key: TENSORS[key]}, folder / name)
    if index_name is not None:
        (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": names}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not readable JSON"),
        ('["a list"]', "holds a JSON list"),
        ('{"metadata": {}}', "has no usable 'weight_map'"),
        ('{"weight_map": {"a.weight": 3}}', "has no usable 'weight_map'"),
    ],
)
def test_bad_shard_index_names_the_file(tmp_path, text, message):
    write_shards(tmp_path, "model", None)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(text)
    with pytest.raises(CheckpointError, match=message) as err:
        open_checkpoint(tmp_path)
    assert str(index) in str(err.value) and "shard index" in str(err.value)


def test_read_json_names_the_file_and_what_it_should_be(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(CheckpointError, match="expected a diffusers AutoencoderKL config") as err:
        read_json(str(path), "a diffusers AutoencoderKL config")
    assert str(path) in str(err.value)


def test_missing_shard_is_named(tmp_path):
    write_shards(tmp_path, "model", "model.safetensors.index.json")
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lists shards that are missing: model-00002-of-00002"):
        open_checkpoint(tmp_path)


# ---------------------------------------------------------------- weight variants in a folder


def test_folder_with_only_variant_shards_loads(tmp_path):
    write_shards(tmp_path, "diffusion_pytorch_model.fp16", "diffusion_pytorch_model.safetensors.index.fp16.json")
    assert_holds_tensors(tmp_path)


def test_plain_files_win_over_a_variant(tmp_path):
    write_shards(tmp_path, "diffusion_pytorch_model.fp16", "diffusion_pytorch_model.safetensors.index.fp16.json")
    save_file({k: v + 1 for k, v in TENSORS.items()}, tmp_path / "diffusion_pytorch_model.fp16.safetensors")
    save_file(TENSORS, tmp_path / "diffusion_pytorch_model.safetensors")
    assert_holds_tensors(tmp_path)


def test_plain_index_wins_over_a_variant_index(tmp_path):
    write_shards(tmp_path, "diffusion_pytorch_model", "diffusion_pytorch_model.safetensors.index.json")
    save_file({"other": torch.zeros(1)}, tmp_path / "diffusion_pytorch_model.fp16-00001-of-00001.safetensors")
    (tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json").write_text(
        json.dumps({"weight_map": {"other": "diffusion_pytorch_model.fp16-00001-of-00001.safetensors"}})
    )
    assert_holds_tensors(tmp_path)


def test_single_variant_file_loads(tmp_path):
    save_file(TENSORS, tmp_path / "diffusion_pytorch_model.bf16.safetensors")
    assert_holds_tensors(tmp_path)


def test_several_variants_without_a_plain_file_are_refused(tmp_path):
    save_file(TENSORS, tmp_path / "diffusion_pytorch_model.fp16.safetensors")
    save_file(TENSORS, tmp_path / "diffusion_pytorch_model.bf16.safetensors")
    with pytest.raises(CheckpointError, match="several weight variants.*Move the variants"):
        open_checkpoint(tmp_path)


def shard(folder: Path, name: str = "model") -> list[Path]:
    """Split folder/{name}.safetensors into two shards with the Hugging Face index beside them."""
    from safetensors.torch import load_file

    whole = folder / f"{name}.safetensors"
    tensors = load_file(whole)
    whole.unlink()
    keys = sorted(tensors)
    parts = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    paths = [folder / f"{name}-{i + 1:05}-of-00002.safetensors" for i in range(2)]
    for part, path in zip(parts, paths, strict=True):
        save_file({k: tensors[k] for k in part}, path)
    weight_map = {k: path.name for part, path in zip(parts, paths, strict=True) for k in part}
    (folder / f"{name}.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return paths


def test_any_shard_of_a_hugging_face_folder_loads_the_whole_text_encoder(tmp_path):
    """A ComfyUI dropdown lists files: picking one shard of a Gemma folder loads the folder, tokenizer included."""
    from lumina_core import tiny
    from lumina_core.text import load_text_encoder

    model = tiny.make_gemma1(0)
    folder = tiny.write_text_encoder(model, tiny.train_tokenizer(), "hf_folder", tmp_path)
    shards = shard(folder)
    expected = load_text_encoder(folder).encode(["a red fox"]).embeds
    for path in shards:
        assert torch.equal(load_text_encoder(path).encode(["a red fox"]).embeds, expected)


def test_a_shard_of_a_diffusers_transformer_folder_loads_the_transformer(tmp_path):
    from lumina_core import tiny
    from lumina_core.loading.files import shard_owner
    from lumina_core.loading.transformer import load_transformer

    folder = tiny.write_transformer(tiny.make_transformer(0), "diffusers_pipeline", tmp_path) / "transformer"
    shards = shard(folder, "diffusion_pytorch_model")
    assert shard_owner(shards[1]) == str(folder)
    assert load_transformer(shards[0]).config == load_transformer(folder).config
    lone = tmp_path / "lone.safetensors"
    save_file({"x": torch.zeros(1)}, lone)
    assert shard_owner(lone) == str(lone)  # a file no index names is itself
