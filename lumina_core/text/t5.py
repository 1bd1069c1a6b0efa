"""T5-v1.1-XXL encoder for LTX-Video: the final-layer-norm output of transformers' `T5EncoderModel`.

Model: T5 v1.1 (Raffel et al., "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", arXiv:1910.10683; v1.1 adds the gated-GELU feed-forward and unties the LM head), run by
transformers' `T5EncoderModel` (`models/t5/modeling_t5.py`). LTX-Video conditions on `last_hidden_state`,
the output of the encoder's final layer norm (Lightricks/LTX-Video `pipeline_ltx_video.py`, diffusers
`LTXPipeline._get_t5_prompt_embeds`, ComfyUI `comfy/text_encoders/lt.py`).

Tokens (docs/models.md, 'T5-XXL text encoder'): T5TokenizerFast, the pieces then `</s>`, no start token, right padded
with `<pad>` (id 0). A prompt longer than `max_tokens` keeps its first `max_tokens - 1` pieces and its `</s>`
(transformers' `truncation=True`), with a warning naming what was dropped. Rows are padded to at least 128
tokens: diffusers pads to exactly `max_sequence_length` = 128, the original 0.9.0 to 128, ComfyUI to at least
128; `max_tokens` (128 to 256, default 128 as diffusers) allows the 256 the later originals and the trainer use.
An empty prompt is `</s>` alone, as diffusers encodes an empty negative prompt.

The padding mask goes to T5 (the original code and ComfyUI do). diffusers' LTXPipeline runs T5 without it
(huggingface/diffusers#13585), so the real tokens also attend to the padding; `encode(..., mask_padding=False)`
reproduces that for parity. The transformer masks the padded positions either way, and they are zeroed here.

Sources:
- a Hugging Face folder: `config.json` and safetensors weights (sharded or not), as `T5EncoderModel` or a full
  T5 (`decoder.*` and `lm_head` are ignored); a diffusers pipeline root (`model_index.json`) is followed to its
  `text_encoder/`; the tokenizer from `tokenizer.json` or `spiece.model` in the folder or a sibling `tokenizer/`;
- a single file such as ComfyUI's `t5xxl_fp16.safetensors` or `t5xxl_fp8_e4m3fn(_scaled).safetensors`:
  transformers names, the embedding as `shared.weight` or `encoder.embed_tokens.weight`, optionally under a
  prefix (e.g. ComfyUI's `text_encoders.t5xxl.transformer.`). These files hold no tokenizer: it comes from the
  `tokenizer=` argument, files beside the weights, or `tokenizer_dirs` (in ComfyUI, the T5 tokenizer it ships
  in `comfy/text_encoders/t5_tokenizer/`; see `find_t5_tokenizer`);
- tensors already in memory (a dequantised GGUF) with `t5_encoder_from_state_dict`.

fp8 weights are a storage format: the Linear weights stay fp8 in memory and each layer casts its own to bf16
per call, multiplied by its `scale_weight` where ComfyUI's scaled-fp8 files have one (`lumina_core.common.ops`).
In fp16 the feed-forward output projections `wo` stay float32, as transformers' `from_pretrained` keeps them
(`_keep_in_fp32_modules`), because T5 v1.1 overflows fp16 there; their input is then cast to float32 as
transformers does, but never down to a narrower storage dtype (fp8, fp16 computed in float32).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, partial

import tokenizers
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, T5Config, T5EncoderModel, T5TokenizerFast
from transformers.models.t5.modeling_t5 import T5DenseActDense, T5DenseGatedActDense

from ..common.ops import FP8_DTYPES, adopt_operations
from ..conditioning import Conditioning
from ..errors import CheckpointError, InvalidInputError, UnsupportedModelError
from ..gguf.quantized import QuantizedTensor
from ..gguf.reader import read_metadata
from ..gguf.text import sentencepiece_model
from ..loading.files import Checkpoint, is_gguf, open_checkpoint, preview, read_json
from ..loading.modules import assign_tensors, build_with_precision
from .encoder import PromptTokenizer, TextEncoder, check_stored, resolve_tokenizer, right_padded, shape_of
from .truncation import warn_cut

FAMILY = "ltxv"
MIN_TOKENS = 128  # every row is padded to at least this many tokens (diffusers, the original 0.9.0, ComfyUI)
MAX_TOKENS = 256  # what LTX-Video was trained with (Lightricks/LTX-Video-Trainer#26)
DEFAULT_MAX_TOKENS = 128  # diffusers LTXPipeline's max_sequence_length
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")  # the order T5TokenizerFast.from_pretrained prefers

# The names T5EncoderModel gives its tensors; a file's root prefix is whatever precedes ENCODER_MARKER.
ENCODER_MARKER = "encoder.block.0.layer.0.SelfAttention.q.weight"
_EMBEDDING_NAMES = ("encoder.embed_tokens.weight", "shared.weight")  # the same (tied) table under either name
_RELATIVE_BIAS = "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
_BLOCK_KEY = re.compile(r"^encoder\.block\.(\d+)\.")

# Every T5 tokenizer's ids (T5, mT5, UMT5): the embedding rows the model was trained with for them.
_PAD_ID, _EOS_ID = 0, 1

# T5 v1.1 fields that tensor shapes cannot give (google/t5-v1_1-xxl config.json); a config.json overrides them.
T5_V1_1_DEFAULTS = {
    "layer_norm_epsilon": 1e-6,
    "relative_attention_max_distance": 128,
    "pad_token_id": _PAD_ID,
    "eos_token_id": _EOS_ID,
}
# SDPA, which transformers picks for T5 by default; it adds the position bias as the attention mask and matches
# eager attention to float rounding.
ATTN_IMPLEMENTATION = "sdpa"

_EXPECTED = (
    "Expected a T5-v1.1-XXL encoder for LTX-Video: ComfyUI's t5xxl_fp16.safetensors or "
    "t5xxl_fp8_e4m3fn(_scaled).safetensors, or a Hugging Face folder (the text_encoder/ of a diffusers LTX or "
    "PixArt pipeline, or google/t5-v1_1-xxl)."
)
_TOKENIZER_HELP = (
    "Pass tokenizer= a T5 tokenizer folder or file (the tokenizer/ folder of Lightricks/LTX-Video, or the "
    "tokenizer.json / spiece.model of google/t5-v1_1-xxl); inside ComfyUI the loader also looks in the T5 "
    "tokenizer ComfyUI ships (comfy/text_encoders/t5_tokenizer)."
)


def is_t5(keys: Iterable[str]) -> bool:
    """Whether a set of tensor names holds a T5 encoder stack (under any prefix)."""
    return any(k.endswith(ENCODER_MARKER) for k in keys)


def text_encoder_weights(path: str) -> str:
    """Where the weights of a text-encoder path are: a diffusers pipeline root's `text_encoder/`, else the path."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "model_index.json")):
        return os.path.join(path, "text_encoder")
    return path


