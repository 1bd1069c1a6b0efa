"""Gemma text encoders: Gemma (v1) 2B for Lumina-Next, Gemma-2 2B for Lumina-Image 2.0.

Models: Gemma (Gemma Team, "Gemma: Open Models Based on Gemini Research and Technology",
arXiv:2403.08295) and Gemma 2 (arXiv:2408.00118), run by transformers' `GemmaModel` and `Gemma2Model`
(transformers 5.x, `models/gemma/modeling_gemma.py`, `models/gemma2/modeling_gemma2.py`). Both diffusion
models condition on `hidden_states[-2]`: the output of the second-to-last decoder layer, without the final
norm (Alpha-VLLM/Lumina-T2X `lumina_next_t2i/sample.py`, Alpha-VLLM/Lumina-Image-2.0 `sample.py`; ComfyUI
takes the same layer for Lumina 2 with `layer_idx=-2`, `layer_norm_hidden_state=False`).

The two generations are told apart by their tensors, never by the file name: Gemma-2 has the pre- and
post-feedforward norms, Gemma (v1) only `input_layernorm` and `post_attention_layernorm` (VARIANTS). The
encoder's `family` names the diffusion model it conditions, so a miswired graph fails with a clear message.

Prompts, per the original code (docs/models.md, 'Gemma text encoders and prompts'):
- Lumina 2: "<system text> <Prompt Start> <prompt>", BOS, no EOS, right padded to the longest row.
- Lumina-Next: the prompt as typed (no system prompt), BOS, no EOS, right padded to the longest row rounded
  up to a multiple of 8 (`padding=True, pad_to_multiple_of=8, max_length=256, truncation=True`). `sample.py`
  builds its tokenizer with `add_eos=True`, which is not an option of Gemma's tokenizer (that is
  `add_eos_token`), so it adds no EOS, like `demo.py`. diffusers' `LuminaPipeline` differs: it lower-cases
  and strips the prompt (its `clean_caption` text preprocessing, on by default) and pads the negative prompt
  separately to the prompt's length; padding is masked, so only the lower-casing changes the features.

Sources, for either generation:
- a Hugging Face folder: `config.json`, safetensors weights (sharded or not, keys with the `model.` prefix of
  `*ForCausalLM` or without it as saved by `*Model`), and `tokenizer.model` or `tokenizer.json` in the folder
  or in a sibling `tokenizer/` folder (diffusers pipeline layout; a pipeline root with `model_index.json` is
  followed to its `text_encoder/`);
- a single file such as ComfyUI's `gemma_2_2b_fp16.safetensors`, with the SentencePiece model stored as the
  uint8 tensor `spiece_model` (or tokenizer files next to it);
- an all-in-one checkpoint (ComfyUI's `lumina_2.safetensors`), of which only the tensors under
  `text_encoders.gemma2_2b.transformer.` and the tokenizer `text_encoders.spiece_model` are read.

The config comes from tensor shapes. head_dim (and Gemma-2's attention scale) cannot: it is taken from a
`config.json`, from a JSON config in the safetensors metadata under the variant's `metadata_key`, or from
the release tables below.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import sentencepiece
import tokenizers
import torch
from torch import nn
from transformers import Gemma2Config, Gemma2Model, GemmaConfig, GemmaModel, PretrainedConfig
from transformers.models.gemma.modeling_gemma import GemmaRotaryEmbedding
from transformers.models.gemma2.modeling_gemma2 import Gemma2RotaryEmbedding

from ..common.ops import adopt_operations
from ..conditioning import Conditioning
from ..errors import CheckpointError, InvalidInputError, UnsupportedModelError
from ..gguf.reader import read_metadata
from ..gguf.text import config_fields as gguf_config_fields
from ..gguf.text import sentencepiece_model
from ..loading.files import Checkpoint, is_gguf, open_checkpoint, preview, read_json
from ..loading.modules import assign_tensors, build_with_precision
from .encoder import TextEncoder, check_stored, decoder_dimensions, right_padded, shape_of
from .prompts import format_negative_prompt, format_prompt, resolve_system_prompt
from .truncation import warn_cut

# Safetensors metadata keys holding a JSON object of config fields (config.json content), one per variant.
GEMMA_CONFIG_METADATA_KEY = "lumina_core.gemma_config"
GEMMA2_CONFIG_METADATA_KEY = "lumina_core.gemma2_config"

ALL_IN_ONE_PREFIX = "text_encoders.gemma2_2b.transformer."
ALL_IN_ONE_TOKENIZER_KEY = "text_encoders.spiece_model"
SINGLE_FILE_TOKENIZER_KEY = "spiece_model"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")

# Stored beside the weights but not part of Gemma*Model: the tokenizer bytes and the LM head, which Gemma
# ties to the embedding and which text features do not use.
_NON_WEIGHT_KEYS = frozenset({SINGLE_FILE_TOKENIZER_KEY, "lm_head.weight"})

# Gemma's "<pad>" id. Padded positions are masked and zeroed, so it only has to be a valid id; it is also
# the id the original code pads with, so token ids match it exactly.
_PAD_ID = 0

# Key patterns that tell model families apart, for detection and for saying what a wrong file holds.
_MARKERS = {
    "decoder": re.compile(r"(^|\.)layers\.0\.self_attn\.q_proj\.weight$"),
    "post_attention_norm": re.compile(r"(^|\.)layers\.0\.post_attention_layernorm\.weight$"),
    "pre_feedforward_norm": re.compile(r"(^|\.)layers\.0\.pre_feedforward_layernorm\.weight$"),
    "post_feedforward_norm": re.compile(r"(^|\.)layers\.0\.post_feedforward_layernorm\.weight$"),
    "qk_norm": re.compile(r"(^|\.)layers\.0\.self_attn\.q_norm\.weight$"),
    "qkv_bias": re.compile(r"(^|\.)layers\.0\.self_attn\.q_proj\.bias$"),
    "t5": re.compile(r"(^|\.)block\.0\.layer\.0\.SelfAttention\.q\.weight$"),
    "clip": re.compile(r"(^|\.)text_model\.encoder\.layers\.0\."),
    "dit": re.compile(r"(^|\.)(cap_embedder|x_embedder|t_embedder)\."),
    "vae": re.compile(r"(^|\.)decoder\.conv_in\.weight$"),
}
_OTHER_FAMILIES = {
    "t5": "a T5 encoder",
    "clip": "a CLIP text encoder",
    "dit": "a diffusion transformer (Lumina / Next-DiT)",
    "vae": "a VAE",
}


@dataclass(frozen=True)
class GemmaVariant:
    """One Gemma generation: how to recognise it, build it, and tokenize for the diffusion model it serves."""

    name: str  # "Gemma (v1)" or "Gemma-2", for messages
    family: str  # the diffusion family it conditions, as lumina_core names them: "lumina_next", "lumina2"
    model_type: str  # transformers' config model_type; a config.json saying otherwise contradicts the tensors
    config_class: type[PretrainedConfig]
    model_class: type[nn.Module]
    rotary_class: type[nn.Module]
    metadata_key: str
    required: frozenset[str]  # _MARKERS present in its files ...
    absent: frozenset[str]  # ... and absent; the two variants' rules exclude each other
    release_attention: Mapping[int, Mapping[str, int]]  # hidden size -> attention fields shapes cannot give
    query_scale_key: str | None  # config field scaling queries, defaulting to head_dim; None: 1/sqrt(head_dim)
    constants: Mapping[str, object]
    attn_implementation: str
    pad_to_multiple_of: int
    default_system_prompt: str | None  # None: trained without one, so none may be given

    @property
    def description(self) -> str:
        return f"a {self.name} text encoder"


GEMMA1 = GemmaVariant(
    name="Gemma (v1)",
    family="lumina_next",
    model_type="gemma",
    config_class=GemmaConfig,
    model_class=GemmaModel,
    rotary_class=GemmaRotaryEmbedding,
    metadata_key=GEMMA_CONFIG_METADATA_KEY,
    required=frozenset({"decoder", "post_attention_norm"}),
    absent=frozenset({"pre_feedforward_norm", "post_feedforward_norm", "qk_norm", "qkv_bias"}),
    # config.json of google/gemma-2b and gemma-7b; 7B's head_dim is not hidden / heads (3072 / 16).
    release_attention={2048: {"head_dim": 256}, 3072: {"head_dim": 256}},
    query_scale_key=None,
    # google/gemma-2b config.json. Its "hidden_act": "gelu" means the tanh approximation (transformers
    # PR #29402), written out here so a transformers default change cannot alter the model.
    constants={
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192,
        "attention_bias": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    },
    # What Lumina-Next's AutoModel loading picked (transformers >= 4.38 defaults Gemma to SDPA); it matches
    # eager attention to float rounding and needs no (B, H, L, L) score tensor.
    attn_implementation="sdpa",
    pad_to_multiple_of=8,  # lumina_next_t2i/sample.py and demo.py
    default_system_prompt=None,
)

GEMMA2 = GemmaVariant(
    name="Gemma-2",
    family="lumina2",
    model_type="gemma2",
    config_class=Gemma2Config,
    model_class=Gemma2Model,
    rotary_class=Gemma2RotaryEmbedding,
    metadata_key=GEMMA2_CONFIG_METADATA_KEY,
    required=frozenset({"decoder", "post_attention_norm", "pre_feedforward_norm", "post_feedforward_norm"}),
    absent=frozenset({"qk_norm", "qkv_bias"}),
    # config.json of google/gemma-2-2b, -9b and -27b. 2B and 9B use head_dim 256 and scale attention by
    # 1/sqrt(256), but 27B uses head_dim 128 and 1/sqrt(144) (hidden / heads).
    release_attention={
        2304: {"head_dim": 256, "query_pre_attn_scalar": 256},
        3584: {"head_dim": 256, "query_pre_attn_scalar": 256},
        4608: {"head_dim": 128, "query_pre_attn_scalar": 144},
    },
    query_scale_key="query_pre_attn_scalar",
    # google/gemma-2-2b config.json and the Gemma 2 report.
    constants={
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "sliding_window": 4096,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192,
        "attention_bias": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    },
    # eager is transformers' reference Gemma-2 attention: it applies the logit soft-capping. Gemma2 declares
    # no SDPA support (SDPA cannot soft-cap), and flash/flex are not available everywhere.
    attn_implementation="eager",
    # Lumina-Image-2.0's sample.py also pads to a multiple of 8; padding is masked and zeroed, so only the
    # length differs, and this path keeps the shortest.
    pad_to_multiple_of=1,
    default_system_prompt="real",
)

VARIANTS = (GEMMA1, GEMMA2)
_EXPECTED = (
    "Expected Gemma-2-2B for Lumina-Image 2.0 (ComfyUI's gemma_2_2b_fp16.safetensors, a Hugging Face "
    "google/gemma-2-2b folder, or an all-in-one Lumina 2 checkpoint with tensors under "
    f"'{ALL_IN_ONE_PREFIX}') or Gemma-2B for Lumina-Next (a google/gemma-2b folder, or its weights in one "
    "safetensors file with the tokenizer inside as 'spiece_model' or tokenizer.model beside it)."
)


def detect_variant(keys: Iterable[str]) -> GemmaVariant | None:
    """The Gemma generation a set of tensor names belongs to, or None when it is neither."""
    found = _markers(keys)
    matches = [v for v in VARIANTS if v.required <= found and not v.absent & found]
    return matches[0] if matches else None  # the rules exclude each other, so there is at most one


def describe_keys(keys: Iterable[str]) -> str:
    """Name what a set of tensor names holds, e.g. "a Gemma-2 text encoder" or "a T5 encoder", for messages."""
    keys = list(keys)
    variant = detect_variant(keys)
    if variant is not None:
        return variant.description
    found = _markers(keys)
    if "decoder" in found:
        if "qk_norm" in found and "pre_feedforward_norm" in found:
            return "a Gemma-3 text encoder (it has q_norm/k_norm)"
        if "qk_norm" in found:
            return "a Qwen3 text encoder (q_norm/k_norm, no Gemma feed-forward norms)"
        if "qkv_bias" in found:
            return "a Qwen2 / Qwen2.5 text encoder (q/k/v projections with biases)"
        return "a decoder whose layer norms match neither Gemma (v1) nor Gemma-2 (a damaged or unknown model)"
    described = [_OTHER_FAMILIES[name] for name in sorted(found & _OTHER_FAMILIES.keys())]
    return " and ".join(described) or "no model this loader recognises"


def _markers(keys: Iterable[str]) -> set[str]:
    keys = list(keys)
    return {name for name, pattern in _MARKERS.items() if any(pattern.search(k) for k in keys)}


def variant_of_config(config: PretrainedConfig) -> GemmaVariant:
    for variant in VARIANTS:
        if config.model_type == variant.model_type:
            return variant
    raise TypeError(
        f"expected a Gemma or Gemma-2 config, got model_type '{config.model_type}' ({type(config).__name__})."
    )


class _Tokenizer(Protocol):
    source: str
    bos_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...


class _SentencePieceTokenizer:
    """Gemma's SentencePiece model, called as ComfyUI calls it (plain `encode`; BOS added by the caller)."""

    def __init__(self, model_proto: bytes, source: str):
        self.source = source
        try:
            self.processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError as err:
            raise CheckpointError(f"{source} is not a SentencePiece model ({err}).") from None
        self.bos_id = self.processor.bos_id()
        if self.bos_id < 0 or self.processor.id_to_piece(self.bos_id) != "<bos>":
            found = self.processor.id_to_piece(self.bos_id) if self.bos_id >= 0 else "none"
            raise CheckpointError(f"{source} has BOS piece '{found}', not '<bos>', so it is not a Gemma tokenizer.")
        self.vocab_size = self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)


