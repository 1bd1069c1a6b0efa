"""Gemma (v1), Lumina-Next's text encoder: parity with transformers' GemmaModel, detection, prompt rules.

Reference: the tokenization of Lumina-Next's `lumina_next_t2i/sample.py` (transformers' Gemma tokenizer with
BOS, right padding to the longest prompt rounded up to a multiple of 8, max_length 256, truncation, the
prompt as typed), then `GemmaModel(attn_implementation="eager")(...).hidden_states[-2]` at the valid
positions. Our encoder runs SDPA attention, so the comparison also covers that choice.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import sentencepiece
import torch
from safetensors.torch import save_file
from transformers import GemmaModel

from lumina_core.errors import CheckpointError, InvalidInputError, UnsupportedModelError
from lumina_core.text import (
    GEMMA1,
    GEMMA2,
    GEMMA_CONFIG_METADATA_KEY,
    GemmaTextEncoder,
    format_prompt,
    load_text_encoder,
)
from lumina_core.text.gemma import config_from_shapes, detect_variant, load_gemma_text_encoder
from lumina_core.tiny import TOKENIZER_CORPUS, gemma_tensors, make_gemma, make_gemma1, spm_tensor
from tests.fixtures.metrics import masked_max_relative_error
from tests.fixtures.tiny_gemma import (
    GEMMA1_NORMS,
    GEMMA2_NORMS,
    TinyGemma,
    release_shapes,
    write_layout,
)

TOLERANCE = 1e-5
LAYOUTS = ("hf_folder", "comfy.safetensors", "tokenizer_beside")
PROMPTS = [
    "a red fox",
    "A watercolor painting of a lighthouse on a rocky coast at sunset, with seagulls.",
    "Close-up portrait of an old fisherman, ünïcödé → bytes",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyGemma:
    return TinyGemma.build(tmp_path_factory.mktemp("gemma1"), make_gemma1(seed=0))


@pytest.fixture(scope="module")
def encoders(tiny) -> dict[str, GemmaTextEncoder]:
    return tiny.encoders(LAYOUTS)


def reference(tiny: TinyGemma, texts: list[str], max_length: int = 256, layer: int = -2):
    """ids, mask and hidden_states[layer] as Lumina-Next's sample.py tokenizes: padded to a multiple of 8."""
    return tiny.reference(texts, layer, pad_to_multiple_of=8, max_length=max_length)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_as_gemma_for_lumina_next(tiny, encoders, layout):
    encoder = encoders[layout]
    assert encoder.family == "lumina_next" and encoder.variant is GEMMA1
    assert type(encoder.model) is GemmaModel and encoder.model.config._attn_implementation == "sdpa"
    loaded, expected = encoder.model.state_dict(), tiny.model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert encoder.model.embed_tokens.embed_scale.item() == pytest.approx(math.sqrt(32))  # sqrt(hidden)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_encode_matches_transformers_eager(tiny, encoders, layout):
    ids, mask, expected = reference(tiny, PROMPTS)
    conditioning = encoders[layout].encode(PROMPTS)
    assert torch.equal(encoders[layout].tokenize(PROMPTS)[0], ids)  # same ids, same padded length
    assert ids.shape[1] % 8 == 0 and len(set(mask.sum(1).tolist())) == len(PROMPTS)
    assert torch.equal(conditioning.mask, mask)
    assert conditioning.embeds.dtype == torch.float32
    assert masked_max_relative_error(conditioning.embeds, expected, mask) < TOLERANCE
    assert not conditioning.embeds[~mask].any()


def test_tokens_are_bos_first_no_eos(tiny, encoders):
    ids, mask = encoders["comfy.safetensors"].tokenize(PROMPTS)
    plain = sentencepiece.SentencePieceProcessor(model_proto=tiny.spm_model)
    for row, length, text in zip(ids, mask.sum(1), PROMPTS):
        assert row[:length].tolist() == [2, *plain.encode(text)]
        assert not row[length:].any()