def find_t5_tokenizer(directories: Iterable[str | os.PathLike]) -> str | None:
    """The first of `directories` holding a T5 tokenizer file (`tokenizer.json` or `spiece.model`), or None.

    In ComfyUI, pass the directory of the tokenizer it ships for its own T5 loaders:
    `os.path.join(os.path.dirname(comfy.text_encoders.__file__), "t5_tokenizer")`.
    """
    for directory in directories:
        directory = os.fspath(directory)
        if any(os.path.isfile(os.path.join(directory, name)) for name in TOKENIZER_FILES):
            return directory
    return None


class T5PromptTokenizer(PromptTokenizer):
    """A T5 tokenizer as LTX-Video's pipelines call it: the pieces then `</s>`, `<pad>` to pad.

    backend: a transformers tokenizer (T5TokenizerFast) or a `tokenizers.Tokenizer` whose post-processor
    appends `</s>` (a T5 tokenizer.json does). Build one from files with `from_path`, from SentencePiece
    model bytes (e.g. a GGUF's tokenizer) with `from_sentencepiece`.
    """

    def __init__(self, backend: PreTrainedTokenizerBase | tokenizers.Tokenizer, source: str):
        super().__init__(backend, source)
        self.pad_id, self.eos_id = self.vocab.get("<pad>"), self.vocab.get("</s>")
        if (self.pad_id, self.eos_id) != (_PAD_ID, _EOS_ID) or self.encode("") != [_EOS_ID]:
            raise CheckpointError(
                f"{source} is not a T5 tokenizer: T5's has '<pad>' as id {_PAD_ID} and '</s>' as id {_EOS_ID} (found "
                f"{self.pad_id} and {self.eos_id}) and ends every text with '</s>'. " + _TOKENIZER_HELP
            )

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> T5PromptTokenizer:
        """A folder with tokenizer.json or spiece.model, or one such file (any SentencePiece `.model` file)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            if find_t5_tokenizer([path]) is None:
                raise CheckpointError(f"{path}: no {' or '.join(TOKENIZER_FILES)} in this folder. " + _TOKENIZER_HELP)
            return cls(_load_tokenizer(T5TokenizerFast.from_pretrained, path, path, local_files_only=True), path)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: no such tokenizer file or folder. " + _TOKENIZER_HELP)
        if path.endswith(".json"):  # what T5TokenizerFast wraps; its constructor takes no file in transformers 5
            return cls(_load_tokenizer(tokenizers.Tokenizer.from_file, path, path), path)
        with open(path, "rb") as handle:
            return cls.from_sentencepiece(handle.read(), path)

    @classmethod
    def from_sentencepiece(cls, model_proto: bytes, source: str) -> T5PromptTokenizer:
        """T5TokenizerFast built from SentencePiece model bytes, as from_pretrained builds it from spiece.model."""
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "spiece.model"), "wb") as handle:
                handle.write(model_proto)
            backend = _load_tokenizer(T5TokenizerFast.from_pretrained, folder, source, local_files_only=True)
        return cls(backend, source)


def _load_tokenizer(
    factory: Callable[..., PreTrainedTokenizerBase | tokenizers.Tokenizer], location: str, source: str, **kwargs
):
    try:
        return factory(location, **kwargs)
    except Exception as err:  # noqa: BLE001 - transformers and tokenizers raise many types on bad files
        # transformers turns a bare spiece.model into its fast tokenizer with protobuf; without it the error it
        # raises is about tiktoken, which says nothing useful.
        hint = "" if importlib.util.find_spec("google.protobuf") else (
            " Reading a SentencePiece spiece.model needs the protobuf package (pip install protobuf), or give a "
            "folder with tokenizer.json (ComfyUI's own T5 tokenizer is one)."
        )  # fmt: skip
        raise CheckpointError(f"{source} is not a readable T5 tokenizer ({type(err).__name__}: {err}).{hint}") from None


class T5TextEncoder(TextEncoder):
    """Text features for LTX-Video: T5's last hidden state and the padding mask, as a `Conditioning`."""

    family = FAMILY

    def __init__(self, model: T5EncoderModel, tokenizer: T5PromptTokenizer):
        super().__init__(model, tokenizer, "T5")

    def tokenize(
        self, prompts: Sequence[str], max_tokens: int = DEFAULT_MAX_TOKENS
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) int64 and mask (B, L) bool, right padded to L = max(128, longest row).

        A prompt longer than max_tokens keeps its first max_tokens - 1 pieces and `</s>`, and a warning says
        how many tokens were dropped.
        """
        if not prompts:
            raise InvalidInputError("nothing to encode: the list of prompts is empty.")
        if not MIN_TOKENS <= max_tokens <= MAX_TOKENS:
            raise InvalidInputError(
                f"max_tokens must be between {MIN_TOKENS} (diffusers' LTXPipeline) and {MAX_TOKENS} (what LTX-Video "
                f"was trained with); got {max_tokens}."
            )
        rows = [self._cut(i, self.tokenizer.encode(text), max_tokens) for i, text in enumerate(prompts)]
        return right_padded(rows, self.tokenizer.pad_id, max(MIN_TOKENS, *(len(row) for row in rows)))

    def _cut(self, index: int, ids: list[int], max_tokens: int) -> list[int]:
        if len(ids) <= max_tokens:
            return ids
        allowed = "" if max_tokens == MAX_TOKENS else f" (up to {MAX_TOKENS} is allowed)"
        hint = f" to fit max_tokens={max_tokens}{allowed}"
        warn_cut("T5", index, len(ids), max_tokens, self.tokenizer.decode(ids[max_tokens - 1 : -1]), hint)
        return ids[: max_tokens - 1] + [self.tokenizer.eos_id]

    @torch.no_grad()
    def encode(
        self,
        prompts: list[str] | str,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        mask_padding: bool = True,
        device: torch.device | str | None = None,
    ) -> Conditioning:
        """Encode prompts for LTX-Video, on `device` (None: where the weights are).

        Returns embeds (B, L, d_model) float32, zero at padded positions, mask (B, L) bool, family "ltxv"
        (L: see `tokenize`). mask_padding=False runs T5 without the padding mask, as diffusers' LTXPipeline
        does (for parity with it; the real tokens then also attend to the padding).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids, mask = self.tokenize(prompts, max_tokens)
        device = self.device if device is None else torch.device(device)
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask if mask_padding else None).last_hidden_state
        features = torch.where(mask[..., None], hidden.float(), 0.0)
        return Conditioning(features, mask, self.family)