class _JsonTokenizer:
    """A Hugging Face `tokenizer.json`, for folders that ship no `tokenizer.model`."""

    def __init__(self, path: str):
        self.source = path
        try:
            self.tokenizer = tokenizers.Tokenizer.from_file(path)
        except Exception as err:  # noqa: BLE001 - the tokenizers library raises a bare Exception on bad files
            raise CheckpointError(f"{path} is not a readable tokenizer.json ({err}).") from None
        bos_id = self.tokenizer.token_to_id("<bos>")
        if bos_id is None:
            raise CheckpointError(f"{path} has no '<bos>' token, so it is not a Gemma tokenizer.")
        self.bos_id = bos_id
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids


class GemmaTextEncoder(TextEncoder):
    """Text features for a Lumina model: `hidden_states[-2]` of the prompts, formatted as its original code does.

    `family` is the diffusion family the weights serve ("lumina_next" for Gemma, "lumina2" for Gemma-2).
    """

    def __init__(self, model: GemmaModel | Gemma2Model, tokenizer: _Tokenizer):
        self.variant = variant_of_config(model.config)
        super().__init__(model, tokenizer, self.variant.name)

    @property
    def family(self) -> str:
        return self.variant.family

    def format_prompts(
        self, prompts: Sequence[str], system_prompt: str | None = None, negative: bool = False
    ) -> list[str]:
        """The texts the tokenizer sees.

        Lumina 2 (Gemma-2): the system-prompt template of `prompts.format_prompt` (system_prompt None means
        "real", sample.py's default); negative applies its empty-negative rule. Lumina-Next (Gemma): the
        prompts unchanged; it was trained without a system prompt, so naming one is an error.
        """
        if self.variant.default_system_prompt is None:
            if system_prompt is not None and resolve_system_prompt(system_prompt).strip():
                raise InvalidInputError(
                    f"this {self.variant.name} text encoder serves {self.family}, which was trained without a "
                    f"system prompt; got system_prompt {system_prompt!r}. Pass none, or load Gemma-2-2B for "
                    "Lumina-Image 2.0."
                )
            return list(prompts)
        system = self.variant.default_system_prompt if system_prompt is None else system_prompt
        formatter = format_negative_prompt if negative else format_prompt
        return [formatter(p, system) for p in prompts]

    def tokenize(self, texts: Sequence[str], max_length: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask for already formatted texts, as the original `sample.py` tokenizes.

        Each row is BOS + the pieces, no EOS, cut to `max_length` tokens (BOS included), right padded to
        the longest row; for Lumina-Next that length is rounded up to a multiple of 8 (`pad_to_multiple_of`).
        Returns ids (B, L) int64 and mask (B, L) bool, True on real tokens.
        """
        if not texts:
            raise InvalidInputError("nothing to encode: the list of prompts is empty.")
        if max_length < 1:
            raise InvalidInputError(f"max_length must be at least 1 (room for the BOS token); got {max_length}.")
        rows = [[self.tokenizer.bos_id] + self.tokenizer.encode(text) for text in texts]
        for index, row in enumerate(rows):
            if len(row) > max_length:
                warn_cut(self.variant.name, index, len(row), max_length, hint=f" to fit max_length={max_length}")
        rows = [row[:max_length] for row in rows]
        multiple = self.variant.pad_to_multiple_of
        return right_padded(rows, _PAD_ID, -(-max(len(row) for row in rows) // multiple) * multiple)

    @torch.no_grad()
    def encode(
        self,
        prompts: list[str] | str,
        system_prompt: str | None = None,
        negative: bool = False,
        max_length: int = 256,
        device: torch.device | str | None = None,
    ) -> Conditioning:
        """Encode prompts for the transformer of `self.family`, on `device` (None: where the weights are).

        prompts: one prompt or a list (the batch). system_prompt: for Lumina 2, a SYSTEM_PROMPTS name or
        custom text (None: "real"); for Lumina-Next, None (or an empty one). negative: Lumina 2's
        negative-prompt rule (an empty prompt stays "" without the template); no effect for Lumina-Next.
        Returns embeds (B, L, hidden) float32, zero at padded positions, and mask (B, L) bool (see
        `tokenize` for L). float32 whatever the model dtype, so the features do not depend on how the
        transformer is later cast.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids, mask = self.tokenize(self.format_prompts(prompts, system_prompt, negative), max_length)
        device = self.device if device is None else torch.device(device)
        ids, mask = ids.to(device), mask.to(device)
        output = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        # hidden_states = (embeddings, layer 0 out, ..., last layer out after the final norm)
        features = output.hidden_states[-2].float()
        features = torch.where(mask[..., None], features, 0.0)
        return Conditioning(features, mask, self.family)


@dataclass(frozen=True)
class _Source:
    weights: Checkpoint  # under Gemma*Model names
    variant: GemmaVariant
    stored: dict | None  # config.json or metadata config fields
    tokenizer: _Tokenizer
    where: str  # for messages


def load_gemma_text_encoder(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    *,
    compute_dtype: torch.dtype | None = None,
    operations=None,
) -> GemmaTextEncoder:
    """Load Gemma (Lumina-Next) or Gemma-2 (Lumina 2) and its tokenizer from a folder, a file or an all-in-one file.

    The generation is detected from the tensors; the returned encoder's `family` says which model it serves.
    dtype: the weights' dtype; None keeps the dtype of the stored embedding table. compute_dtype and operations as
    for `load_transformer`: transformers builds the model, then its Linear layers become the operations' (see
    `lumina_core.common.ops.adopt_operations`).
    Raises CheckpointError (unreadable or incomplete files, no tokenizer) or UnsupportedModelError
    (a file that holds another model), naming the file, what was found and what was expected.
    """
    path = os.fspath(path)
    source = _open_folder(path) if os.path.isdir(path) else _open_file(path)
    shapes = {k: source.weights.shape(k) for k in source.weights.keys}
    config = config_from_shapes(shapes, source.stored, source.where, source.variant)
    if source.tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer {source.tokenizer.source} has {source.tokenizer.vocab_size} tokens but the embedding in "
            f"{source.where} has {config.vocab_size} rows: tokenizer and weights come from different models."
        )
    model = _build_model(config, source, shapes, torch.device(device), dtype, compute_dtype, operations)
    return GemmaTextEncoder(model, source.tokenizer)


