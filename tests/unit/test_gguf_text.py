"""Text encoders from llama.cpp GGUF files: Gemma-2, Gemma (v1) and T5, against the same weights in safetensors."""

import pytest
import sentencepiece
import torch

import lumina_core as lc
from lumina_core import tiny
from lumina_core.errors import UnsupportedModelError
from lumina_core.gguf.quantized import QuantizedLinear
from lumina_core.gguf.reader import read_metadata
from lumina_core.gguf.text import sentencepiece_model
from tests.fixtures.gguf_files import (
    Q,
    gemma_llama_cpp_tensors,
    tokenizer_metadata,
    write_gemma_gguf,
    write_gguf,
    write_t5_gguf,
)
from tests.fixtures.metrics import relative_error
from tests.fixtures.tiny_t5 import write_layout as write_t5_layout

PROMPTS = ["a red fox sitting in fresh snow, soft morning light", "Hello!  Two  spaces, digits 0123 and ünïcode"]


@pytest.fixture(scope="module")
def gemma_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma_gguf")
    spm = tiny.train_tokenizer()
    files = {}
    for name, model in (("gemma2", tiny.make_gemma(0)), ("gemma", tiny.make_gemma1(0))):
        (folder / name).mkdir()
        reference = tiny.write_text_encoder(model, spm, "comfy.safetensors", folder / name)
        ggufs = {
            qtype: write_gemma_gguf(model, spm, folder / name / f"{qtype.name}.gguf", qtype)
            for qtype in (Q.F32, Q.Q8_0)
        }
        files[name] = (model, reference, ggufs)
    return spm, files


@pytest.mark.parametrize("generation", ["gemma2", "gemma"])
def test_gemma_gguf_matches_safetensors(gemma_files, generation):
    _, files = gemma_files
    _, reference_path, ggufs = files[generation]
    reference = lc.load_text_encoder(reference_path, dtype=torch.float32)
    expected = reference.encode(PROMPTS)
    exact = lc.load_text_encoder(ggufs[Q.F32], dtype=torch.float32)
    assert exact.family == reference.family
    result = exact.encode(PROMPTS)
    assert torch.equal(result.mask, expected.mask) and torch.equal(result.embeds, expected.embeds)
    quantized = lc.load_text_encoder(ggufs[Q.Q8_0], dtype=torch.float32)
    assert isinstance(quantized.model.layers[0].mlp.down_proj, QuantizedLinear)
    error = relative_error(quantized.encode(PROMPTS).embeds, expected.embeds)
    assert error < 0.05, error
    # The comparison can fail: other prompts move the features far more.
    assert relative_error(reference.encode(PROMPTS[::-1]).embeds, expected.embeds) > 10 * error


def test_norms_lose_llama_cpp_plus_one(gemma_files, tmp_path):
    spm, files = gemma_files
    model, reference_path, _ = files["gemma2"]
    # A file whose norms lack the +1 decodes to norms one lower: the features change completely.
    tensors = {k: (v - 1 if k.endswith("norm.weight") else v, Q.F32) for k, v in gemma_llama_cpp_tensors(model).items()}
    metadata = {"gemma2.attention.key_length": model.config.head_dim, **tokenizer_metadata(spm, "llama")}
    wrong = lc.load_text_encoder(write_gguf(tmp_path / "no_plus_one.gguf", tensors, "gemma2", metadata))
    expected = lc.load_text_encoder(reference_path, dtype=torch.float32).encode(PROMPTS).embeds
    assert relative_error(wrong.encode(PROMPTS).embeds, expected) > 0.1


def test_tokenizer_rebuilt_from_metadata_gives_the_original_ids(gemma_files):
    spm, files = gemma_files
    original = sentencepiece.SentencePieceProcessor(model_proto=spm)
    metadata = read_metadata(files["gemma2"][2][Q.F32])
    rebuilt = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_model(metadata, "x.gguf"))
    for text in [*PROMPTS, "", " leading space", "tabs\tand\nnewlines", "<bos> literal"]:
        assert rebuilt.encode(text) == original.encode(text), text
    assert rebuilt.bos_id() == original.bos_id() and rebuilt.eos_id() == original.eos_id()


def test_gemma_gguf_without_tokenizer_uses_the_one_beside_it(gemma_files, tmp_path):
    spm, files = gemma_files
    model = files["gemma2"][0]
    path = write_gemma_gguf(model, spm, tmp_path / "no_tokenizer.gguf", with_tokenizer=False)
    with pytest.raises(lc.CheckpointError, match="no_tokenizer.gguf: no tokenizer"):
        lc.load_text_encoder(path)
    (tmp_path / "tokenizer.model").write_bytes(spm)
    original = sentencepiece.SentencePieceProcessor(model_proto=spm)
    assert lc.load_text_encoder(path).tokenizer.encode("a fox") == original.encode("a fox")


def test_gemma3_tensors_are_refused(gemma_files, tmp_path):
    spm, files = gemma_files
    tensors = {k: (v, Q.F32) for k, v in gemma_llama_cpp_tensors(files["gemma2"][0]).items()}
    tensors["blk.0.attn_q_norm.weight"] = (torch.ones(16), Q.F32)
    path = write_gguf(tmp_path / "gemma3.gguf", tensors, "gemma2", tokenizer_metadata(spm, "llama"))
    with pytest.raises(UnsupportedModelError, match=r"gemma3\.gguf: .*blk\.0\.attn_q_norm\.weight"):
        lc.load_text_encoder(path)


def test_gemma_gguf_given_to_the_transformer_loader(gemma_files):
    _, files = gemma_files
    with pytest.raises(UnsupportedModelError, match="holds a Gemma-2 text encoder.*load_text_encoder"):
        lc.load_transformer(files["gemma2"][2][Q.Q8_0])


def test_t5_gguf_matches_safetensors(tmp_path):
    model, spm = tiny.make_t5(0), tiny.train_t5_tokenizer()
    reference = lc.load_text_encoder(write_t5_layout(model, spm, "hf_folder", tmp_path), dtype=torch.float32)
    expected = reference.encode(PROMPTS)
    exact = lc.load_text_encoder(write_t5_gguf(model, spm, tmp_path / "t5-f32.gguf"), dtype=torch.float32)
    assert exact.family == "ltxv" and exact.tokenizer.encode(PROMPTS[1]) == reference.tokenizer.encode(PROMPTS[1])
    result = exact.encode(PROMPTS)
    assert torch.equal(result.mask, expected.mask) and torch.equal(result.embeds, expected.embeds)
    quantized = lc.load_text_encoder(write_t5_gguf(model, spm, tmp_path / "t5-q8.gguf", Q.Q8_0), dtype=torch.float32)
    assert any(isinstance(m, QuantizedLinear) for m in quantized.model.modules())
    error = relative_error(quantized.encode(PROMPTS).embeds, expected.embeds)
    assert error < 0.08, error
    assert relative_error(reference.encode(PROMPTS[::-1]).embeds, expected.embeds) > 10 * error
