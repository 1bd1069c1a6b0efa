"""Gemma-2 text encoder: parity with transformers' reference in every layout, and loading errors.

Reference: the tokenizer `sample.py` uses (transformers' Gemma tokenizer with BOS, right padding,
truncation) and the one ComfyUI uses (the bare SentencePiece model), then
`Gemma2Model(attn_implementation="eager")(...).hidden_states[-2]` at the valid positions.
"""

from __future__ import annotations

import pytest
import sentencepiece
import torch
from safetensors.torch import save_file

from lumina_core.errors import CheckpointError, InvalidInputError, UnsupportedModelError
from lumina_core.text import GEMMA2_CONFIG_METADATA_KEY, GemmaTextEncoder, format_prompt, load_text_encoder
from lumina_core.text.gemma import config_from_shapes, load_gemma_text_encoder
from lumina_core.tiny import gemma_tensors, make_gemma, spm_tensor
from tests.fixtures.metrics import masked_max_relative_error
from tests.fixtures.tiny_gemma import (
    GEMMA2_NORMS,
    LAYOUTS,
    TinyGemma,
    all_in_one_extras,
    all_in_one_text_encoder,
    release_shapes,
    write_layout,
    write_tiny_text_encoder,
)

TOLERANCE = 1e-5
HEAD_DIM_ONLY = {GEMMA2_CONFIG_METADATA_KEY: '{"head_dim": 16}'}  # the least config metadata a tiny file needs
FP32_LAYOUTS = [layout for layout in LAYOUTS if "bf16" not in layout]
PROMPTS = [
    "a red fox",
    "A watercolor painting of a lighthouse on a rocky coast at sunset, with seagulls.",
    "Close-up portrait of an old fisherman, ünïcödé → bytes",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyGemma:
    return TinyGemma.build(tmp_path_factory.mktemp("gemma"), make_gemma(seed=0))


@pytest.fixture(scope="module")
def encoders(tiny) -> dict[str, GemmaTextEncoder]:
    return tiny.encoders(LAYOUTS)


def reference(tiny: TinyGemma, texts: list[str], max_length: int = 256, layer: int = -2):
    """ids, mask and hidden_states[layer] from transformers alone."""
    return tiny.reference(texts, layer, max_length=max_length)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_bit_identical_parameters(tiny, encoders, layout):
    loaded = encoders[layout].model.state_dict()
    expected = tiny.model.state_dict()
    dtype = torch.bfloat16 if "bf16" in layout else torch.float32
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k].to(dtype)) for k in expected)
    assert not any(t.is_meta for t in [*encoders[layout].model.parameters(), *encoders[layout].model.buffers()])
    assert encoders[layout].family == "lumina2" and encoders[layout].variant.name == "Gemma-2"


@pytest.mark.parametrize("layout", FP32_LAYOUTS)
def test_encode_matches_transformers_eager(tiny, encoders, layout):
    texts = [format_prompt(p, "real") for p in PROMPTS]
    ids, mask, expected = reference(tiny, texts)
    conditioning = encoders[layout].encode(PROMPTS, system_prompt="real")
    assert torch.equal(encoders[layout].tokenize(texts)[0], ids)
    assert torch.equal(conditioning.mask, mask)
    assert conditioning.embeds.dtype == torch.float32
    assert masked_max_relative_error(conditioning.embeds, expected, mask) < TOLERANCE
    assert not conditioning.embeds[~mask].any()  # padding is zero, not the reference's padded-row values


def test_tokens_are_bos_first_no_eos_right_padded_and_match_sentencepiece(tiny, encoders):
    texts = [format_prompt(p, "align") for p in PROMPTS]
    ids, mask = encoders["comfy.safetensors"].tokenize(texts)
    comfy_tokenizer = sentencepiece.SentencePieceProcessor(model_proto=tiny.spm_model, add_bos=True, add_eos=False)
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) == len(PROMPTS)  # different lengths in one batch
    assert ids.shape[1] == lengths.max()
    for row, length, text in zip(ids, lengths, texts):
        assert row[:length].tolist() == comfy_tokenizer.encode(text)
        assert row[0] == 2 and 1 not in row[:length].tolist()
        assert not row[length:].any()
    assert torch.equal(mask, torch.arange(ids.shape[1]) < lengths[:, None])