def load_t5_text_encoder(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    tokenizer: str | os.PathLike | T5PromptTokenizer | PreTrainedTokenizerBase | tokenizers.Tokenizer | None = None,
    tokenizer_dirs: Sequence[str | os.PathLike] = (),
    *,
    compute_dtype: torch.dtype | None = None,
    operations=None,
) -> T5TextEncoder:
    """Load a T5 encoder from a folder or a single file (see the module docstring), with its tokenizer.

    dtype: the weights' dtype; None keeps the stored one (fp8 files stay fp8). compute_dtype: None takes dtype,
    or the stored embedding's dtype, bf16 for fp8 files. operations as for `load_transformer`: transformers
    builds the model, then its Linear and Embedding layers become the operations' (`adopt_operations`).
    tokenizer: a path (folder or file) or a built tokenizer; None looks beside the weights (the folder, a sibling
    `tokenizer/`), then in `tokenizer_dirs`. Raises CheckpointError (unreadable or incomplete files, no
    tokenizer) or UnsupportedModelError (another model), naming the file, what was found and what was expected.
    """
    path = text_encoder_weights(os.fspath(path))
    checkpoint = open_checkpoint(path)
    weights, stored = _t5_weights(checkpoint), None
    config_path = os.path.join(path, "config.json")
    if os.path.isdir(path) and os.path.isfile(config_path):
        stored = read_json(config_path, "a T5 config.json")
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    nearby = [folder, os.path.join(os.path.dirname(folder), "tokenizer")]
    if tokenizer is None and is_gguf(path):  # a llama.cpp T5 GGUF carries its tokenizer in its metadata
        tokenizer = gguf_tokenizer(path)
    t5_tokenizer = _resolve_tokenizer(tokenizer, [*nearby, *map(os.fspath, tokenizer_dirs)], path)
    model = _build_model(weights, stored, dtype, torch.device(device), compute_dtype, operations)
    return T5TextEncoder(model, t5_tokenizer)


