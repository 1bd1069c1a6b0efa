"""Gemma-2 text encoder for Lumina-Image 2.0.

Model: Gemma 2 (Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size",
arXiv:2408.00118), run by transformers' `Gemma2Model` (transformers 5.x,
`models/gemma2/modeling_gemma2.py`). Lumina-Image 2.0 (Alpha-VLLM/Lumina-Image-2.0 `sample.py`)
conditions on `hidden_states[-2]`: the output of the second-to-last decoder layer, without the final
norm. ComfyUI takes the same layer (`layer_idx=-2`, `layer_norm_hidden_state=False`).

Sources, told apart by their tensors and files, never by the file name:
- a Hugging Face folder: `config.json`, safetensors weights (sharded or not, keys with the `model.`
  prefix of `Gemma2ForCausalLM` or without it as saved by `Gemma2Model`), and `tokenizer.model` or
  `tokenizer.json` in the folder or in a sibling `tokenizer/` folder (diffusers pipeline layout; a
  pipeline root with `model_index.json` is followed to its `text_encoder/`);
- a single file such as ComfyUI's `gemma_2_2b_fp16.safetensors`, with the SentencePiece model stored
  as the uint8 tensor `spiece_model` (or tokenizer files next to it);
- an all-in-one checkpoint (ComfyUI's `lumina_2.safetensors`), of which only the tensors under
  `text_encoders.gemma2_2b.transformer.` and the tokenizer `text_encoders.spiece_model` are read.

The config comes from tensor shapes. head_dim (and the attention scale) cannot: it is taken from a
`config.json`, from a JSON config in the safetensors metadata under GEMMA2_CONFIG_METADATA_KEY, or
from the Gemma-2 release table below.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Protocol

import sentencepiece
import tokenizers
import torch
from transformers import Gemma2Config, Gemma2Model
from transformers.models.gemma2.modeling_gemma2 import Gemma2RotaryEmbedding

from ..conditioning import Conditioning
from ..errors import CheckpointError, InvalidInputError, UnsupportedModelError
from ..loading.files import Checkpoint, open_checkpoint, preview, read_json
from ..loading.modules import assign_tensors, build_on_meta
from .prompts import format_negative_prompt, format_prompt

# Safetensors metadata key holding a JSON object of Gemma2Config fields (config.json content).
GEMMA2_CONFIG_METADATA_KEY = "lumina_core.gemma2_config"

ALL_IN_ONE_PREFIX = "text_encoders.gemma2_2b.transformer."
ALL_IN_ONE_TOKENIZER_KEY = "text_encoders.spiece_model"
SINGLE_FILE_TOKENIZER_KEY = "spiece_model"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")

# Stored beside the weights but not part of Gemma2Model: the tokenizer bytes and the LM head, which
# Gemma-2 ties to the embedding and which text features do not use.
_NON_WEIGHT_KEYS = frozenset({SINGLE_FILE_TOKENIZER_KEY, "lm_head.weight"})

# Gemma's "<pad>" id. Padded positions are masked and zeroed, so it only has to be a valid id.
_PAD_ID = 0

# hidden size -> (head_dim, query_pre_attn_scalar) of the released Gemma-2 models (config.json of
# google/gemma-2-2b, -9b and -27b). Shapes only give heads * head_dim: 2B and 9B use head_dim 256 and
# scale attention by 1/sqrt(256), but 27B uses head_dim 128 and 1/sqrt(144) (hidden / heads).
_RELEASE_ATTENTION = {2304: (256, 256), 3584: (256, 256), 4608: (128, 144)}

# Constants shared by every Gemma-2 release (google/gemma-2-2b config.json; the Gemma 2 report).
# Written out rather than left to Gemma2Config defaults, so a transformers default change cannot
# alter the model. A config.json or metadata config overrides them.
_RELEASE_CONSTANTS = {
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
}

_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")

# Key patterns that tell model families apart, for detection and for saying what a wrong file holds.
_MARKERS = {
    "decoder": re.compile(r"(^|\.)layers\.0\.self_attn\.q_proj\.weight$"),
    "sandwich_norms": re.compile(r"(^|\.)layers\.0\.pre_feedforward_layernorm\.weight$"),
    "qk_norm": re.compile(r"(^|\.)layers\.0\.self_attn\.q_norm\.weight$"),
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
GEMMA2 = "a Gemma-2 text encoder"
_EXPECTED = (
    "Expected a Gemma-2 text encoder: ComfyUI's gemma_2_2b_fp16.safetensors, a Hugging Face google/gemma-2-2b "
    "folder, or an all-in-one Lumina 2 checkpoint with tensors under 'text_encoders.gemma2_2b.transformer.'."
)


def detect_family(keys: Iterable[str]) -> str:
    """Name the model family a set of tensor names belongs to, e.g. GEMMA2 or "a T5 encoder"."""
    keys = list(keys)
    found = {name for name, pattern in _MARKERS.items() if any(pattern.search(k) for k in keys)}
    if "decoder" in found:
        if "qk_norm" in found:
            return "a Gemma-3 text encoder (it has q_norm/k_norm)"
        if "sandwich_norms" in found:
            return GEMMA2
        return "a Gemma (v1) or Llama-style decoder (it has no pre/post-feedforward norms)"
    described = [_OTHER_FAMILIES[name] for name in sorted(found & _OTHER_FAMILIES.keys())]
    return " and ".join(described) or "no model this loader recognises"


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


class GemmaTextEncoder:
    """Gemma-2 text features for Lumina-Image 2.0: `hidden_states[-2]` of the formatted prompts."""

    def __init__(self, model: Gemma2Model, tokenizer: _Tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def to(self, device: torch.device | str) -> GemmaTextEncoder:
        self.model.to(device)
        return self

    def tokenize(self, texts: Sequence[str], max_length: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask for already formatted texts, as the original `sample.py` tokenizes.

        Each row is BOS + the pieces, no EOS, cut to `max_length` tokens (BOS included), right padded
        to the longest row. Returns ids (B, L) int64 and mask (B, L) bool, True on real tokens.
        """
        if not texts:
            raise InvalidInputError("nothing to encode: the list of prompts is empty.")
        if max_length < 1:
            raise InvalidInputError(f"max_length must be at least 1 (room for the BOS token); got {max_length}.")
        rows = [([self.tokenizer.bos_id] + self.tokenizer.encode(text))[:max_length] for text in texts]
        length = max(len(row) for row in rows)
        ids = torch.full((len(rows), length), _PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask

    @torch.no_grad()
    def encode(
        self,
        prompts: list[str] | str,
        system_prompt: str = "real",
        negative: bool = False,
        max_length: int = 256,
    ) -> Conditioning:
        """Encode prompts for the Lumina 2 transformer.

        prompts: one prompt or a list (the batch). system_prompt: a SYSTEM_PROMPTS name or custom text.
        negative: apply the negative-prompt rule (an empty prompt stays "" without the template).
        Returns embeds (B, L, hidden) float32, zero at padded positions, and mask (B, L) bool, with L
        the longest tokenized prompt (at most max_length). float32 whatever the model dtype, so the
        features do not depend on how the transformer is later cast.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        formatter = format_negative_prompt if negative else format_prompt
        ids, mask = self.tokenize([formatter(p, system_prompt) for p in prompts], max_length)
        ids, mask = ids.to(self.device), mask.to(self.device)
        output = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        # hidden_states = (embeddings, layer 0 out, ..., last layer out after the final norm)
        features = output.hidden_states[-2].float()
        features = torch.where(mask[..., None], features, 0.0)
        return Conditioning(features, mask)


def load_text_encoder(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> GemmaTextEncoder:
    """Load Gemma-2 and its tokenizer from a Hugging Face folder, a single file or an all-in-one checkpoint.

    dtype: the weights' dtype; None keeps the dtype of the stored embedding table.
    Raises CheckpointError (unreadable or incomplete files, no tokenizer) or UnsupportedModelError
    (a file that holds another model), naming the file, what was found and what was expected.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        weights, stored, tokenizer, where = _open_folder(path)
    else:
        weights, stored, tokenizer, where = _open_file(path)
    shapes = {k: weights.shape(k) for k in weights.keys}
    config = config_from_shapes(shapes, stored, where)
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer {tokenizer.source} has {tokenizer.vocab_size} tokens but the embedding in {where} has "
            f"{config.vocab_size} rows: tokenizer and weights come from different models."
        )
    model = _build_model(config, weights, shapes, torch.device(device), dtype, where)
    return GemmaTextEncoder(model, tokenizer)