def config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]],
    stored: Mapping[str, object] | None = None,
    where: str = "checkpoint",
    variant: GemmaVariant | None = None,
) -> GemmaConfig | Gemma2Config:
    """A Gemma or Gemma-2 config whose dimensions come from tensor shapes (Gemma*Model key names).

    variant: GEMMA1 or GEMMA2; None detects it from the names in `shapes`.
    stored: fields from a config.json or the metadata config. They supply head_dim and the constants;
    a stored dimension or model_type that contradicts the tensors is an error.
    """
    variant = variant or _detect_or_raise(shapes.keys(), where)
    stored = dict(stored or {})
    if stored.get("model_type", variant.model_type) != variant.model_type:
        raise CheckpointError(
            f"{where}: its config says model_type '{stored['model_type']}' but the tensors are {variant.description} "
            f"(model_type '{variant.model_type}'). The config belongs to another model; remove or fix it."
        )
    hidden_size = shape_of(shapes, "embed_tokens.weight", where, variant.name)[1]
    attention = _attention_fields(variant, hidden_size, stored, where)
    fix = f" Fix head_dim in config.json or in the metadata key '{variant.metadata_key}'."
    derived = decoder_dimensions(shapes, attention["head_dim"], where, variant.name, fix)
    check_stored(derived, stored, where)
    fields = {**variant.constants, **attention, **stored, **derived, "use_cache": False}
    try:
        return variant.config_class.from_dict(fields, attn_implementation=variant.attn_implementation)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{where}: the derived {variant.name} config is invalid: {err}") from None