def t5_encoder_from_state_dict(
    state: Mapping[str, torch.Tensor],
    tokenizer: T5PromptTokenizer,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    where: str = "state dict",
) -> T5TextEncoder:
    """A T5 encoder from tensors in memory under T5EncoderModel names (e.g. a dequantised GGUF), config from shapes.

    The embedding may be given as `shared.weight`, `encoder.embed_tokens.weight` or both (they are tied).
    """
    embedding = next((state[n] for n in _EMBEDDING_NAMES if n in state), None)
    if embedding is None:
        raise CheckpointError(f"{where}: no token embedding; expected 'shared.weight' or '{_EMBEDDING_NAMES[0]}'.")
    state = {**state, **dict.fromkeys(_EMBEDDING_NAMES, embedding)}
    readers = {k: (lambda tensor=t: tensor) for k, t in state.items()}
    shapes, dtypes = {k: tuple(t.shape) for k, t in state.items()}, {k: t.dtype for k, t in state.items()}
    model = _build_model(_Weights(readers, shapes, dtypes, where), None, dtype, torch.device(device), None, None)
    return T5TextEncoder(model, tokenizer)


def config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]], stored: Mapping[str, object] | None = None, where: str = "checkpoint"
) -> T5Config:
    """A T5Config whose dimensions come from tensor shapes (T5EncoderModel names).

    Heads are the columns of block 0's relative_attention_bias (its rows are the buckets), d_kv the q rows per
    head, gated GELU (T5 v1.1) when the feed-forward has wi_0/wi_1, ReLU (original T5) when it has wi.
    stored: config.json fields; they supply what shapes cannot, and a stored dimension that contradicts the
    tensors is an error.
    """
    stored = dict(stored or {})
    if stored.get("model_type", "t5") != "t5":
        raise CheckpointError(
            f"{where}: its config says model_type '{stored['model_type']}' but the tensors are a T5 encoder. The "
            "config belongs to another model; remove or fix it."
        )
    vocab_size, d_model = shape_of(shapes, "shared.weight", where, "T5")
    buckets, heads = shape_of(shapes, _RELATIVE_BIAS.format(0), where, "T5")
    inner = shape_of(shapes, "encoder.block.0.layer.0.SelfAttention.q.weight", where, "T5")[0]
    if inner % heads:
        raise CheckpointError(
            f"{where}: q has {inner} rows, not a multiple of the {heads} heads of relative_attention_bias."
        )
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    ffn_in = "wi_0" if gated else "wi"
    derived = {
        "vocab_size": vocab_size,
        "d_model": d_model,
        "d_kv": inner // heads,
        "d_ff": shape_of(shapes, f"encoder.block.0.layer.1.DenseReluDense.{ffn_in}.weight", where, "T5")[0],
        "num_layers": 1 + max(int(m.group(1)) for k in shapes if (m := _BLOCK_KEY.match(k))),
        "num_heads": heads,
        "relative_attention_num_buckets": buckets,
    }
    check_stored(derived, stored, where)
    fields = {**T5_V1_1_DEFAULTS, "feed_forward_proj": "gated-gelu" if gated else "relu", **stored, **derived}
    try:
        config = T5Config.from_dict(fields, attn_implementation=ATTN_IMPLEMENTATION)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{where}: the derived T5 config is invalid: {err}") from None
    if config.is_gated_act != gated:
        raise CheckpointError(
            f"{where}: its config says feed_forward_proj '{fields['feed_forward_proj']}' but the feed-forward has "
            f"{'wi_0/wi_1 (gated)' if gated else 'wi (not gated)'}. Fix or remove the config."
        )
    return config