def test_truncation_at_max_length(tiny, encoders):
    ids, mask, expected = reference(tiny, PROMPTS, max_length=16)
    conditioning = encoders["hf_folder"].encode(PROMPTS, max_length=16)
    assert torch.equal(conditioning.mask, mask) and mask.shape == (3, 16) and mask[1:].all()
    assert masked_max_relative_error(conditioning.embeds, expected, mask) < TOLERANCE


def test_a_prompt_gets_the_same_features_alone_and_in_a_mixed_batch(encoders):
    encoder = encoders["comfy.safetensors"]
    batch, alone = encoder.encode(PROMPTS), encoder.encode(PROMPTS[0])
    length = alone.mask.shape[1]
    assert length < batch.mask.shape[1]
    assert masked_max_relative_error(batch.embeds[:1, :length], alone.embeds, alone.mask) < TOLERANCE


@pytest.mark.parametrize("wrong", ["last hidden state", "third-to-last layer", "Lumina 2 system prompt"])
def test_the_comparison_can_fail(tiny, encoders, wrong):
    ours = encoders["hf_folder"].encode(PROMPTS).embeds
    if wrong == "Lumina 2 system prompt":  # the reference on templated text; compare the common length
        _, mask, expected = reference(tiny, [format_prompt(p, "real") for p in PROMPTS])
        length = min(ours.shape[1], expected.shape[1])
        ours, expected, mask = ours[:, :length], expected[:, :length], mask[:, :length]
    else:
        _, mask, expected = reference(tiny, PROMPTS, layer=-1 if wrong == "last hidden state" else -3)
    assert masked_max_relative_error(ours, expected, mask) > 1000 * TOLERANCE


def test_no_system_prompt(encoders):
    encoder = encoders["comfy.safetensors"]
    with pytest.raises(InvalidInputError, match="lumina_next, which was trained without a system prompt"):
        encoder.encode("a red fox", system_prompt="real")
    plain = encoder.encode("a red fox").embeds
    for empty in ("", "empty"):
        assert torch.equal(encoder.encode("a red fox", system_prompt=empty).embeds, plain)


def test_empty_negative_is_bos_alone(encoders):
    encoder = encoders["comfy.safetensors"]
    negative = encoder.encode(["", "blurry"], negative=True)
    assert negative.mask.sum(1)[0] == 1 and negative.mask.shape[1] == 8
    assert torch.equal(negative.embeds, encoder.encode(["", "blurry"]).embeds)  # no template either way


def test_release_shapes_give_the_gemma_2b_config():
    shapes = release_shapes(18, 2048, 2048, 256, 16384, GEMMA1_NORMS)
    assert detect_variant(shapes) is GEMMA1
    config = config_from_shapes(shapes)
    assert config.model_type == "gemma" and config.vocab_size == 256000
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (2048, 18, 16384)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (8, 1, 256)
    assert (config.hidden_act, config.rms_norm_eps, config.rope_parameters["rope_theta"]) == (
        "gelu_pytorch_tanh", 1e-6, 10000.0,
    )  # fmt: skip
    seven_b = config_from_shapes(release_shapes(28, 3072, 4096, 4096, 24576, GEMMA1_NORMS))
    assert (seven_b.num_attention_heads, seven_b.num_key_value_heads, seven_b.head_dim) == (16, 16, 256)
    assert detect_variant(release_shapes(1, 2304, 2048, 1024, 9216, GEMMA2_NORMS)) is GEMMA2


