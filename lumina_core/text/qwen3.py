"""Qwen3-4B, Z-Image's text encoder: the second-to-last hidden state of transformers' `Qwen3Model`.

Model: Qwen3 (Qwen Team, "Qwen3 Technical Report", arXiv:2505.09388), a decoder with per-head RMS q/k norms,
run by transformers' `Qwen3Model` (`models/qwen3/modeling_qwen3.py`). Z-Image conditions on `hidden_states[-2]`,
the output of the second-to-last decoder layer without the final norm (diffusers `ZImagePipeline.encode_prompt`;
ComfyUI `comfy/text_encoders/z_image.py` takes the same layer, `layer_idx=-2`).

Prompts, as `ZImagePipeline.encode_prompt` makes them: the prompt as the one user message of Qwen3's chat
template with the generation prompt and thinking enabled, which renders as
"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n" (Qwen3's template adds an empty think block only
when thinking is disabled; ComfyUI's Z-Image tokenizer writes the same string). No BOS (Qwen adds none), at most
512 tokens: a longer prompt loses its end, template tail included, as the pipeline's truncation does, with a
warning. Rows are right padded to the longest (the pipeline pads to 512; padding is masked out of the causal
attention and dropped, so only the length differs). An empty negative prompt is the template around "".

Sources:
- a Hugging Face folder (Qwen/Qwen3-4B, or the `text_encoder/` + `tokenizer/` of a diffusers Z-Image pipeline,
  whose root with `model_index.json` is followed): `config.json`, safetensors weights (sharded or not, as
  `Qwen3ForCausalLM` with `model.` and `lm_head` or as `Qwen3Model`), and the tokenizer (`tokenizer.json`, or
  `vocab.json` + `merges.txt`) in the folder or a sibling `tokenizer/`;
- a single file such as ComfyUI's `qwen_3_4b.safetensors` (also fp8 and scaled fp8, computed in bf16), under any
  prefix (an all-in-one file's `text_encoders.qwen3_4b.transformer.`). Single files carry no tokenizer: it comes
  from `tokenizer=`, files beside the weights, or `tokenizer_dirs` (in ComfyUI, the Qwen tokenizer it ships in
  `comfy/text_encoders/qwen25_tokenizer/`, which its own Z-Image encoder uses);
- a llama.cpp GGUF (`general.architecture` "qwen3"), its tokenizer rebuilt from the file's metadata.

The config comes from tensor shapes (head_dim from the q-norm width); what shapes cannot tell (RoPE theta, norm
eps) from a config.json, else Qwen3's released values. Qwen3 sizes other than 4B are refused by name: their
features are not Z-Image's (e.g. Qwen3-8B is FLUX.2 [klein] 9B's encoder).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import tokenizers
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, Qwen2Tokenizer, Qwen3Config, Qwen3Model
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from ..common.ops import FP8_DTYPES, adopt_operations
from ..conditioning import Conditioning
from ..errors import CheckpointError, InvalidInputError, UnsupportedModelError
from ..gguf.reader import read_metadata
from ..gguf.text import byte_level_bpe
from ..loading.files import Checkpoint, is_gguf, open_checkpoint, preview, read_json
from ..loading.modules import assign_tensors, build_with_precision
from .encoder import (
    PromptTokenizer,
    TextEncoder,
    check_stored,
    decoder_dimensions,
    resolve_tokenizer,
    right_padded,
    shape_of,
)
from .prompts import resolve_system_prompt
from .truncation import warn_cut

FAMILY = "zimage"
TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
MAX_TOKENS = 512  # ZImagePipeline's max_sequence_length
ZIMAGE_WIDTH = 2560  # Qwen3-4B's hidden size, the caption features Z-Image was trained on
# Hidden sizes of the released Qwen3 models, to name a file of another size.
RELEASED_WIDTHS = {1024: "Qwen3-0.6B", 2048: "Qwen3-1.7B", 2560: "Qwen3-4B", 4096: "Qwen3-8B",
                   5120: "Qwen3-14B or Qwen3-32B"}  # fmt: skip
# Qwen3-4B's config.json, for what shapes cannot tell; a config.json beside the weights overrides them.
QWEN3_DEFAULTS = {
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 40960,
    "hidden_act": "silu",
    "attention_bias": False,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
}
# transformers' default for Qwen3 (what ZImagePipeline's from_pretrained picks).
ATTN_IMPLEMENTATION = "sdpa"
_CHAT_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")

# The marker of a Qwen3 decoder stack: per-head q norms, which Gemma (v1, 2) lacks; Gemma-3 has them too but
# also Gemma's pre-feedforward norm. A file's root prefix is whatever precedes it.
MARKER = "layers.0.self_attn.q_norm.weight"
_GEMMA3_NORM = "layers.0.pre_feedforward_layernorm.weight"
_UNUSED = ("lm_head.weight",)  # the LM head (tied to the embedding in Qwen3-4B), not used for features

_EXPECTED = (
    "Expected Qwen3-4B for Z-Image: ComfyUI's qwen_3_4b.safetensors, a Hugging Face Qwen/Qwen3-4B folder or the "
    "text_encoder/ of a diffusers Z-Image pipeline, or a llama.cpp Qwen3-4B GGUF."
)
_TOKENIZER_HELP = (
    "Pass tokenizer= a Qwen tokenizer folder or tokenizer.json (the tokenizer/ folder of Tongyi-MAI/Z-Image-Turbo, "
    "or Qwen/Qwen3-4B's); inside ComfyUI the loader also looks in the Qwen tokenizer ComfyUI ships "
    "(comfy/text_encoders/qwen25_tokenizer)."
)


def qwen3_roots(keys: Iterable[str]) -> list[str]:
    """The prefixes under which a set of tensor names holds a Qwen3 decoder stack (empty: none)."""
    keys = set(keys)
    roots = {k[: -len(MARKER)] for k in keys if k.endswith(MARKER) and (k == MARKER or k[: -len(MARKER)][-1] == ".")}
    return sorted(r for r in roots if r + _GEMMA3_NORM not in keys)


def is_qwen3(keys: Iterable[str]) -> bool:
    return bool(qwen3_roots(keys))


def find_qwen_tokenizer(directories: Iterable[str | os.PathLike]) -> str | None:
    """The first of `directories` holding a Qwen tokenizer (`tokenizer.json`, or `vocab.json` + `merges.txt`)."""
    for directory in map(os.fspath, directories):
        if os.path.isfile(os.path.join(directory, "tokenizer.json")) or all(
            os.path.isfile(os.path.join(directory, name)) for name in ("vocab.json", "merges.txt")
        ):
            return directory
    return None


class QwenPromptTokenizer(PromptTokenizer):
    """Qwen's byte-level BPE tokenizer, called as the Z-Image pipeline calls it (no special tokens added).

    backend: a transformers tokenizer (Qwen2Tokenizer) or a `tokenizers.Tokenizer` (e.g. rebuilt from a GGUF).
    """

    add_special_tokens = False

    def __init__(self, backend: PreTrainedTokenizerBase | tokenizers.Tokenizer, source: str):
        super().__init__(backend, source)
        missing = [token for token in _CHAT_TOKENS if token not in self.vocab]
        if missing or len(self.encode(_CHAT_TOKENS[0])) != 1:
            raise CheckpointError(
                f"{source} is not a Qwen tokenizer: it lacks the chat tokens {', '.join(missing or _CHAT_TOKENS[:1])} "
                "as single tokens. " + _TOKENIZER_HELP
            )
        self.pad_id = self.vocab["<|endoftext|>"]  # Qwen's pad token; padded positions are masked out anyway

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> QwenPromptTokenizer:
        """A folder with tokenizer.json or vocab.json + merges.txt, or a tokenizer.json file."""
        path = os.fspath(path)
        try:
            if os.path.isdir(path):
                if find_qwen_tokenizer([path]) is None:
                    missing = f"{path}: no tokenizer.json, nor vocab.json with merges.txt. "
                    raise CheckpointError(missing + _TOKENIZER_HELP)
                return cls(Qwen2Tokenizer.from_pretrained(path, local_files_only=True), path)
            if path.endswith(".json") and os.path.isfile(path):
                return cls(tokenizers.Tokenizer.from_file(path), path)
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - transformers and tokenizers raise many types on bad files
            raise CheckpointError(f"{path} is not a readable Qwen tokenizer ({type(err).__name__}: {err}).") from None
        raise CheckpointError(f"{path}: no such tokenizer folder or tokenizer.json. " + _TOKENIZER_HELP)


class Qwen3TextEncoder(TextEncoder):
    """Text features for Z-Image: Qwen3's `hidden_states[-2]` of the chat-templated prompts, as a `Conditioning`."""

    family = FAMILY
    max_tokens = MAX_TOKENS  # the longest prompt it encodes (hosts size their memory by it)

    def __init__(self, model: Qwen3Model, tokenizer: QwenPromptTokenizer):
        super().__init__(model, tokenizer, "Qwen3")

    def format_prompts(self, prompts: Sequence[str], system_prompt: str | None = None) -> list[str]:
        """Each prompt in Qwen3's chat template (see the module docstring). Z-Image was trained without a system
        prompt, so naming one is an error."""
        if system_prompt is not None and resolve_system_prompt(system_prompt).strip():
            raise InvalidInputError(
                f"the Qwen3 text encoder serves Z-Image, which was trained without a system prompt; got "
                f"system_prompt {system_prompt!r}. Pass none (the Lumina 2 presets do not apply)."
            )
        return [TEMPLATE.format(prompt) for prompt in prompts]

    def tokenize(self, texts: Sequence[str], max_length: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids (B, L) int64 and mask (B, L) bool of formatted texts: each cut to max_length tokens (with a warning),
        right padded to the longest row."""
        if not texts:
            raise InvalidInputError("nothing to encode: the list of prompts is empty.")
        if not 1 <= max_length <= MAX_TOKENS:
            raise InvalidInputError(f"max_length must be between 1 and {MAX_TOKENS} (Z-Image's); got {max_length}.")
        rows = [self.tokenizer.encode(text) for text in texts]
        for index, row in enumerate(rows):
            if len(row) > max_length:
                dropped = self.tokenizer.decode(row[max_length:])
                warn_cut("Qwen3", index, len(row), max_length, dropped, hint=f" to fit max_length={max_length}")
        rows = [row[:max_length] for row in rows]
        return right_padded(rows, self.tokenizer.pad_id, max(len(row) for row in rows))

    @torch.no_grad()
    def encode(
        self,
        prompts: list[str] | str,
        system_prompt: str | None = None,
        negative: bool = False,
        max_length: int = MAX_TOKENS,
        device: torch.device | str | None = None,
    ) -> Conditioning:
        """Encode prompts for Z-Image, on `device` (None: where the weights are): embeds (B, L, hidden) float32,
        zero at padded positions, mask (B, L) bool.

        negative has no effect (an empty negative prompt is templated like any other); it is accepted so that
        every text encoder of the package is called alike.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids, mask = self.tokenize(self.format_prompts(prompts, system_prompt), max_length)
        device = self.device if device is None else torch.device(device)
        ids, mask = ids.to(device), mask.to(device)
        output = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        # hidden_states = (embeddings, layer 0 out, ..., last layer out after the final norm)
        features = torch.where(mask[..., None], output.hidden_states[-2].float(), 0.0)
        return Conditioning(features, mask, self.family)


@dataclass(frozen=True)
class _Weights:
    checkpoint: Checkpoint
    root: str  # the prefix before `layers.`
    where: str  # for messages

    def names(self) -> dict[str, str]:
        """Qwen3Model name -> stored key, for every tensor the model uses."""
        root, keys = self.root, self.checkpoint.keys
        names = {k[len(root) :]: k for k in keys if k.startswith(root)}
        return {name: key for name, key in names.items() if name not in _UNUSED and "." in name}


def load_qwen3_text_encoder(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    tokenizer: str | os.PathLike | QwenPromptTokenizer | PreTrainedTokenizerBase | tokenizers.Tokenizer | None = None,
    tokenizer_dirs: Sequence[str | os.PathLike] = (),
    *,
    compute_dtype: torch.dtype | None = None,
    operations=None,
) -> Qwen3TextEncoder:
    """Load Qwen3-4B and its tokenizer from a folder, a single file or a GGUF (see the module docstring).

    dtype: the storage dtype of the Linear weights; None keeps them as stored (fp8 stays fp8; GGUF: float32).
    compute_dtype: None is dtype, else bf16 for an fp8 file, else the stored embedding's dtype. operations as for
    `load_transformer`: transformers builds the model, then its layers become the operations' (see
    `lumina_core.common.ops.adopt_operations`).
    tokenizer: a folder, a tokenizer.json, or a built tokenizer; None takes a GGUF's own, else looks beside the
    weights (the folder, a sibling `tokenizer/`), then in `tokenizer_dirs`.
    Raises CheckpointError (unreadable or incomplete files, no tokenizer) or UnsupportedModelError (another model
    or another Qwen3 size), naming the file, what was found and what was expected.
    """
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "model_index.json")):
        path = os.path.join(path, "text_encoder")  # a diffusers pipeline root
    checkpoint = open_checkpoint(path)
    weights = _qwen3_weights(checkpoint)
    embedding = weights.names().get("embed_tokens.weight")
    if embedding is not None:  # before looking for a tokenizer: a file of another size fails on that first
        check_zimage_width(checkpoint.shape(embedding)[1], weights.where)
    config_path = os.path.join(path, "config.json")
    has_config = os.path.isdir(path) and os.path.isfile(config_path)
    stored = read_json(config_path, "a Qwen3 config.json") if has_config else {}
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if tokenizer is None and is_gguf(path):
        tokenizer = _gguf_tokenizer(path)
    nearby = [folder, os.path.join(os.path.dirname(folder), "tokenizer")]
    qwen_tokenizer = _resolve_tokenizer(tokenizer, [*nearby, *map(os.fspath, tokenizer_dirs)], path)
    if dtype is None and is_gguf(path):  # GGUF files mix stored types; float32 holds every one exactly
        dtype = torch.float32
    model = _build_model(weights, stored, dtype, compute_dtype, operations, torch.device(device))
    return Qwen3TextEncoder(model, qwen_tokenizer)