def config_metadata(config: GemmaConfig | Gemma2Config) -> dict[str, str]:
    """Safetensors metadata that lets `load_gemma_text_encoder` rebuild `config` without a config.json."""
    return {variant_of_config(config).metadata_key: config.to_json_string(use_diff=False)}


def _attention_fields(variant: GemmaVariant, hidden_size: int, stored: Mapping[str, object], where: str) -> dict:
    if "head_dim" in stored:
        head_dim = int(stored["head_dim"])
        # A stored query scale, if any, overrides this default when the fields are merged.
        return {"head_dim": head_dim, **({variant.query_scale_key: head_dim} if variant.query_scale_key else {})}
    if hidden_size not in variant.release_attention:
        raise CheckpointError(
            f"{where}: hidden size {hidden_size} is not a released {variant.name} size "
            f"({sorted(variant.release_attention)}), so head_dim cannot be known from tensor shapes. Put the "
            "model's config.json next to the weights, or store it as JSON under the safetensors metadata key "
            f"'{variant.metadata_key}'."
        )
    return dict(variant.release_attention[hidden_size])


def _detect_or_raise(keys: Iterable[str], where: str) -> GemmaVariant:
    keys = list(keys)
    variant = detect_variant(keys)
    if variant is None:
        raise UnsupportedModelError(f"{where} holds {describe_keys(keys)}, not a Gemma text encoder. {_EXPECTED}")
    return variant


