"""T5-XXL, LTX-Video's text encoder: parity with transformers' T5EncoderModel and diffusers' LTXPipeline.

References: T5TokenizerFast built from the same SentencePiece model, called as `LTXPipeline._get_t5_prompt_embeds`
calls it (`padding="max_length", max_length=128, truncation=True`), then `T5EncoderModel(...).last_hidden_state`
at the valid positions: with the padding mask (the original code, ComfyUI) and without it (diffusers'
LTXPipeline, run itself). Our encoder runs SDPA, transformers' default for T5: bit-exact against a reference
that does too, and within float rounding of eager attention.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import tokenizers
import torch
from safetensors.torch import save_file
from transformers import T5EncoderModel, T5TokenizerFast

from lumina_core import Conditioning, load_text_encoder
from lumina_core.errors import CheckpointError, InvalidInputError, UnsupportedModelError
from lumina_core.text import T5PromptTokenizer, T5TextEncoder, find_t5_tokenizer, t5_encoder_from_state_dict
from lumina_core.text.t5 import config_from_shapes
from lumina_core.tiny import (
    TINY_T5,
    make_gemma,
    make_t5,
    t5_tensors,
    train_t5_tokenizer,
    train_tokenizer,
    write_text_encoder,
)
from tests.fixtures.metrics import masked_max_relative_error
from tests.fixtures.tiny_t5 import (
    LAYOUTS,
    TOKENIZER_DIR,
    dequantised_fp8,
    kept_fp8,
    release_shapes,
    umt5_file,
    write_layout,
    write_tokenizer,
)

TOLERANCE = 1e-6
FULL_PRECISION = ("hf_folder", "hf_folder_sharded", "diffusers_pipeline", "comfy.safetensors")
FULL_PRECISION += ("comfy_encoder_only.safetensors", "comfy_prefixed.safetensors")
# Odd lengths, a character the tokenizer does not know, and an empty prompt (`</s>` alone).
PROMPTS = [
    "a red fox",
    "A woman walks through a busy street at night, neon lights reflect on the wet pavement.",
    "Close-up portrait of an old fisherman, ünïcödé",
    "",
]
SENTENCE = "A watercolor painting of a lighthouse on a rocky coast at sunset, with seagulls."
LONG_PROMPT = " ".join([SENTENCE] * 5)


@dataclass
class Tiny:
    folder: Path
    spm_model: bytes
    model: T5EncoderModel  # eager attention
    sdpa_model: T5EncoderModel  # the same weights with transformers' default attention
    tokenizer: T5TokenizerFast


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    folder = tmp_path_factory.mktemp("t5")
    spm_model = train_t5_tokenizer()
    tokenizer = T5TokenizerFast.from_pretrained(write_tokenizer(folder / TOKENIZER_DIR, spm_model))
    model = make_t5(seed=0)
    sdpa_model = copy.deepcopy(model)
    sdpa_model.set_attn_implementation("sdpa")
    return Tiny(folder, spm_model, model, sdpa_model, tokenizer)


@pytest.fixture(scope="module")
def encoders(tiny) -> dict[str, T5TextEncoder]:
    dirs = [tiny.folder / TOKENIZER_DIR]
    return {
        layout: load_text_encoder(write_layout(tiny.model, tiny.spm_model, layout, tiny.folder), tokenizer_dirs=dirs)
        for layout in LAYOUTS
    }


def reference(tiny: Tiny, texts: list[str], max_length: int = 128, masked: bool = True, model=None, **tokenizer_args):
    """ids (B, L), mask (B, L) bool and last_hidden_state (B, L, D), as LTXPipeline tokenizes."""
    batch = tiny.tokenizer(
        texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt", **tokenizer_args
    )
    with torch.no_grad():
        output = (model or tiny.model)(batch["input_ids"], batch["attention_mask"] if masked else None)
    return batch["input_ids"], batch["attention_mask"].bool(), output.last_hidden_state


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_the_weights_and_the_config(tiny, encoders, layout):
    encoder = encoders[layout]
    assert isinstance(encoder, T5TextEncoder) and encoder.family == "ltxv"
    config = encoder.model.config
    assert {k: getattr(config, k) for k in TINY_T5 if k != "feed_forward_proj"} == {
        k: v for k, v in TINY_T5.items() if k != "feed_forward_proj"
    }
    assert config.is_gated_act and config.dense_act_fn == "gelu_new" and config._attn_implementation == "sdpa"
    assert encoder.model.encoder.embed_tokens.weight is encoder.model.shared.weight  # tied, as transformers has it
    loaded, expected = encoder.model.state_dict(), tiny.model.state_dict()
    if "fp16" in layout:
        expected = {k: v.half() for k, v in expected.items()}
    elif "fp8" in layout:  # the linear weights stay fp8 (with their scale_weight), the rest is bf16
        expected = kept_fp8(tiny.folder / layout)
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


@pytest.mark.parametrize("layout", FULL_PRECISION)
def test_encode_matches_transformers(tiny, encoders, layout):
    ids, mask, expected = reference(tiny, PROMPTS, model=tiny.sdpa_model)
    conditioning = encoders[layout].encode(PROMPTS)
    assert torch.equal(encoders[layout].tokenize(PROMPTS)[0], ids) and ids.shape == (4, 128)
    assert len(set(mask.sum(1).tolist())) == len(PROMPTS) and mask[3].sum() == 1  # odd lengths; "" is </s> alone
    assert isinstance(conditioning, Conditioning) and conditioning.family == "ltxv"
    assert torch.equal(conditioning.mask, mask) and conditioning.embeds.dtype == torch.float32
    assert torch.equal(conditioning.embeds[mask], expected[mask])  # bit-exact against transformers' SDPA
    assert not conditioning.embeds[~mask].any()
    _, _, eager = reference(tiny, PROMPTS)
    assert masked_max_relative_error(conditioning.embeds, eager, mask) < 1e-5  # eager attention: float rounding only


def test_diffusers_ltx_pipeline_without_the_mask(tiny, encoders):
    """diffusers' LTXPipeline itself, which runs T5 without the padding mask (huggingface/diffusers#13585)."""
    from diffusers import LTXPipeline

    pipe = LTXPipeline(
        scheduler=None, vae=None, text_encoder=tiny.sdpa_model, tokenizer=tiny.tokenizer, transformer=None
    )
    prompts = PROMPTS[:3]
    with torch.no_grad():  # as LTXPipeline.__call__ runs it (SDPA picks another kernel under autograd)
        embeds, mask, negative_embeds, negative_mask = pipe.encode_prompt(
            prompts, negative_prompt="", max_sequence_length=128, device=torch.device("cpu"), dtype=torch.float32
        )
    encoder = encoders["comfy.safetensors"]
    positive, negative = encoder.encode(prompts, mask_padding=False), encoder.encode([""] * 3, mask_padding=False)
    assert torch.equal(positive.mask, mask) and torch.equal(negative.mask, negative_mask)
    assert torch.equal(positive.embeds[mask], embeds[mask])
    assert torch.equal(negative.embeds[negative_mask], negative_embeds[negative_mask])


