"""Our Qwen3 text encoder (Z-Image's) against diffusers' ZImagePipeline.encode_prompt, from every file layout."""

import copy

import pytest
import torch
from safetensors.torch import save_file
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from lumina_core.errors import CheckpointError, InvalidInputError, UnsupportedModelError
from lumina_core.text import load_text_encoder
from lumina_core.text.qwen3 import TEMPLATE
from lumina_core.tiny import make_qwen3, qwen3_tensors
from tests.fixtures.metrics import relative_error
from tests.fixtures.tiny_qwen3 import EXACT_LAYOUTS, TinyQwen3

PROMPTS = [
    "a photograph of a red fox sitting in fresh snow, soft morning light",
    '一只红色的狐狸坐在新雪中 <think> with the words "Z-Image"',
    "",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return TinyQwen3.build(tmp_path_factory.mktemp("qwen3"))


@pytest.fixture(scope="module")
def reference(tiny):
    return tiny.reference(PROMPTS)


def load(tiny: TinyQwen3, layout: str):
    path = tiny.write(layout)
    return load_text_encoder(path, tokenizer_dirs=[path.parent / "qwen_tokenizer"])


def rows(conditioning) -> list[torch.Tensor]:
    return [embeds[mask] for embeds, mask in zip(conditioning.embeds, conditioning.mask)]


def test_hf_folder_is_bit_exact_with_encode_prompt(tiny, reference):
    conditioning = load(tiny, "hf_folder").encode(PROMPTS)
    assert conditioning.family == "zimage" and conditioning.embeds.dtype == torch.float32
    for ours, expected in zip(rows(conditioning), reference, strict=True):
        assert torch.equal(ours, expected)
    assert not conditioning.embeds[~conditioning.mask].any()  # padding is zero


@pytest.mark.parametrize("layout", EXACT_LAYOUTS)
def test_every_float32_layout_gives_the_same_features(tiny, reference, layout):
    for ours, expected in zip(rows(load(tiny, layout).encode(PROMPTS)), reference, strict=True):
        assert torch.equal(ours, expected)


@pytest.mark.parametrize(("layout", "bound"), [("comfy_bf16.safetensors", 0.05), ("comfy_fp8_scaled.safetensors", 0.2)])
def test_reduced_precision_files_compute_in_bf16(tiny, reference, layout, bound):
    encoder = load(tiny, layout)
    assert encoder.dtype == torch.bfloat16
    for ours, expected in zip(rows(encoder.encode(PROMPTS)), reference, strict=True):
        assert relative_error(ours, expected) < bound


def test_a_prompt_past_512_tokens_is_cut_as_the_pipeline_cuts_it(tiny):
    long_prompt = " ".join(["snow fox lighthouse"] * 300)
    encoder = load(tiny, "hf_folder")
    with pytest.warns(UserWarning, match="Qwen3 prompt 0 has .* tokens; the last .* were dropped"):
        conditioning = encoder.encode([long_prompt, "short"])
    assert conditioning.mask.sum(dim=1).tolist()[0] == 512
    for ours, expected in zip(rows(conditioning), tiny.reference([long_prompt, "short"]), strict=True):
        assert torch.equal(ours, expected)


def test_the_comparison_can_fail(tiny, reference):
    """Template, layer and RoPE theta each move the features far from the reference."""
    encoder = load(tiny, "hf_folder")
    ids, mask = encoder.tokenize(PROMPTS[:1])  # without the chat template
    plain_ids, plain_mask = encoder.tokenize(encoder.format_prompts(PROMPTS[:1]))
    assert not torch.equal(ids, plain_ids)
    with torch.no_grad():
        outputs = encoder.model(input_ids=plain_ids, attention_mask=plain_mask, output_hidden_states=True)
        last_layer = outputs.hidden_states[-1][0]
        config = copy.deepcopy(encoder.model.config)
        config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}  # Gemma's and Lumina's
        encoder.model.rotary_emb = Qwen3RotaryEmbedding(config)
        other_theta = encoder.encode(PROMPTS[:1]).embeds[0]
    assert relative_error(last_layer, reference[0]) > 0.1
    assert relative_error(other_theta, reference[0]) > 0.1


def test_gguf_tokenizer_is_rebuilt_from_metadata(tiny):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny.write("hf_folder"))
    ours = load(tiny, "gguf_f32.gguf").tokenizer
    assert "tokenizer.ggml" in ours.source
    for text in [TEMPLATE.format(p) for p in PROMPTS] + ["  spaces\n\nand 12345 digits!!", "Ünïcödé é"]:
        assert ours.encode(text) == hf(text)["input_ids"], text


def test_a_released_qwen3_of_another_size_is_refused_by_name(tmp_path):
    model = make_qwen3(hidden_size=4096, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=16, intermediate_size=8, vocab_size=8)  # fmt: skip
    save_file(qwen3_tensors(model), tmp_path / "qwen_3_8b.safetensors")
    with pytest.raises(UnsupportedModelError, match=r"Qwen3-8B \(hidden size 4096\), not Qwen3-4B.*2560"):
        load_text_encoder(tmp_path / "qwen_3_8b.safetensors")


def test_no_tokenizer_is_named(tiny, tmp_path):
    save_file(qwen3_tensors(tiny.model), tmp_path / "qwen_3_4b.safetensors")
    with pytest.raises(CheckpointError, match="no Qwen tokenizer found.*qwen25_tokenizer"):
        load_text_encoder(tmp_path / "qwen_3_4b.safetensors")


def test_a_system_prompt_is_refused(tiny):
    with pytest.raises(InvalidInputError, match="trained without a system prompt"):
        load(tiny, "hf_folder").encode(["a fox"], system_prompt="real")


def test_describes_qwen3_to_the_gemma_loader(tiny):
    from lumina_core.text.gemma import load_gemma_text_encoder

    with pytest.raises(UnsupportedModelError, match="a Qwen3 text encoder"):
        load_gemma_text_encoder(tiny.write("comfy.safetensors"))


def test_the_transformer_loader_names_a_qwen3_file(tiny):
    from lumina_core.loading.transformer import load_transformer

    with pytest.raises(UnsupportedModelError, match="holds a Qwen3 text encoder.*load_text_encoder"):
        load_transformer(tiny.write("comfy.safetensors"))