def config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]], stored: Mapping[str, object] | None = None, where: str = "checkpoint"
) -> Qwen3Config:
    """A Qwen3Config whose dimensions come from tensor shapes (Qwen3Model names); `stored` (config.json fields)
    supplies the rest, and a stored dimension that contradicts the tensors is an error."""
    stored = dict(stored or {})
    if stored.get("model_type", "qwen3") != "qwen3":
        raise CheckpointError(
            f"{where}: its config says model_type '{stored['model_type']}' but the tensors are a Qwen3 decoder. The "
            "config belongs to another model; remove or fix it."
        )
    head_dim = shape_of(shapes, "layers.0.self_attn.q_norm.weight", where, "Qwen3")[0]
    derived = decoder_dimensions(shapes, head_dim, where, "Qwen3", " (head_dim is the q-norm width.)")
    check_stored(derived, stored, where)
    fields = {**QWEN3_DEFAULTS, **stored, **derived, "use_cache": False}
    try:
        return Qwen3Config.from_dict(fields, attn_implementation=ATTN_IMPLEMENTATION)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{where}: the derived Qwen3 config is invalid: {err}") from None


def check_zimage_width(hidden_size: int, where: str) -> None:
    """Refuse a released Qwen3 of another size: its features are not the 2560-wide ones Z-Image takes."""
    name = RELEASED_WIDTHS.get(hidden_size)
    if hidden_size != ZIMAGE_WIDTH and name is not None:
        raise UnsupportedModelError(
            f"{where} holds {name} (hidden size {hidden_size}), not Qwen3-4B: Z-Image takes Qwen3-4B's {ZIMAGE_WIDTH}"
            f"-wide features. {_EXPECTED}"
        )