def config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]], stored: Mapping[str, object] | None = None, where: str = "checkpoint"
) -> Gemma2Config:
    """A Gemma2Config whose dimensions come from tensor shapes (Gemma2Model key names).

    stored: fields from a config.json or the metadata config. They supply head_dim and the constants;
    a stored dimension that contradicts the shapes is an error.
    """
    stored = dict(stored or {})
    vocab_size, hidden_size = _shape_of(shapes, "embed_tokens.weight", where)
    head_dim, query_pre_attn_scalar = _attention_dims(hidden_size, stored, where)
    q_rows = _shape_of(shapes, "layers.0.self_attn.q_proj.weight", where)[0]
    kv_rows = _shape_of(shapes, "layers.0.self_attn.k_proj.weight", where)[0]
    if q_rows % head_dim or kv_rows % head_dim:
        raise CheckpointError(
            f"{where}: q_proj has {q_rows} rows and k_proj {kv_rows}, not multiples of head_dim {head_dim}. "
            f"Fix head_dim in config.json or in the metadata key '{GEMMA2_CONFIG_METADATA_KEY}'."
        )
    derived = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": _shape_of(shapes, "layers.0.mlp.gate_proj.weight", where)[0],
        "num_hidden_layers": 1 + max(int(m.group(1)) for k in shapes if (m := _LAYER_KEY.match(k))),
        "num_attention_heads": q_rows // head_dim,
        "num_key_value_heads": kv_rows // head_dim,
        "head_dim": head_dim,
    }
    conflicts = [f"{k}: config {stored[k]}, tensors {v}" for k, v in derived.items() if k in stored and stored[k] != v]
    if conflicts:
        raise CheckpointError(
            f"{where}: its config does not match its tensor shapes ({'; '.join(conflicts)}). "
            "The config belongs to another model size; remove or fix it."
        )
    fields = {**_RELEASE_CONSTANTS, "query_pre_attn_scalar": query_pre_attn_scalar, **stored, **derived}
    try:
        # eager is transformers' reference Gemma-2 attention: it applies the logit soft-capping. Gemma2
        # declares no SDPA support (SDPA cannot soft-cap), and flash/flex are not available everywhere.
        return Gemma2Config.from_dict({**fields, "use_cache": False}, attn_implementation="eager")
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{where}: the derived Gemma-2 config is invalid: {err}") from None