def _open_file(path: str) -> _Source:
    checkpoint = open_checkpoint(path)
    if checkpoint.has_prefix(ALL_IN_ONE_PREFIX):
        where = f"{path} (tensors under '{ALL_IN_ONE_PREFIX}')"
        weights, variant = _gemma_weights(checkpoint.subset(ALL_IN_ONE_PREFIX), where)
        if ALL_IN_ONE_TOKENIZER_KEY not in checkpoint:
            raise CheckpointError(
                f"{path}: an all-in-one checkpoint without its tokenizer: expected the SentencePiece model as the "
                f"uint8 tensor '{ALL_IN_ONE_TOKENIZER_KEY}'."
            )
        tokenizer = _tokenizer_from_tensor(checkpoint, ALL_IN_ONE_TOKENIZER_KEY)
        return _Source(weights, variant, _metadata_config(checkpoint, variant), tokenizer, where)
    weights, variant = _gemma_weights(checkpoint, checkpoint.describe())
    if is_gguf(path):  # a llama.cpp file: the reader already renamed its tensors (lumina_core/gguf/text.py)
        return _gguf_source(path, weights, variant)
    if SINGLE_FILE_TOKENIZER_KEY in checkpoint:
        tokenizer = _tokenizer_from_tensor(checkpoint, SINGLE_FILE_TOKENIZER_KEY)
    else:
        failure = (
            f"{path}: no tokenizer: expected the SentencePiece model as the uint8 tensor '{SINGLE_FILE_TOKENIZER_KEY}' "
            "in the file, as in ComfyUI's gemma_2_2b_fp16.safetensors"
        )
        tokenizer = _tokenizer_from_folders([os.path.dirname(os.path.abspath(path))], failure)
    return _Source(weights, variant, _metadata_config(checkpoint, variant), tokenizer, path)