def test_fp16_matches_transformers_from_pretrained(tiny, encoders):
    """In fp16 transformers keeps T5's `wo` in float32; so do we, and the result is the same to the bit."""
    folder = tiny.folder / "hf_folder_sharded"
    theirs = T5EncoderModel.from_pretrained(folder, dtype=torch.float16).eval()
    ours = load_text_encoder(folder, dtype=torch.float16)
    assert ours.dtype == torch.float16 and ours.model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == (
        theirs.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype
    )
    _, mask, expected = reference(tiny, PROMPTS, model=theirs)
    assert torch.equal(ours.encode(PROMPTS).embeds[mask], expected[mask].float())
    _, _, full = reference(tiny, PROMPTS, model=tiny.sdpa_model)
    assert masked_max_relative_error(encoders["comfy_fp16.safetensors"].encode(PROMPTS).embeds, full, mask) < 1e-2


@pytest.mark.parametrize("layout", ["comfy_fp8.safetensors", "comfy_fp8_scaled.safetensors"])
def test_fp8_files_compute_in_bf16(tiny, encoders, layout):
    """Bit-exact against T5EncoderModel given the same dequantised bf16 weights; near the full-precision model."""
    encoder = encoders[layout]
    assert encoder.dtype == torch.bfloat16
    theirs = copy.deepcopy(tiny.sdpa_model).to(torch.bfloat16)
    theirs.load_state_dict(dequantised_fp8(tiny.folder / layout), strict=False)  # the tied copy follows shared
    _, mask, expected = reference(tiny, PROMPTS, model=theirs)
    ours = encoder.encode(PROMPTS).embeds
    assert torch.equal(ours[mask], expected[mask].float())
    _, _, full = reference(tiny, PROMPTS, model=tiny.sdpa_model)
    # e4m3 keeps 3 mantissa bits, and the random model's unscaled, peaked attention amplifies it (measured 0.2).
    assert (ours - full)[mask].norm() / full[mask].norm() < 0.3


