"""The GGUFLoader node, called as ComfyUI calls it, on tiny GGUF files in temporary model folders."""

import pytest
import torch

from lumina_core import tiny
from lumina_core.gguf.convert import convert
from tests.fixtures.gguf_files import Q, write_gemma_gguf, write_gguf
from tests.fixtures.tiny_qwen3 import write_qwen3_gguf
from tests.pack import core, nodes

InvalidInputError, UnsupportedModelError = core.InvalidInputError, core.UnsupportedModelError
QuantizedLinear = core.gguf.quantized.QuantizedLinear
comfy_bridge = nodes.comfy_bridge
LOADER = nodes.NODE_CLASS_MAPPINGS["LuminaGGUFLoader"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for key, sub in (("lumina_diffusion_models", "diffusion_models"), ("lumina_text_encoders", "text_encoders")):
        (root / sub).mkdir()
        comfy_bridge.register_folder(key, root / sub)
    source = tiny.write_transformer(tiny.make_transformer(0), "original.safetensors", root / "diffusion_models")
    convert(source, root / "diffusion_models" / "lumina2-q8_0.gguf", "Q8_0")
    write_gemma_gguf(tiny.make_gemma(0), tiny.train_tokenizer(), root / "text_encoders" / "gemma2-q8_0.gguf", Q.Q8_0)
    zimage = tiny.write_transformer(tiny.make_transformer(0, tiny.TINY_ZIMAGE), "original.safetensors", root)
    convert(zimage, root / "diffusion_models" / "zimage-q8_0.gguf", "Q8_0")  # labelled "lumina2", as city96's
    qwen3 = root / "text_encoders" / "qwen3-q8_0.gguf"
    write_qwen3_gguf(tiny.make_qwen3(0), tiny.train_qwen_tokenizer(), qwen3, Q.Q8_0)
    llm = {"blk.0.attn_q.weight": (torch.randn(32, 32), Q.Q8_0), "token_embd.weight": (torch.randn(8, 32), Q.F32)}
    write_gguf(root / "diffusion_models" / "qwen.gguf", llm, "qwen2")
    yield root
    comfy_bridge._standalone_folders.clear()


def test_dropdown_lists_gguf_files_of_both_folders(model_dirs):
    files = LOADER.INPUT_TYPES()["required"]["file"][0]
    assert files == ["gemma2-q8_0.gguf", "lumina2-q8_0.gguf", "qwen.gguf", "qwen3-q8_0.gguf", "zimage-q8_0.gguf"]


def test_a_transformer_file_fills_the_model_output(model_dirs):
    model, unused = LOADER().load("lumina2-q8_0.gguf", weight_dtype="fp32")
    assert model.kind == "diffusion" and model.family == "lumina2"
    assert any(isinstance(m, QuantizedLinear) for m in model.model.modules())
    with pytest.raises(
        InvalidInputError, match=r"holds a diffusion transformer: connect the model output of Load GGUF"
    ):
        unused.model  # noqa: B018 - any use of the blocked output says which output to connect


def test_a_text_encoder_file_fills_the_text_encoder_output(model_dirs):
    unused, encoder = LOADER().load("gemma2-q8_0.gguf", weight_dtype="fp32")
    assert encoder.kind == "text_encoder" and encoder.family == "lumina2"
    assert encoder.model.encode(["a fox"]).embeds.shape[-1] == 32
    with pytest.raises(InvalidInputError, match="holds a text encoder"):
        unused.model  # noqa: B018


def test_zimage_and_its_qwen3_fill_their_outputs(model_dirs):
    model, _ = LOADER().load("zimage-q8_0.gguf", weight_dtype="fp32")
    assert model.kind == "diffusion" and model.family == "zimage"
    assert any(isinstance(m, QuantizedLinear) for m in model.model.modules())
    _, encoder = LOADER().load("qwen3-q8_0.gguf", weight_dtype="fp32")
    assert encoder.kind == "text_encoder" and encoder.family == "zimage"
    assert encoder.model.encode(["a fox"]).embeds.shape[-1] == tiny.make_qwen3(0).config.hidden_size


def test_bad_files(model_dirs):
    with pytest.raises(UnsupportedModelError, match="qwen.gguf holds a GGUF 'qwen2' model"):
        LOADER().load("qwen.gguf")
    with pytest.raises(ValueError, match="not a .gguf file in the diffusion model or text encoder folders"):
        LOADER().load("original.safetensors")
    with pytest.raises(ValueError, match="not a .gguf file"):
        LOADER().load("../text_encoders/gemma2-q8_0.gguf")