def _gguf_source(path: str, weights: Checkpoint, variant: GemmaVariant) -> _Source:
    """A llama.cpp Gemma GGUF: the tokenizer from its metadata (else beside it), head_dim from its metadata
    unless the hidden size is a released one (whose table also knows 27B's query scale)."""
    metadata = read_metadata(path)
    if "tokenizer.ggml.tokens" in metadata:
        model_proto = sentencepiece_model(metadata, path)
        tokenizer = _SentencePieceTokenizer(model_proto, f"{path} (tokenizer.ggml.* metadata)")
    else:
        tokenizer = _tokenizer_from_folders([os.path.dirname(os.path.abspath(path))], f"{path}: no tokenizer")
    released = weights.shape("embed_tokens.weight")[1] in variant.release_attention
    return _Source(weights, variant, None if released else gguf_config_fields(metadata), tokenizer, path)


def _open_folder(path: str) -> _Source:
    if os.path.isfile(os.path.join(path, "model_index.json")):
        path = os.path.join(path, "text_encoder")  # a diffusers pipeline root
    checkpoint = open_checkpoint(path)
    weights, variant = _gemma_weights(checkpoint, checkpoint.describe())
    config_path = os.path.join(path, "config.json")
    stored = read_json(config_path, f"a {variant.name} config.json") if os.path.isfile(config_path) else None
    sibling = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer")
    tokenizer = _tokenizer_from_folders([path, sibling], f"{path}: no tokenizer")
    return _Source(weights, variant, stored, tokenizer, path)


