"""What the text encoders (Gemma, Qwen3, T5) share: a transformers model with its tokenizer, tokenizer backends,
right-padded id batches, and the checks of a config derived from tensor shapes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial

import tokenizers
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..common.ops import default_compute_dtype, default_device
from ..errors import CheckpointError, InvalidInputError


class PromptTokenizer:
    """A tokenizer as a diffusion pipeline calls it, over a transformers tokenizer or a `tokenizers.Tokenizer`.

    Subclasses check in `__init__` that the vocabulary is their model's. `add_special_tokens`: whether the
    backend's own special tokens (T5's `</s>`) are added to every text.
    """

    add_special_tokens = True

    def __init__(self, backend: PreTrainedTokenizerBase | tokenizers.Tokenizer, source: str):
        self.source = source
        special = self.add_special_tokens
        if isinstance(backend, tokenizers.Tokenizer):
            self._encode: Callable[[str], list[int]] = lambda text: backend.encode(text, add_special_tokens=special).ids
            self._decode: Callable[[list[int]], str] = backend.decode
            self.vocab, self.vocab_size = backend.get_vocab(with_added_tokens=True), backend.get_vocab_size(True)
        elif isinstance(backend, PreTrainedTokenizerBase):
            self._encode = lambda text: backend(text, add_special_tokens=special)["input_ids"]
            self._decode = partial(backend.decode, skip_special_tokens=False)
            self.vocab, self.vocab_size = backend.get_vocab(), len(backend)
        else:
            raise InvalidInputError(
                f"{source}: expected a transformers tokenizer or a tokenizers.Tokenizer, got {type(backend).__name__}."
            )

    def encode(self, text: str) -> list[int]:
        return self._encode(text)

    def decode(self, ids: list[int]) -> str:
        return self._decode(ids)


def resolve_tokenizer(
    tokenizer: str | os.PathLike | PromptTokenizer | PreTrainedTokenizerBase | tokenizers.Tokenizer | None,
    kind: type[PromptTokenizer],
    find: Callable[[Iterable[str]], str | None],
    search: list[str],
    failure: str,
    help_text: str,
) -> PromptTokenizer:
    """A `kind` tokenizer from what a loader was given: one already built, a backend, a path (`kind.from_path`), or
    None, which takes the first folder of `search` that `find` accepts and that holds a tokenizer of this kind (a
    folder may hold another model's, such as ComfyUI's bundled tokenizers side by side); failure starts the error
    when none does, help_text ends it."""
    if isinstance(tokenizer, kind):
        return tokenizer
    if isinstance(tokenizer, PreTrainedTokenizerBase | tokenizers.Tokenizer):
        return kind(tokenizer, f"the {type(tokenizer).__name__} passed as tokenizer=")
    if tokenizer is not None:
        return kind.from_path(tokenizer)
    rejected = []
    for folder in dict.fromkeys(search):
        if find([folder]) is None:
            continue
        try:
            return kind.from_path(folder)
        except CheckpointError as err:
            rejected.append(str(err))
    seen = f" ({rejected[0]})" if rejected else ""
    raise CheckpointError(f"{failure} in {', '.join(dict.fromkeys(search))}{seen}. {help_text}")


class TextEncoder:
    """A transformers text model and its tokenizer; subclasses add the prompt format and `encode`.

    The tokenizer may not have more tokens than the model's embedding rows (a sign of parts of two models).
    """

    family = ""

    def __init__(self, model: nn.Module, tokenizer, model_name: str):
        vocab_size = model.get_input_embeddings().weight.shape[0]
        if tokenizer.vocab_size > vocab_size:
            raise CheckpointError(
                f"the tokenizer {tokenizer.source} has {tokenizer.vocab_size} tokens but the {model_name} embedding "
                f"has {vocab_size} rows: tokenizer and weights come from different models."
            )
        self.model = model
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        """Where encode runs unless told otherwise: where the weights are."""
        return default_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (the loader's choice; the embedding table is stored in it)."""
        return default_compute_dtype(self.model)

    def to(self, device: torch.device | str) -> TextEncoder:
        self.model.to(device)
        return self


def right_padded(rows: Sequence[Sequence[int]], pad_id: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows as ids (B, length) int64, right padded with pad_id, and mask (B, length) bool."""
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask


def shape_of(shapes: Mapping[str, tuple[int, ...]], key: str, where: str, model_name: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"{where}: the {model_name} tensor '{key}' is missing; the file is incomplete.")
    return shapes[key]


def check_stored(derived: Mapping[str, object], stored: Mapping[str, object], where: str) -> None:
    """Raise when a stored config (config.json, metadata) states a dimension the tensor shapes contradict."""
    conflicts = [f"{k}: config {stored[k]}, tensors {v}" for k, v in derived.items() if k in stored and stored[k] != v]
    if conflicts:
        raise CheckpointError(
            f"{where}: its config does not match its tensor shapes ({'; '.join(conflicts)}). "
            "The config belongs to another model size; remove or fix it."
        )


def decoder_dimensions(
    shapes: Mapping[str, tuple[int, ...]], head_dim: int, where: str, model_name: str, fix: str = ""
) -> dict[str, int]:
    """The config fields a decoder-only model's tensors state (transformers' `*Model` names: Gemma, Qwen3), given its
    head_dim; `fix` ends the error when q/k rows are not whole heads."""
    vocab_size, hidden_size = shape_of(shapes, "embed_tokens.weight", where, model_name)
    q_rows = shape_of(shapes, "layers.0.self_attn.q_proj.weight", where, model_name)[0]
    kv_rows = shape_of(shapes, "layers.0.self_attn.k_proj.weight", where, model_name)[0]
    if q_rows % head_dim or kv_rows % head_dim:
        raise CheckpointError(
            f"{where}: q_proj has {q_rows} rows and k_proj {kv_rows}, not multiples of head_dim {head_dim}.{fix}"
        )
    layers = {int(k.split(".")[1]) for k in shapes if k.startswith("layers.")}
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": shape_of(shapes, "layers.0.mlp.gate_proj.weight", where, model_name)[0],
        "num_hidden_layers": 1 + max(layers),
        "num_attention_heads": q_rows // head_dim,
        "num_key_value_heads": kv_rows // head_dim,
        "head_dim": head_dim,
    }