def test_truncation_at_max_length(tiny, encoders):
    texts = [format_prompt(p, "real") for p in PROMPTS]
    ids, mask, expected = reference(tiny, texts, max_length=9)
    with pytest.warns(UserWarning, match=r"Gemma-2 prompt 0 has \d+ tokens; the last \d+ were dropped"):
        conditioning = encoders["hf_folder"].encode(PROMPTS, system_prompt="real", max_length=9)
    assert ids.shape == conditioning.mask.shape == (3, 9)
    assert conditioning.mask.all()
    assert masked_max_relative_error(conditioning.embeds, expected, mask) < TOLERANCE


def test_a_prompt_gets_the_same_features_alone_and_in_a_mixed_batch(encoders):
    encoder = encoders["comfy.safetensors"]
    batch = encoder.encode(PROMPTS)
    alone = encoder.encode(PROMPTS[0])
    length = alone.mask.shape[1]
    assert length < batch.mask.shape[1]
    assert masked_max_relative_error(batch.embeds[:1, :length], alone.embeds, alone.mask) < TOLERANCE


@pytest.mark.parametrize("wrong", ["last hidden state", "third-to-last layer", "no BOS"])
def test_the_comparison_can_fail(tiny, encoders, wrong):
    texts = [format_prompt(p, "real") for p in PROMPTS]
    ours = encoders["hf_folder"].encode(PROMPTS, system_prompt="real").embeds
    if wrong == "no BOS":
        ids, mask, _ = reference(tiny, texts)
        with torch.no_grad():
            expected = tiny.model(ids[:, 1:], mask[:, 1:].long(), output_hidden_states=True).hidden_states[-2]
        ours, mask = ours[:, 1:], mask[:, 1:]  # the same tokens, without BOS before them
    else:
        _, mask, expected = reference(tiny, texts, layer=-1 if wrong == "last hidden state" else -3)
    assert masked_max_relative_error(ours, expected, mask) > 1000 * TOLERANCE


def test_bf16_file_stays_close_to_the_fp32_reference(tiny, encoders):
    texts = [format_prompt(p, "real") for p in PROMPTS]
    _, mask, expected = reference(tiny, texts)
    assert masked_max_relative_error(encoders["comfy_bf16.safetensors"].encode(PROMPTS).embeds, expected, mask) < 5e-2


def test_negative_rule(encoders):
    encoder = encoders["comfy.safetensors"]
    empty = encoder.encode(["", "blurry"], system_prompt="real", negative=True)
    assert empty.mask.sum(1)[0] == 1  # BOS only: no system text for an empty negative
    assert torch.equal(empty.embeds[1:], encoder.encode("blurry", system_prompt="real").embeds)


def test_bad_arguments(encoders):
    with pytest.raises(InvalidInputError, match="empty"):
        encoders["hf_folder"].encode([])
    with pytest.raises(InvalidInputError, match="max_length"):
        encoders["hf_folder"].encode("a red fox", max_length=0)


def test_dtype_and_device(tmp_path):
    encoder = load_text_encoder(write_tiny_text_encoder(tmp_path), dtype=torch.bfloat16, device="cpu")
    assert encoder.dtype == torch.bfloat16 and encoder.to("cpu") is encoder
    assert encoder.device == torch.device("cpu")
    assert encoder.encode("a red fox").embeds.dtype == torch.float32


def test_release_shapes_give_the_gemma_2_2b_config():
    config = config_from_shapes(release_shapes(26, 2304, 2048, 1024, 9216, GEMMA2_NORMS))
    assert config.model_type == "gemma2"
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (26, 8, 4)
    assert (config.head_dim, config.query_pre_attn_scalar, config.intermediate_size) == (256, 256, 9216)
    assert (config.attn_logit_softcapping, config.sliding_window, config.rms_norm_eps) == (50.0, 4096, 1e-6)
    assert config.rope_parameters["rope_theta"] == 10000.0 and config._attn_implementation == "eager"


# Loading errors