def test_a_google_gemma_2b_style_config_json(tiny, tmp_path):
    """The released config.json says "hidden_act": "gelu" (meaning tanh GELU) and carries extra fields."""
    path = write_layout(tiny.model, tiny.spm_model, "hf_folder", tmp_path)
    config = {
        "architectures": ["GemmaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 2,
        "eos_token_id": 1, "head_dim": 16, "hidden_act": "gelu", "hidden_size": 32, "initializer_range": 0.02,
        "intermediate_size": 64, "max_position_embeddings": 8192, "model_type": "gemma", "num_attention_heads": 4,
        "num_hidden_layers": 3, "num_key_value_heads": 1, "pad_token_id": 0, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 10000.0, "torch_dtype": "bfloat16", "transformers_version": "4.38.0.dev0",
        "use_cache": True, "vocab_size": 384,
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    encoder = load_text_encoder(path)
    assert encoder.model.config.hidden_act == "gelu_pytorch_tanh" and encoder.dtype == torch.float32
    _, mask, expected = reference(tiny, PROMPTS)
    assert masked_max_relative_error(encoder.encode(PROMPTS).embeds, expected, mask) < TOLERANCE


def test_the_generation_comes_from_the_tensors_not_the_file_name(tiny, tmp_path):
    gemma1_named_as_gemma2 = tmp_path / "one" / "gemma_2_2b_fp16.safetensors"
    gemma2_named_as_gemma1 = tmp_path / "two" / "gemma-2b.safetensors"
    write_layout(tiny.model, tiny.spm_model, "comfy.safetensors", tmp_path / "one").rename(gemma1_named_as_gemma2)
    write_layout(make_gemma(0), tiny.spm_model, "comfy.safetensors", tmp_path / "two").rename(gemma2_named_as_gemma1)
    assert load_text_encoder(gemma1_named_as_gemma2).family == "lumina_next"
    assert load_text_encoder(gemma2_named_as_gemma1).family == "lumina2"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("t5", "a T5 encoder"),
        ("lumina_next_dit", "a diffusion transformer"),
        ("lumina2_dit", "a diffusion transformer"),
    ],
)
def test_other_models_get_a_clear_error(tiny, tmp_path, kind, message):
    tensors = {
        "t5": {"shared.weight": torch.zeros(8, 4), "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4)},
        "lumina_next_dit": {
            "x_embedder.weight": torch.zeros(8, 16),
            "cap_embedder.1.weight": torch.zeros(8, 32),
            "layers.0.attention.gate": torch.zeros(4),
            "layers.0.attention.wk_y.weight": torch.zeros(8, 32),
        },
        "lumina2_dit": {
            "model.diffusion_model.cap_embedder.1.weight": torch.zeros(8, 32),
            "model.diffusion_model.context_refiner.0.attention.qkv.weight": torch.zeros(24, 8),
        },
    }[kind]
    path = tmp_path / f"{kind}.safetensors"
    save_file({**tensors, "spiece_model": spm_tensor(tiny.spm_model)}, path)
    with pytest.raises(UnsupportedModelError, match=message) as caught:
        load_gemma_text_encoder(path)  # load_text_encoder sends a T5 file to the T5 loader
    text = str(caught.value)
    assert str(path) in text and "not a Gemma text encoder" in text and "Gemma-2B for Lumina-Next" in text


def test_config_json_of_the_other_generation(tiny, tmp_path):
    path = write_layout(tiny.model, tiny.spm_model, "hf_folder", tmp_path)
    make_gemma(0).config.save_pretrained(path)  # a Gemma-2 config.json beside Gemma (v1) tensors
    with pytest.raises(CheckpointError, match=r"model_type 'gemma2' but the tensors are a Gemma \(v1\) text encoder"):
        load_text_encoder(path)


def test_unknown_size_without_config_asks_for_one(tiny, tmp_path):
    path = tmp_path / "no_config.safetensors"
    save_file({**gemma_tensors(tiny.model), "spiece_model": spm_tensor(tiny.spm_model)}, path)
    with pytest.raises(CheckpointError, match=rf"not a released Gemma \(v1\) size .*'{GEMMA_CONFIG_METADATA_KEY}'"):
        load_text_encoder(path)


def test_a_tokenizer_that_is_not_gemma(tiny, tmp_path):
    model = io.BytesIO()  # a SentencePiece model with the default "<s>" BOS piece, as Llama's
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TOKENIZER_CORPUS * 4), model_writer=model, vocab_size=384, model_type="bpe",
        byte_fallback=True, minloglevel=2,
    )  # fmt: skip
    path = write_layout(tiny.model, model.getvalue(), "comfy.safetensors", tmp_path)
    with pytest.raises(CheckpointError, match="BOS piece '<s>', not '<bos>'"):
        load_text_encoder(path)
