"""Reading GGUF files: metadata (fast, lazy string arrays), shapes, and clear errors on damaged files."""

import struct
import time

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from lumina_core.errors import CheckpointError, UnsupportedModelError
from lumina_core.gguf.quantized import QuantizedTensor
from lumina_core.gguf.reader import GGUFFile, read_metadata
from lumina_core.loading.files import open_checkpoint
from lumina_core.loading.transformer import load_transformer
from tests.fixtures.gguf_files import Q, write_gguf

RNG = np.random.default_rng(0)


def weights(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.fixture
def mixed_file(tmp_path):
    tensors = {
        "a.weight": (weights(3, 64), Q.Q8_0),
        "b.weight": (weights(2, 256), Q.Q4_K),
        "c.weight": (weights(4, 8), Q.F16),
        "d.weight": (weights(5, 32), Q.BF16),
        "conv.weight": (weights(2, 3, 2, 2, 2), Q.F32),  # 5-D, as video VAEs have
        "flat.weight": (weights(4, 64), Q.Q8_0),  # stored 2-D, really (4, 16, 4): city96's orig_shape
    }
    metadata = {"comfy.gguf.orig_shape.flat.weight": ("int32", [4, 16, 4]), "some.flag": True, "some.ratio": 0.5}
    return write_gguf(tmp_path / "mixed.gguf", tensors, "lumina2", metadata), tensors


def test_tensors_shapes_and_types(mixed_file):
    path, tensors = mixed_file
    checkpoint = open_checkpoint(path)
    assert sorted(checkpoint.keys) == sorted(tensors)
    assert checkpoint.shape("a.weight") == (3, 64) and checkpoint.shape("conv.weight") == (2, 3, 2, 2, 2)
    assert checkpoint.shape("flat.weight") == (4, 16, 4)
    assert checkpoint.metadata["general.architecture"] == "lumina2" and checkpoint.metadata["some.flag"] == "True"
    quantized = checkpoint.load("a.weight")
    assert isinstance(quantized, QuantizedTensor) and quantized.packed.dtype == torch.uint8
    assert checkpoint.dtype("a.weight") == torch.float32 and checkpoint.dtype("c.weight") == torch.float16
    assert torch.equal(checkpoint.load("c.weight"), torch.from_numpy(tensors["c.weight"][0]).half())
    assert torch.equal(checkpoint.load("conv.weight"), torch.from_numpy(tensors["conv.weight"][0]))
    assert torch.equal(checkpoint.load("d.weight"), torch.from_numpy(tensors["d.weight"][0]).bfloat16())
    assert checkpoint.load("flat.weight").dequantize().shape == (4, 16, 4)
    # What the plain gguf reader sees is the same.
    plain = {t.name: t for t in GGUFReader(path).tensors}
    assert plain["b.weight"].tensor_type == Q.Q4_K
    assert np.array_equal(plain["b.weight"].data, checkpoint.load("b.weight").packed.numpy())


def test_metadata_values(tmp_path):
    tokens = [f"tok{i}" for i in range(50)] + ["ünïcode", ""]
    metadata = {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": [float(i) for i in range(52)],
                "x.count": 7, "x.name": "hello", "x.bytes": b"\x00\x01\xff"}  # fmt: skip
    path = write_gguf(tmp_path / "meta.gguf", {"w": (weights(2, 32), Q.F32)}, "t5", metadata)
    read = read_metadata(path)
    assert read["x.count"] == 7 and read["x.name"] == "hello" and read["general.architecture"] == "t5"
    assert list(read["tokenizer.ggml.tokens"]) == tokens and read["tokenizer.ggml.tokens"][50] == "ünïcode"
    assert read["tokenizer.ggml.tokens"][-2:] == tokens[-2:]
    assert np.array_equal(read["tokenizer.ggml.scores"], np.arange(52, dtype=np.float32))
    assert bytes(read["x.bytes"]) == b"\x00\x01\xff"
    assert GGUFFile(path).fields["x.name"].contents() == "hello"  # scalar fields stay GGUFReader-compatible


def write_big_vocabulary(path, count: int) -> None:
    """A GGUF with a `count`-entry tokenizer, written directly (GGUFWriter packs arrays element by element)."""
    strings = b"".join(struct.pack("<Q", len(t)) + t for t in (f"piece{i}".encode() for i in range(count)))

    def kv_string(key: str, value: bytes) -> bytes:
        return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<IQ", 8, len(value)) + value

    body = kv_string("general.architecture", b"gemma2")
    body += struct.pack("<Q", 21) + b"tokenizer.ggml.tokens" + struct.pack("<IIQ", 9, 8, count) + strings
    scores = np.zeros(count, np.float32).tobytes()
    body += struct.pack("<Q", 21) + b"tokenizer.ggml.scores" + struct.pack("<IIQ", 9, 6, count) + scores
    info = struct.pack("<Q", 1) + b"w" + struct.pack("<IQIQ", 1, 8, 0, 0)  # one F32 tensor of 8 at offset 0
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 3) + body + info
    head += b"\0" * (-len(head) % 32)
    path.write_bytes(head + np.arange(8, dtype=np.float32).tobytes())