def test_long_prompts_are_cut_with_a_warning(tiny, encoders, caplog):
    encoder = encoders["diffusers_pipeline"]
    length = len(tiny.tokenizer(LONG_PROMPT).input_ids)
    assert 256 < length < 400
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match=rf"the last {length - 128} were dropped"):
        ids, mask = encoder.tokenize([LONG_PROMPT, "a red fox"])
    assert f"the last {length - 128} were dropped" in caplog.text
    assert torch.equal(ids, reference(tiny, [LONG_PROMPT, "a red fox"])[0]) and ids[0, -1] == 1  # </s> kept
    with pytest.warns(UserWarning, match=rf"the last {length - 256} were dropped"):
        ids, _ = encoder.tokenize([LONG_PROMPT], max_tokens=256)
    assert torch.equal(ids, reference(tiny, [LONG_PROMPT], max_length=256)[0])


def test_up_to_256_tokens_without_padding_beyond_the_longest(tiny, encoders):
    encoder = encoders["diffusers_pipeline"]
    text = " ".join([SENTENCE] * 3)
    full = tiny.tokenizer(text).input_ids
    assert 128 < len(full) < 256
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids, mask = encoder.tokenize([text, "a red fox"], max_tokens=256)
    assert ids.shape == (2, len(full)) and ids[0].tolist() == full and mask[1].sum() == 7
    conditioning = encoder.encode([text, "a red fox"], max_tokens=256)
    _, ref_mask, expected = reference(tiny, [text, "a red fox"], max_length=256, model=tiny.sdpa_model)
    ours = conditioning.embeds[mask]  # the padding is masked: only float rounding depends on its length
    assert (ours - expected[ref_mask]).abs().max() / expected[ref_mask].abs().max() < 1e-5  # measured 2.4e-6


@pytest.mark.parametrize("max_tokens", [127, 257])
def test_max_tokens_range(encoders, max_tokens):
    with pytest.raises(InvalidInputError, match="between 128 .* and 256"):
        encoders["comfy.safetensors"].encode("a red fox", max_tokens=max_tokens)


def test_a_prompt_gets_the_same_features_alone_and_in_a_batch(encoders):
    encoder = encoders["comfy.safetensors"]
    batch, alone = encoder.encode(PROMPTS), encoder.encode(PROMPTS[1])
    assert torch.equal(batch.embeds[1:2], alone.embeds)