def config_metadata(config: Gemma2Config) -> dict[str, str]:
    """Safetensors metadata that lets `load_text_encoder` rebuild `config` without a config.json."""
    return {GEMMA2_CONFIG_METADATA_KEY: config.to_json_string(use_diff=False)}


def _attention_dims(hidden_size: int, stored: Mapping[str, object], where: str) -> tuple[int, int]:
    if "head_dim" in stored:
        head_dim = int(stored["head_dim"])
        return head_dim, int(stored.get("query_pre_attn_scalar", head_dim))
    if hidden_size not in _RELEASE_ATTENTION:
        raise CheckpointError(
            f"{where}: hidden size {hidden_size} is not a released Gemma-2 size ({sorted(_RELEASE_ATTENTION)}), so "
            "head_dim cannot be known from tensor shapes. Put the model's config.json next to the weights, or store "
            f"it as JSON under the safetensors metadata key '{GEMMA2_CONFIG_METADATA_KEY}'."
        )
    head_dim, query_pre_attn_scalar = _RELEASE_ATTENTION[hidden_size]
    return head_dim, int(stored.get("query_pre_attn_scalar", query_pre_attn_scalar))


def _shape_of(shapes: Mapping[str, tuple[int, ...]], key: str, where: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"{where}: the Gemma-2 tensor '{key}' is missing; the file is incomplete.")
    return shapes[key]