def test_a_256k_vocabulary_opens_fast(tmp_path):
    path = tmp_path / "vocab.gguf"
    write_big_vocabulary(path, 256_000)
    start = time.perf_counter()
    metadata = read_metadata(path)
    seconds = time.perf_counter() - start
    assert seconds < 1.5, f"{seconds:.2f} s"  # GGUFReader itself takes ~12 s on 2 cores
    assert (
        len(metadata["tokenizer.ggml.tokens"]) == 256_000
        and metadata["tokenizer.ggml.tokens"][255_999] == "piece255999"
    )


# ---- damaged files ----------------------------------------------------------------------------------------


def tensor_info_offset(data: bytes, name: str) -> int:
    """Where the dims of tensor `name` start in the header (after its length-prefixed name and n_dims)."""
    encoded = name.encode()
    return data.index(struct.pack("<Q", len(encoded)) + encoded) + 8 + len(encoded) + 4


def test_truncated_data_names_the_tensor(mixed_file, tmp_path):
    path, _ = mixed_file
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"cut\.gguf: the tensor '[\w.]+' .* truncated"):
        open_checkpoint(cut)


def test_truncated_header_names_the_file(mixed_file, tmp_path):
    path, _ = mixed_file
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cut\.gguf.*(truncated|not a readable GGUF)"):
        open_checkpoint(cut)


def test_unknown_type_id_names_the_tensor(mixed_file, tmp_path):
    path, _ = mixed_file
    data = bytearray(path.read_bytes())
    at = tensor_info_offset(data, "a.weight") + 2 * 8  # two dims, then the type id
    data[at : at + 4] = struct.pack("<I", 250)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="bad.gguf: the tensor 'a.weight' has ggml type id 250"):
        open_checkpoint(bad)


def test_a_shape_that_disagrees_with_the_bytes_is_refused_without_allocating(mixed_file, tmp_path):
    path, _ = mixed_file
    data = bytearray(path.read_bytes())
    at = tensor_info_offset(data, "a.weight")
    for rows, pattern in ((4, "runs into"), (2**40, "truncated, or a shape that disagrees")):
        data[at + 8 : at + 16] = struct.pack("<Q", rows)  # ne1: more rows than the bytes hold
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=f"bad.gguf: the tensor 'a.weight' .*{pattern}"):
            open_checkpoint(bad)
    data[at : at + 8] = struct.pack("<Q", 48)  # ne0 of a Q8_0 tensor that is not whole blocks of 32
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="rows of 48 elements, not whole Q8_0 blocks"):
        open_checkpoint(bad)


def test_an_unrelated_language_model_given_as_a_transformer(tmp_path):
    tensors = {"token_embd.weight": (weights(16, 32), Q.Q8_0), "blk.0.attn_q.weight": (weights(32, 32), Q.Q8_0)}
    path = write_gguf(tmp_path / "Lumina-2-i1-Q4_K.gguf", tensors, "llama")
    with pytest.raises(UnsupportedModelError, match=r"Lumina-2-i1-Q4_K\.gguf holds a GGUF 'llama' model"):
        load_transformer(path)


def test_an_architecture_that_contradicts_the_tensors(tmp_path):
    path = write_gguf(tmp_path / "mislabelled.gguf", {"decoder.conv_in.weight": (weights(4, 32), Q.F32)}, "lumina2")
    with pytest.raises(CheckpointError, match="general.architecture says 'lumina2' but its tensors are not"):
        load_transformer(path)


def test_not_a_gguf_at_all(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 99) + bytes(40))
    with pytest.raises(CheckpointError, match="fake.gguf: not a readable GGUF file"):
        open_checkpoint(path)


def test_a_type_nobody_can_dequantize_is_named_at_open(tmp_path):
    from gguf import GGUFWriter

    writer = GGUFWriter(str(tmp_path / "q8_1.gguf"), "lumina2")
    writer.add_tensor("w.weight", np.zeros((4, 2 * 40), dtype=np.uint8), raw_dtype=Q.Q8_1)  # 4 rows of 64
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="q8_1.gguf: the tensor 'w.weight' is stored as Q8_1, which neither"):
        open_checkpoint(tmp_path / "q8_1.gguf")