def test_text_file(tmp_path):
    path = tmp_path / "gemma.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(CheckpointError, match="text file"):
        load_text_encoder(path)


def test_truncated_file(tiny, tmp_path):
    whole = write_layout(tiny.model, tiny.spm_model, "comfy.safetensors", tmp_path).read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_text_encoder(path)


@pytest.mark.parametrize(
    ("family", "message"),
    [
        ("half_sandwich", "neither Gemma \\(v1\\) nor Gemma-2"),
        ("gemma3", "Gemma-3"),
        ("t5", "T5"),
        ("dit", "diffusion transformer"),
    ],
)
def test_other_models_are_named(tiny, tmp_path, family, message):
    weights = gemma_tensors(tiny.model)
    if family == "half_sandwich":  # a damaged Gemma-2: one of its two extra norms gone
        weights = {k: v for k, v in weights.items() if "post_feedforward_layernorm" not in k}
    elif family == "gemma3":
        weights["model.layers.0.self_attn.q_norm.weight"] = torch.zeros(16)
    elif family == "t5":
        weights = {
            "shared.weight": torch.zeros(8, 4),
            "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4),
        }
    else:
        weights = all_in_one_extras()
    path = tmp_path / "other.safetensors"
    save_file({**weights, "spiece_model": spm_tensor(tiny.spm_model)}, path)
    with pytest.raises(UnsupportedModelError, match=message) as caught:
        load_gemma_text_encoder(path)  # load_text_encoder sends a T5 file to the T5 loader
    assert str(path) in str(caught.value) and "gemma_2_2b" in str(caught.value)


def test_missing_tokenizer_says_where_it_is_expected(tiny, tmp_path):
    path = tmp_path / "no_tokenizer.safetensors"
    save_file(gemma_tensors(tiny.model), path)
    with pytest.raises(CheckpointError, match="spiece_model.*looked for tokenizer.model or tokenizer.json"):
        load_text_encoder(path)


def test_all_in_one_without_tokenizer(tiny, tmp_path):
    tensors = all_in_one_text_encoder(gemma_tensors(tiny.model), tiny.spm_model)
    del tensors["text_encoders.spiece_model"]
    path = tmp_path / "all_in_one.safetensors"
    save_file({**all_in_one_extras(), **tensors}, path)
    with pytest.raises(CheckpointError, match="text_encoders.spiece_model"):
        load_text_encoder(path)


def test_missing_tensor_is_named(tiny, tmp_path):
    weights = gemma_tensors(tiny.model)
    del weights["model.layers.1.mlp.up_proj.weight"]
    path = tmp_path / "incomplete.safetensors"
    save_file({**weights, "spiece_model": spm_tensor(tiny.spm_model)}, path, metadata=HEAD_DIM_ONLY)
    with pytest.raises(CheckpointError, match=r"3 layers.*Missing: layers\.1\.mlp\.up_proj\.weight"):
        load_text_encoder(path)


def test_config_that_contradicts_the_shapes(tiny, tmp_path):
    path = write_layout(tiny.model, tiny.spm_model, "hf_folder", tmp_path)
    config = (path / "config.json").read_text().replace('"num_hidden_layers": 3', '"num_hidden_layers": 5')
    (path / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="num_hidden_layers: config 5, tensors 3"):
        load_text_encoder(path)


def test_unknown_size_without_config_asks_for_one(tiny, tmp_path):
    path = tmp_path / "no_config.safetensors"
    save_file({**gemma_tensors(tiny.model), "spiece_model": spm_tensor(tiny.spm_model)}, path)
    with pytest.raises(CheckpointError, match=f"hidden size 32 .*{GEMMA2_CONFIG_METADATA_KEY}"):
        load_text_encoder(path)


def test_tokenizer_from_another_model(tiny, tmp_path):
    small = make_gemma(seed=1, vocab_size=300)
    weights = {**gemma_tensors(small), "spiece_model": spm_tensor(tiny.spm_model)}
    path = tmp_path / "mismatch.safetensors"
    save_file(weights, path, metadata=HEAD_DIM_ONLY)
    with pytest.raises(CheckpointError, match="384 tokens .* 300 rows"):
        load_text_encoder(path)