def _open_file(path: str) -> tuple[Checkpoint, dict | None, _Tokenizer, str]:
    checkpoint = open_checkpoint(path)
    stored = _metadata_config(checkpoint)
    if checkpoint.has_prefix(ALL_IN_ONE_PREFIX):
        where = f"{path} (tensors under '{ALL_IN_ONE_PREFIX}')"
        weights = _gemma2_weights(checkpoint.subset(ALL_IN_ONE_PREFIX), where)
        if ALL_IN_ONE_TOKENIZER_KEY not in checkpoint:
            raise CheckpointError(
                f"{path}: an all-in-one checkpoint without its tokenizer: expected the SentencePiece model as the "
                f"uint8 tensor '{ALL_IN_ONE_TOKENIZER_KEY}'."
            )
        return weights, stored, _tokenizer_from_tensor(checkpoint, ALL_IN_ONE_TOKENIZER_KEY), where
    weights = _gemma2_weights(checkpoint, checkpoint.describe())
    if SINGLE_FILE_TOKENIZER_KEY in checkpoint:
        tokenizer = _tokenizer_from_tensor(checkpoint, SINGLE_FILE_TOKENIZER_KEY)
    else:
        failure = (
            f"{path}: no tokenizer: expected the SentencePiece model as the uint8 tensor '{SINGLE_FILE_TOKENIZER_KEY}' "
            "in the file, as in ComfyUI's gemma_2_2b_fp16.safetensors"
        )
        tokenizer = _tokenizer_from_folders([os.path.dirname(os.path.abspath(path))], failure)
    return weights, stored, tokenizer, path


def _open_folder(path: str) -> tuple[Checkpoint, dict | None, _Tokenizer, str]:
    if os.path.isfile(os.path.join(path, "model_index.json")):
        path = os.path.join(path, "text_encoder")  # a diffusers pipeline root
    checkpoint = open_checkpoint(path)
    weights = _gemma2_weights(checkpoint, checkpoint.describe())
    config_path = os.path.join(path, "config.json")
    stored = read_json(config_path, "a Gemma-2 config.json") if os.path.isfile(config_path) else None
    sibling = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer")
    tokenizer = _tokenizer_from_folders([path, sibling], f"{path}: no tokenizer")
    return weights, stored, tokenizer, path


def _gemma2_weights(checkpoint: Checkpoint, where: str) -> Checkpoint:
    """The Gemma-2 tensors under Gemma2Model's names, with the `model.` prefix of Gemma2ForCausalLM removed."""
    family = detect_family(checkpoint.keys)
    if family != GEMMA2:
        raise UnsupportedModelError(f"{where} holds {family}, not a Gemma-2 text encoder. {_EXPECTED}")
    return checkpoint.subset("model.") if checkpoint.has_prefix("model.layers.") else checkpoint


def _metadata_config(checkpoint: Checkpoint) -> dict | None:
    text = checkpoint.metadata.get(GEMMA2_CONFIG_METADATA_KEY)
    if text is None:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{checkpoint.path}: metadata '{GEMMA2_CONFIG_METADATA_KEY}' is not JSON ({err})."
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{checkpoint.path}: metadata '{GEMMA2_CONFIG_METADATA_KEY}' must be a JSON object.")
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
    config: Gemma2Config,
    weights: Checkpoint,
    shapes: Mapping[str, tuple[int, ...]],
    device: torch.device,
    dtype: torch.dtype | None,
    where: str,
) -> Gemma2Model:
    model = build_on_meta(partial(Gemma2Model, config))
    weight_shapes = {k: v for k, v in shapes.items() if k not in _NON_WEIGHT_KEYS}
    source = (
        f"{where} ({GEMMA2}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, {config.num_key_value_heads} KV heads, head_dim {config.head_dim})"
    )
    readers = {k: partial(weights.load, k) for k in weight_shapes}
    dtype = dtype or weights.dtype("embed_tokens.weight")
    assign_tensors(model, readers, weight_shapes, source, dtype, device)
    _materialise_buffers(model, config, device)
    return model


def _materialise_buffers(model: Gemma2Model, config: Gemma2Config, device: torch.device) -> None:
    # Non-persistent buffers (RoPE frequencies, the sqrt(hidden) embedding scale) are not stored in
    # checkpoints, so the meta build left them without data; rebuild them as Gemma2Model.__init__ does.
    model.rotary_emb = Gemma2RotaryEmbedding(config).to(device)
    model.embed_tokens.embed_scale = torch.tensor(config.hidden_size**0.5, device=device)
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise RuntimeError(
            f"Gemma2Model has tensors this loader does not fill (a transformers change?): {preview(left)}"
        )