@dataclass(frozen=True)
class _Weights:
    """Readers, shapes and stored dtypes of the tensors under T5EncoderModel names."""

    readers: Mapping[str, Callable[[], torch.Tensor]]
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, torch.dtype]
    where: str  # for messages


def _t5_weights(checkpoint: Checkpoint) -> _Weights:
    """The encoder's tensors under T5EncoderModel names, from whatever prefix the file stores them under."""
    keys = checkpoint.keys
    roots = sorted({k[: -len(ENCODER_MARKER)] for k in keys if k.endswith(ENCODER_MARKER)})
    where = checkpoint.describe()
    if not roots:
        from .gemma import describe_keys  # the family names this package can tell apart

        raise UnsupportedModelError(f"{where} holds {describe_keys(keys)}, not a T5 encoder. {_EXPECTED}")
    if len(roots) > 1:
        raise CheckpointError(
            f"{where}: several T5 encoders, under {preview(repr(r) for r in roots)}; extract the one you want."
        )
    root = roots[0]
    where = f"{checkpoint.path} (T5 tensors under '{root}')" if root else where
    if root + _RELATIVE_BIAS.format(1) in checkpoint:
        raise UnsupportedModelError(
            f"{where} holds a UMT5 encoder (every block has its own relative_attention_bias, as in Wan's "
            f"umt5-xxl), not T5 v1.1. {_EXPECTED}"
        )
    names = {k[len(root) :]: k for k in keys if k.startswith(root + "encoder.")}
    embedding = next((root + n for n in _EMBEDDING_NAMES if root + n in checkpoint), None)
    if embedding is None:
        raise CheckpointError(
            f"{where}: no token embedding; expected '{root}shared.weight' or '{root}encoder.embed_tokens.weight'. "
            "The file is incomplete."
        )
    read_embedding = cache(partial(checkpoint.load, embedding))  # one tensor for the two tied names
    readers = {name: partial(checkpoint.load, key) for name, key in names.items()}
    readers |= dict.fromkeys(_EMBEDDING_NAMES, read_embedding)
    names |= dict.fromkeys(_EMBEDDING_NAMES, embedding)
    shapes = {name: checkpoint.shape(key) for name, key in names.items()}
    return _Weights(readers, shapes, {name: checkpoint.dtype(key) for name, key in names.items()}, where)


def gguf_tokenizer(path: str) -> T5PromptTokenizer | None:
    """The tokenizer rebuilt from a GGUF's tokenizer.ggml.* metadata; None when it has none."""
    metadata = read_metadata(path)
    if "tokenizer.ggml.tokens" not in metadata:
        return None
    return T5PromptTokenizer.from_sentencepiece(sentencepiece_model(metadata, path), f"{path} (tokenizer.ggml.*)")