def _qwen3_weights(checkpoint: Checkpoint) -> _Weights:
    keys = checkpoint.keys
    roots = qwen3_roots(keys)
    where = checkpoint.describe()
    if not roots:
        from .gemma import describe_keys  # the family names this package can tell apart

        raise UnsupportedModelError(f"{where} holds {describe_keys(keys)}, not a Qwen3 text encoder. {_EXPECTED}")
    if len(roots) > 1:
        raise CheckpointError(f"{where}: several Qwen3 decoders, under {preview(repr(r) for r in roots)}.")
    root = roots[0]
    return _Weights(checkpoint, root, f"{checkpoint.path} (Qwen3 tensors under '{root}')" if root else where)


def _gguf_tokenizer(path: str) -> QwenPromptTokenizer | None:
    metadata = read_metadata(path)
    if "tokenizer.ggml.tokens" not in metadata:
        return None
    return QwenPromptTokenizer(byte_level_bpe(metadata, path), f"{path} (tokenizer.ggml.*)")


def _resolve_tokenizer(
    tokenizer: str | os.PathLike | QwenPromptTokenizer | PreTrainedTokenizerBase | tokenizers.Tokenizer | None,
    search: list[str],
    path: str,
) -> QwenPromptTokenizer:
    failure = f"{path}: no Qwen tokenizer found; looked for tokenizer.json, or vocab.json with merges.txt,"
    return resolve_tokenizer(tokenizer, QwenPromptTokenizer, find_qwen_tokenizer, search, failure, _TOKENIZER_HELP)


