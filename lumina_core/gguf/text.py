"""Text encoders in llama.cpp GGUF files (Gemma, Gemma-2, Qwen3, T5): transformers' tensor names, and the
tokenizer rebuilt from the file's `tokenizer.ggml.*` metadata.

Names: llama.cpp's converter (gguf-py `tensor_mapping.py`, `constants.py` TENSOR_NAMES) renames every tensor;
the tables below map them back to `Gemma*Model` / `Qwen3Model` names under `model.` (as `*ForCausalLM` and
ComfyUI's gemma_2_2b and qwen_3_4b files store them) and to `T5EncoderModel` names, so the existing loaders
read a GGUF like any other checkpoint. One table per generation, because llama.cpp's `ffn_norm` is Gemma (v1)'s
and Qwen3's `post_attention_layernorm` but Gemma-2's `pre_feedforward_layernorm`. Qwen models keep their q/k
rows in order (llama.cpp permutes them for the "llama" architecture only) and their norms as they are.

Values: llama.cpp adds 1 to every Gemma norm weight (its RMSNorm multiplies by w, Gemma's by 1 + w;
docs/formats.md, 'GGUF text encoders'), so `GEMMA_NORM_OFFSET` is subtracted again when such a tensor is read.

Tokenizer: a SentencePiece model proto written from `tokenizer.ggml.tokens`, `scores` and `token_type`
(the piece types share SentencePiece's numbering), the special ids, `add_space_prefix`,
`remove_extra_whitespaces` and, for T5, `precompiled_charsmap`; "llama" files are BPE (Gemma's model type),
"t5" files unigram. The proto is encoded here (a few protobuf fields), so no protobuf package is needed.
"gpt2" files (Qwen3) are byte-level BPE: a `tokenizers.Tokenizer` from the token list and `tokenizer.ggml.merges`,
split as the Hugging Face tokenizer that `tokenizer.ggml.pre` names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import CheckpointError, UnsupportedModelError

GEMMA_NORM_OFFSET = 1.0
GEMMA_ARCHITECTURES = ("gemma", "gemma2")
DECODER_ARCHITECTURES = (*GEMMA_ARCHITECTURES, "qwen3")  # decoder-only language models, llama.cpp's `blk.N.*`
T5_ARCHITECTURES = ("t5", "t5encoder")

_GEMMA_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}  # fmt: skip
LAYER_NAMES = {
    "gemma": {**_GEMMA_LAYER, "ffn_norm": "post_attention_layernorm"},
    "gemma2": {
        **_GEMMA_LAYER,
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    "qwen3": {
        **_GEMMA_LAYER,
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "ffn_norm": "post_attention_layernorm",
    },
    "t5": {
        "attn_q": "layer.0.SelfAttention.q", "attn_k": "layer.0.SelfAttention.k", "attn_v": "layer.0.SelfAttention.v",
        "attn_o": "layer.0.SelfAttention.o", "attn_rel_b": "layer.0.SelfAttention.relative_attention_bias",
        "attn_norm": "layer.0.layer_norm", "ffn_norm": "layer.1.layer_norm",
        "ffn_gate": "layer.1.DenseReluDense.wi_0", "ffn_up": "layer.1.DenseReluDense.wi_1",
        "ffn_down": "layer.1.DenseReluDense.wo",
    },
}  # fmt: skip
GLOBAL_NAMES = {
    "decoder": {"token_embd": "model.embed_tokens", "output_norm": "model.norm"},
    "t5": {"token_embd": "shared", "enc.output_norm": "encoder.final_layer_norm"},
}
LAYER_PATTERN = {"decoder": re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$"),
                 "t5": re.compile(r"^enc\.blk\.(\d+)\.(\w+)\.(weight|bias)$")}  # fmt: skip
LAYER_TEMPLATE = {"decoder": "model.layers.{}.{}.{}", "t5": "encoder.block.{}.{}.{}"}
# Stored beside the encoder and not used for text features: the LM head (tied to the embedding in Gemma),
# T5's decoder, and llama.cpp's precomputed RoPE factors.
IGNORED = re.compile(r"^(output\.weight|dec\..*|rope_freqs\.weight)$")


def text_architecture(architecture: str) -> str | None:
    """The name table for a `general.architecture` ("gemma", "gemma2", "qwen3" or "t5"), or None for other models."""
    if architecture in DECODER_ARCHITECTURES:
        return architecture
    return "t5" if architecture in T5_ARCHITECTURES else None


def transformers_names(architecture: str, names: Iterable[str], path: str) -> dict[str, str]:
    """transformers name -> llama.cpp name, for every tensor of a Gemma/Gemma-2/Qwen3/T5 GGUF the encoder uses.

    Raises UnsupportedModelError naming the tensors no table knows (e.g. a Gemma-3 file's q/k norms).
    """
    table = text_architecture(architecture)
    family = "t5" if table == "t5" else "decoder"
    layer_names = dict(LAYER_NAMES[table])
    names = [n for n in names if not IGNORED.match(n)]
    if table == "t5" and not any(".ffn_gate." in n for n in names):
        layer_names["ffn_up"] = "layer.1.DenseReluDense.wi"  # original T5 (ReLU), no gate
    mapped, unknown = {}, []
    for name in names:
        base, _, suffix = name.rpartition(".")
        if base in GLOBAL_NAMES[family]:
            mapped[f"{GLOBAL_NAMES[family][base]}.{suffix}"] = name
        elif (match := LAYER_PATTERN[family].match(name)) and match.group(2) in layer_names:
            index, part, kind = match.groups()
            mapped[LAYER_TEMPLATE[family].format(index, layer_names[part], kind)] = name
        else:
            unknown.append(name)
    if unknown:
        raise UnsupportedModelError(
            f"{path}: a GGUF '{architecture}' file with tensors that are not part of a {table} text encoder: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} (a newer generation, e.g. Gemma-3?)."
        )
    return mapped


def is_gemma_norm(architecture: str, name: str) -> bool:
    """Whether a (transformers-named) tensor holds a Gemma norm weight, stored by llama.cpp with 1 added."""
    return architecture in GEMMA_ARCHITECTURES and name.endswith("norm.weight")


def config_fields(metadata: Mapping[str, object]) -> dict[str, int]:
    """The config.json fields a llama.cpp file states that tensor shapes cannot tell (head_dim)."""
    architecture = str(metadata.get("general.architecture", ""))
    key_length = metadata.get(f"{architecture}.attention.key_length")
    return {} if key_length is None else {"head_dim": int(key_length)}


# ---- tokenizer --------------------------------------------------------------------------------------------

_BPE, _UNIGRAM = 2, 1  # SentencePiece TrainerSpec.model_type
_USER_DEFINED, _BYTE = 4, 6  # token types (llama.cpp and SentencePiece number them alike)


def sentencepiece_model(metadata: Mapping[str, object], path: str) -> bytes:
    """A SentencePiece ModelProto (serialized) rebuilt from a GGUF's `tokenizer.ggml.*` metadata."""
    model = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if model not in ("llama", "t5") or tokens is None:
        raise CheckpointError(
            f"{path}: no SentencePiece tokenizer in its metadata (tokenizer.ggml.model is {model!r}, expected 'llama' "
            "or 't5', with tokenizer.ggml.tokens). Pass the tokenizer of the original model instead."
        )
    count = len(tokens)
    scores = _array(metadata, "tokenizer.ggml.scores", count, np.zeros(count, np.float32), path)
    types = _array(metadata, "tokenizer.ggml.token_type", count, np.ones(count, np.int32), path).astype(np.int64)
    score_bytes = np.asarray(scores, dtype="<f4").tobytes()
    pieces = b"".join(
        _piece(token, score_bytes[4 * i : 4 * i + 4], kind)
        for i, (token, kind) in enumerate(zip(_raw(tokens), types.tolist()))
    )
    trainer = b"".join([
        _varint_field(3, _UNIGRAM if model == "t5" else _BPE),
        _varint_field(35, int(bool((types == _BYTE).any()))),
        *(_special_fields(metadata, tokens, field, key) for field, key in _SPECIAL_IDS),
    ])  # fmt: skip
    charsmap = metadata.get("tokenizer.ggml.precompiled_charsmap")
    normalizer = b"".join([
        _bytes_field(1, b"identity" if charsmap is None else b"nmt_nfkc"),
        b"" if charsmap is None else _bytes_field(2, np.asarray(charsmap).astype(np.uint8).tobytes()),
        _varint_field(3, int(bool(metadata.get("tokenizer.ggml.add_space_prefix", model == "t5")))),
        _varint_field(4, int(bool(metadata.get("tokenizer.ggml.remove_extra_whitespaces", model == "t5")))),
        _varint_field(5, 1),  # escape whitespaces as U+2581
    ])  # fmt: skip
    return pieces + _bytes_field(2, trainer) + _bytes_field(3, normalizer)


# TrainerSpec id fields for unk/bos/eos/pad and the metadata keys holding them. SentencePiece finds a special
# token by its piece (the field 5 numbers above the id), so both are written; id -1 where a file has none.
_SPECIAL_IDS = ((40, "tokenizer.ggml.unknown_token_id"), (41, "tokenizer.ggml.bos_token_id"),
                (42, "tokenizer.ggml.eos_token_id"), (43, "tokenizer.ggml.padding_token_id"))  # fmt: skip


def _special_fields(metadata: Mapping[str, object], tokens, field: int, key: str) -> bytes:
    value = metadata.get(key)
    if value is None or not 0 <= int(value) < len(tokens):
        return _varint_field(field, -1)
    return _varint_field(field, int(value)) + _bytes_field(field + 5, tokens[int(value)].encode("utf-8"))


def _array(metadata: Mapping[str, object], key: str, count: int, default: np.ndarray, path: str) -> np.ndarray:
    value = metadata.get(key)
    if value is None:
        return default
    if len(value) != count:
        raise CheckpointError(f"{path}: {key} has {len(value)} entries for {count} tokens: a damaged tokenizer.")
    return np.asarray(value)


def _raw(tokens) -> Iterable[bytes]:
    """Each token's UTF-8 bytes, without decoding them (a reader.LazyStrings, or a list of str)."""
    if isinstance(tokens, (list, tuple)):
        return (t.encode("utf-8") for t in tokens)
    return tokens.raw()


def _piece(token: bytes, score: bytes, kind: int) -> bytes:
    """One ModelProto.SentencePiece (piece, score as 4 little-endian bytes, type), as a field of ModelProto."""
    if len(token) < 119 and kind < 128:  # every length fits one varint byte: the common case, built directly
        return bytes((0x0A, len(token) + 9, 0x0A, len(token))) + token + b"\x15" + score + bytes((0x18, kind))
    return _bytes_field(1, _bytes_field(1, token) + _key(2, 5) + score + _varint_field(3, kind))


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint_field(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value & (2**64 - 1))  # a negative int32 takes ten bytes, as protobuf writes it


def _bytes_field(number: int, data: bytes) -> bytes:
    return _key(number, 2) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# llama.cpp's `tokenizer.ggml.pre` -> the split pattern of the Hugging Face tokenizer.json it was converted from
# (Qwen2 / Qwen2.5 / Qwen3 share one: letters, single digits, punctuation runs, newlines and spaces apart).
PRE_TOKENIZER_PATTERNS = {
    "qwen2": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}
_CONTROL = 3  # llama.cpp token type of special tokens (<|im_start|> ...); 4 (_USER_DEFINED) for added ones


def byte_level_bpe(metadata: Mapping[str, object], path: str):
    """A byte-level BPE `tokenizers.Tokenizer` rebuilt from a "gpt2"-model GGUF's metadata (Qwen's tokenizer).

    The vocabulary is the token list (ids are positions), the merges `tokenizer.ggml.merges`; text is NFC
    normalised, split with the pattern `tokenizer.ggml.pre` names, then mapped to bytes, as in the tokenizer.json
    llama.cpp converted; control and user-defined tokens are matched whole before splitting.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    model, pre = metadata.get("tokenizer.ggml.model"), metadata.get("tokenizer.ggml.pre")
    tokens, merges = metadata.get("tokenizer.ggml.tokens"), metadata.get("tokenizer.ggml.merges")
    if model != "gpt2" or tokens is None or merges is None:
        raise CheckpointError(
            f"{path}: no byte-level BPE tokenizer in its metadata (tokenizer.ggml.model is {model!r}, expected "
            "'gpt2' with tokenizer.ggml.tokens and merges). Pass the tokenizer of the original model instead."
        )
    if pre not in PRE_TOKENIZER_PATTERNS:
        raise CheckpointError(
            f"{path}: its tokenizer splits text as {pre!r} (tokenizer.ggml.pre), which this loader does not know "
            f"(known: {', '.join(PRE_TOKENIZER_PATTERNS)}). Pass the tokenizer of the original model instead."
        )
    tokens = list(tokens)
    types = _array(metadata, "tokenizer.ggml.token_type", len(tokens), np.ones(len(tokens), np.int32), path).tolist()
    vocab = {token: index for index, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, byte_fallback=False, fuse_unk=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKENIZER_PATTERNS[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    whole = [(token, kind) for token, kind in zip(tokens, types) if kind in (_CONTROL, _USER_DEFINED)]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, k in whole if k == _CONTROL])
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t, k in whole if k == _USER_DEFINED])
    return tokenizer