@pytest.mark.parametrize("wrong", ["no padding mask", "before the final layer norm", "no </s>", "bias mirrored"])
def test_the_comparison_can_fail(tiny, encoders, wrong, record_property):
    ours = encoders["hf_folder"].encode(PROMPTS).embeds
    if wrong == "no padding mask":
        _, mask, expected = reference(tiny, PROMPTS, masked=False)
    elif wrong == "before the final layer norm":
        captured = []
        hook = tiny.model.encoder.final_layer_norm.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        _, mask, _ = reference(tiny, PROMPTS)
        hook.remove()
        expected = captured[0]
    elif wrong == "no </s>":
        _, mask, expected = reference(tiny, PROMPTS[:3], add_special_tokens=False)
        ours, mask = ours[:3], mask & encoders["hf_folder"].tokenize(PROMPTS[:3])[1]
    else:  # relative positions read backwards: buckets of "key after query" swapped with "key before query"
        mirrored = copy.deepcopy(tiny.model)
        table = mirrored.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        table.data = table.data.roll(table.shape[0] // 2, dims=0)
        _, mask, expected = reference(tiny, PROMPTS, model=mirrored)
    error = masked_max_relative_error(ours, expected, mask)
    record_property("relative_error", error)
    assert error > 1000 * TOLERANCE


@pytest.mark.parametrize("source", ["spiece.model file", "tokenizer.json file", "folder", "bytes", "objects"])
def test_every_tokenizer_source_tokenizes_as_t5_tokenizer_fast(tiny, tmp_path, source):
    folder = tiny.folder / TOKENIZER_DIR
    if source == "spiece.model file":
        tokenizers_ = [T5PromptTokenizer.from_path(folder / "spiece.model")]
    elif source == "tokenizer.json file":
        tokenizers_ = [
            T5PromptTokenizer.from_path(write_tokenizer(tmp_path, tiny.spm_model, "json") / "tokenizer.json")
        ]
    elif source == "folder":
        tokenizers_ = [T5PromptTokenizer.from_path(folder)]
    elif source == "bytes":  # what a GGUF's tokenizer metadata gives
        tokenizers_ = [T5PromptTokenizer.from_sentencepiece(tiny.spm_model, "a GGUF")]
    else:
        json_file = write_tokenizer(tmp_path, tiny.spm_model, "json") / "tokenizer.json"
        built = [tokenizers.Tokenizer.from_file(str(json_file)), T5TokenizerFast.from_pretrained(folder)]
        tokenizers_ = [T5PromptTokenizer(b, "built") for b in built]
    for tokenizer in tokenizers_:
        assert [tokenizer.encode(t) for t in [*PROMPTS, LONG_PROMPT]] == tiny.tokenizer(
            [*PROMPTS, LONG_PROMPT]
        ).input_ids
        assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.vocab_size) == (0, 1, 200)


def test_tokenizer_argument_and_search_order(tiny, tmp_path):
    path = write_layout(tiny.model, tiny.spm_model, "comfy.safetensors", tmp_path)
    spiece = tiny.folder / TOKENIZER_DIR / "spiece.model"
    for tokenizer in (spiece, str(spiece.parent), T5PromptTokenizer.from_path(spiece), tiny.tokenizer):
        ids = load_text_encoder(path, tokenizer=tokenizer).tokenize(["a red fox"])[0]
        assert ids[0, :7].tolist() == tiny.tokenizer("a red fox").input_ids and not ids[0, 7:].any()
    assert find_t5_tokenizer([tmp_path / "nothing", tmp_path / TOKENIZER_DIR, spiece.parent]) == str(
        tmp_path / TOKENIZER_DIR
    )
    assert find_t5_tokenizer([tmp_path / "nothing"]) is None


def test_state_dict_constructor(tiny):
    weights = t5_tensors(tiny.model)
    tokenizer = T5PromptTokenizer.from_sentencepiece(tiny.spm_model, "bytes")
    encoder_only = {"encoder.embed_tokens.weight": weights.pop("shared.weight"), **weights}
    encoder = t5_encoder_from_state_dict(encoder_only, tokenizer)
    _, mask, expected = reference(tiny, PROMPTS, model=tiny.sdpa_model)
    assert torch.equal(encoder.encode(PROMPTS).embeds[mask], expected[mask])


def test_release_configs_from_shapes():
    xxl = config_from_shapes(release_shapes(24, 4096, 64, 64, 10240, gated=True))  # google/t5-v1_1-xxl
    assert (xxl.num_layers, xxl.d_model, xxl.num_heads, xxl.d_kv, xxl.d_ff, xxl.vocab_size) == (
        24, 4096, 64, 64, 10240, 32128,
    )  # fmt: skip
    assert xxl.is_gated_act and xxl.dense_act_fn == "gelu_new" and xxl.layer_norm_epsilon == 1e-6
    assert (xxl.relative_attention_num_buckets, xxl.relative_attention_max_distance) == (32, 128)
    t5_11b = config_from_shapes(release_shapes(24, 1024, 128, 128, 65536, gated=False))  # the original T5-11B (relu)
    assert (t5_11b.num_heads, t5_11b.d_kv, t5_11b.is_gated_act, t5_11b.dense_act_fn) == (128, 128, False, "relu")