def _resolve_tokenizer(
    tokenizer: str | os.PathLike | T5PromptTokenizer | PreTrainedTokenizerBase | tokenizers.Tokenizer | None,
    search: list[str],
    path: str,
) -> T5PromptTokenizer:
    failure = f"{path}: no T5 tokenizer found; looked for {' or '.join(TOKENIZER_FILES)}"
    return resolve_tokenizer(tokenizer, T5PromptTokenizer, find_t5_tokenizer, search, failure, _TOKENIZER_HELP)


def _build_model(
    weights: _Weights,
    stored: Mapping[str, object] | None,
    dtype: torch.dtype | None,
    device: torch.device,
    compute_dtype: torch.dtype | None,
    operations,
) -> T5EncoderModel:
    config = config_from_shapes(weights.shapes, stored, weights.where)
    if compute_dtype is None:
        fp8 = any(d in FP8_DTYPES for d in weights.dtypes.values())
        compute_dtype = dtype if dtype not in (None, *FP8_DTYPES) else torch.bfloat16 if fp8 else None
        compute_dtype = compute_dtype or weights.dtypes["shared.weight"]
    # Per tensor, what the weights are read into: `wo` stays float32 in fp16, as transformers keeps it.
    targets = {name: _target_dtype(name, dtype or stored_dtype, compute_dtype)
               for name, stored_dtype in weights.dtypes.items()}  # fmt: skip

    def build(layers) -> nn.Module:
        model = adopt_operations(T5EncoderModel(config), layers)
        for module in model.modules():
            if isinstance(module, (T5DenseActDense, T5DenseGatedActDense)):
                module.__class__ = _storage_blind(type(module))
        return model

    model, precision = build_with_precision(build, targets, None, compute_dtype, operations)
    described = (
        f"{weights.where} (a T5 encoder, {config.num_layers} layers, d_model {config.d_model}, {config.num_heads} "
        f"heads of {config.d_kv}, d_ff {config.d_ff}, {'gated GELU' if config.is_gated_act else 'ReLU'})"
    )
    readers = {name: partial(_cast, read, targets[name]) for name, read in weights.readers.items()}
    assign_tensors(model, readers, weights.shapes, described, precision, device)
    model.encoder.embed_tokens.weight = model.shared.weight  # tied, as T5EncoderModel builds it
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise RuntimeError(
            f"T5EncoderModel has tensors this loader does not fill (a transformers change?): {preview(left)}"
        )
    return model


def _target_dtype(name: str, dtype: torch.dtype, compute_dtype: torch.dtype) -> torch.dtype:
    # transformers' from_pretrained keeps T5's `wo` in float32 when loading in fp16 (T5PreTrainedModel.
    # _keep_in_fp32_modules), and T5's feed-forward casts its input to wo's dtype.
    if compute_dtype == torch.float16 and name.endswith(".DenseReluDense.wo.weight"):
        return torch.float32
    return dtype


def _cast(read: Callable[[], torch.Tensor], dtype: torch.dtype) -> torch.Tensor | QuantizedTensor:
    tensor = read()  # GGUF weights stay packed; assign_tensors makes QuantizedLinears of them
    if isinstance(tensor, QuantizedTensor) or not tensor.dtype.is_floating_point:
        return tensor
    return tensor.to(dtype)


@functools.cache
def _storage_blind(cls: type[nn.Module]) -> type[nn.Module]:
    """transformers' T5 feed-forward, with `wo`'s input cast only up to float32, never down to a storage dtype.

    transformers casts the input of `wo` to `wo.weight.dtype`, to run `wo` in float32 under fp16 (where it keeps
    that weight in float32). Here a weight may be stored narrower than the compute dtype (fp8, or fp16 computed
    in float32) and cast per call by its layer, so the input goes to float32 where `wo` is kept in float32 and
    otherwise keeps the compute dtype.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "wi_0"):  # gated (T5 v1.1): act(wi_0 x) * wi_1 x
            hidden = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
        else:
            hidden = self.act(self.wi(hidden_states))
        hidden = self.dropout(hidden)
        if getattr(self.wo.weight, "dtype", None) == torch.float32:  # a QuantizedLinear has no weight
            hidden = hidden.float()
        return self.wo(hidden)

    return type(cls.__name__, (cls,), {"forward": forward, "__doc__": cls.__doc__})