def _gemma_weights(checkpoint: Checkpoint, where: str) -> tuple[Checkpoint, GemmaVariant]:
    """The tensors under Gemma*Model's names (the `model.` prefix of *ForCausalLM removed), and their variant."""
    variant = _detect_or_raise(checkpoint.keys, where)
    weights = checkpoint.subset("model.") if checkpoint.has_prefix("model.layers.") else checkpoint
    return weights, variant


def _metadata_config(checkpoint: Checkpoint, variant: GemmaVariant) -> dict | None:
    key = variant.metadata_key
    text = checkpoint.metadata.get(key)
    if text is None:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{checkpoint.path}: metadata '{key}' is not JSON ({err}).") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{checkpoint.path}: metadata '{key}' must be a JSON object.")
    return config


def _tokenizer_from_tensor(checkpoint: Checkpoint, key: str) -> _SentencePieceTokenizer:
    tensor = checkpoint.load(key)
    if tensor.dtype != torch.uint8 or tensor.ndim != 1:
        raise CheckpointError(
            f"{checkpoint.path}: '{key}' should be the SentencePiece model as a 1-D uint8 tensor; found "
            f"{tensor.dtype} of shape {tuple(tensor.shape)}."
        )
    return _SentencePieceTokenizer(tensor.numpy().tobytes(), f"{checkpoint.path} ['{key}']")


def _tokenizer_from_folders(folders: list[str], failure: str) -> _Tokenizer:
    # tokenizer.model first: it is what ComfyUI runs, and it gives the same ids as tokenizer.json.
    for name in TOKENIZER_FILES:
        for folder in folders:
            candidate = os.path.join(folder, name)
            if os.path.isfile(candidate):
                return _open_tokenizer_file(candidate)
    raise CheckpointError(f"{failure}; looked for {' or '.join(TOKENIZER_FILES)} in {' and '.join(folders)}.")


def _open_tokenizer_file(path: str) -> _Tokenizer:
    if path.endswith(".json"):
        return _JsonTokenizer(path)
    with open(path, "rb") as handle:
        return _SentencePieceTokenizer(handle.read(), path)


def _build_model(
    config: GemmaConfig | Gemma2Config,
    source: _Source,
    shapes: Mapping[str, tuple[int, ...]],
    device: torch.device,
    dtype: torch.dtype | None,
    compute_dtype: torch.dtype | None,
    operations,
) -> GemmaModel | Gemma2Model:
    variant = source.variant
    weight_shapes = {k: v for k, v in shapes.items() if k not in _NON_WEIGHT_KEYS}
    stored = {k: source.weights.dtype(k) for k in weight_shapes}
    dtype = dtype or stored["embed_tokens.weight"]

    def build(layers) -> nn.Module:
        return adopt_operations(variant.model_class(config), layers)

    model, precision = build_with_precision(build, stored, dtype, compute_dtype, operations)
    described = (
        f"{source.where} ({variant.description}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, {config.num_key_value_heads} KV heads, head_dim {config.head_dim})"
    )
    readers = {k: partial(source.weights.load, k) for k in weight_shapes}
    assign_tensors(model, readers, weight_shapes, described, precision, device)
    _materialise_buffers(model, config, variant, device)
    return model


def _materialise_buffers(model: nn.Module, config: PretrainedConfig, variant: GemmaVariant, device: torch.device):
    # Non-persistent buffers (RoPE frequencies, the sqrt(hidden) embedding scale) are not stored in
    # checkpoints, so the meta build left them without data; rebuild them as Gemma*Model.__init__ does.
    model.rotary_emb = variant.rotary_class(config).to(device)
    model.embed_tokens.embed_scale = torch.tensor(config.hidden_size**0.5, device=device)
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise RuntimeError(
            f"{variant.model_class.__name__} has tensors this loader does not fill (a transformers change?): "
            f"{preview(left)}"
        )