def test_missing_tokenizer_says_where_it_looked(tiny, tmp_path):
    path = tmp_path / "t5xxl_fp16.safetensors"
    save_file(t5_tensors(tiny.model), path)
    with pytest.raises(CheckpointError, match=rf"no T5 tokenizer found; looked for tokenizer.json or spiece.model in "
                       rf"{tmp_path}, .*elsewhere.*Pass tokenizer="):  # fmt: skip
        load_text_encoder(path, tokenizer_dirs=[tmp_path / "elsewhere"])


def test_a_gemma_tokenizer_is_refused(tiny, tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(train_tokenizer())
    with pytest.raises(CheckpointError, match="is not a T5 tokenizer"):
        load_text_encoder(tiny.folder / "comfy.safetensors", tokenizer=tmp_path / "tokenizer.model")


def test_a_tokenizer_larger_than_the_embedding_is_refused(tiny, tmp_path):
    path = tmp_path / "small.safetensors"
    save_file(t5_tensors(make_t5(seed=1, vocab_size=150)), path)
    with pytest.raises(CheckpointError, match="has 200 tokens but the T5 embedding has 150 rows"):
        load_text_encoder(path, tokenizer=tiny.folder / TOKENIZER_DIR)


def test_umt5_is_refused(tiny, tmp_path):
    with pytest.raises(UnsupportedModelError, match="holds a UMT5 encoder"):
        load_text_encoder(umt5_file(tiny.model, tmp_path / "umt5.safetensors"), tokenizer=tiny.folder / TOKENIZER_DIR)


def test_a_config_that_contradicts_the_tensors_is_refused(tiny, tmp_path):
    folder = write_layout(tiny.model, tiny.spm_model, "hf_folder", tmp_path)
    (folder / "config.json").write_text(
        (folder / "config.json").read_text().replace('"num_heads": 4', '"num_heads": 8')
    )
    with pytest.raises(CheckpointError, match="num_heads: config 8, tensors 4"):
        load_text_encoder(folder)


def test_tokenizer_argument_is_for_t5_only(tmp_path):
    path = write_text_encoder(make_gemma(seed=0), train_tokenizer(), "comfy.safetensors", tmp_path)
    with pytest.raises(InvalidInputError, match="tokenizer= is for T5 and Qwen3 encoders"):
        load_text_encoder(path, tokenizer=tmp_path)
    assert load_text_encoder(path, tokenizer_dirs=[tmp_path]).family == "lumina2"


def test_dtype_and_device_arguments(tiny):
    encoder = load_text_encoder(tiny.folder / "diffusers_pipeline", dtype=torch.bfloat16, device="cpu")
    assert encoder.dtype == torch.bfloat16 and encoder.device == torch.device("cpu")
    assert {p.dtype for p in encoder.model.parameters()} == {torch.bfloat16}  # wo stays float32 in fp16 only
    assert encoder.encode("a red fox").embeds.dtype == torch.float32


COMFYUI_DIR = os.environ.get("COMFYUI_DIR")


@pytest.mark.comfyui
@pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout")
def test_comfyui_bundled_tokenizer():
    """The T5 tokenizer ComfyUI ships, found by find_t5_tokenizer, tokenizes as T5TokenizerFast and tokenizers do."""
    folder = find_t5_tokenizer([Path(COMFYUI_DIR) / "comfy" / "text_encoders" / "t5_tokenizer"])
    assert folder is not None
    ours, theirs = T5PromptTokenizer.from_path(folder), T5TokenizerFast.from_pretrained(folder)
    raw = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    texts = [*PROMPTS, LONG_PROMPT, "  two  spaces\tand\nnew lines ", "worst quality, inconsistent motion"]
    assert [ours.encode(t) for t in texts] == theirs(texts).input_ids == [raw.encode(t).ids for t in texts]
    assert (ours.pad_id, ours.eos_id, ours.vocab_size) == (0, 1, 32100)