def _build_model(
    weights: _Weights,
    stored: Mapping[str, object],
    dtype: torch.dtype | None,
    compute_dtype: torch.dtype | None,
    operations,
    device: torch.device,
) -> Qwen3Model:
    names = weights.names()
    checkpoint = weights.checkpoint
    shapes = {name: checkpoint.shape(key) for name, key in names.items()}
    dtypes = {name: checkpoint.dtype(key) for name, key in names.items()}
    config = config_from_shapes(shapes, stored, weights.where)
    if compute_dtype is None and dtype is None:
        fp8 = any(d in FP8_DTYPES for d in dtypes.values())
        compute_dtype = torch.bfloat16 if fp8 else dtypes["embed_tokens.weight"]

    def build(layers) -> nn.Module:
        return adopt_operations(Qwen3Model(config), layers)

    model, precision = build_with_precision(build, dtypes, dtype, compute_dtype, operations)
    described = (
        f"{weights.where} (a Qwen3 decoder, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, {config.num_key_value_heads} KV heads, head_dim {config.head_dim})"
    )
    readers = {name: partial(checkpoint.load, key) for name, key in names.items()}
    assign_tensors(model, readers, shapes, described, precision, device)
    # The RoPE frequencies are non-persistent buffers, absent from checkpoints: rebuild them as Qwen3Model does.
    model.rotary_emb = Qwen3RotaryEmbedding(config).to(device)
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise RuntimeError(
            f"Qwen3Model has tensors this loader does not fill (a transformers change?): {preview(left)}"
        )
    return model
