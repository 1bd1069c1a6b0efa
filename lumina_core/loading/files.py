"""Lazy, read-only access to the tensors of a checkpoint, whatever container holds them.

A `Checkpoint` lists keys and shapes without reading tensor data, and reads one tensor at a time, so
a loader can take its own part out of an all-in-one file (transformer + text encoder + VAE) without
touching the rest, and never holds a second full copy of the weights.

Containers: `.safetensors` (memory-mapped by the safetensors library), a folder of safetensors shards
(diffusers layout, with or without an `*.index.json`), and pickled `.pth/.pt/.bin/.ckpt` files read
with `torch.load(weights_only=True, mmap=True)`, which refuses anything but tensors and plain
containers.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError, UnsupportedModelError

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
GGUF_MAGIC = b"GGUF"


class _TensorReader(Protocol):
    def shape(self, key: str) -> tuple[int, ...]: ...
    def dtype(self, key: str) -> torch.dtype: ...
    def load(self, key: str) -> torch.Tensor: ...


class _SafetensorsReader:
    def __init__(self, path: str):
        self.path = path
        try:
            self.handle = safe_open(path, framework="pt", device="cpu")
        except SafetensorError as err:
            raise CheckpointError(_describe_unreadable(path, f"safetensors header unreadable ({err})")) from None
        self.metadata = self.handle.metadata() or {}

    def keys(self) -> list[str]:
        return list(self.handle.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.handle.get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        return SAFETENSORS_DTYPES[self.handle.get_slice(key).get_dtype()]

    def load(self, key: str) -> torch.Tensor:
        return self.handle.get_tensor(key)


class _PickleReader:
    def __init__(self, path: str):
        self.path = path
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"{path}: refusing to unpickle it: it holds Python objects besides tensors "
                f"(torch.load with weights_only=True said: {str(err).splitlines()[0]}). "
                "Convert it to .safetensors, or load only the tensor file (e.g. consolidated.00-of-01.pth, "
                "not model_args.pth)."
            ) from None
        except (RuntimeError, EOFError, OSError) as err:
            raise CheckpointError(_describe_unreadable(path, f"torch.load failed: {err}")) from None
        self.tensors = _flatten_pickled(path, loaded)
        self.metadata: dict[str, str] = {}

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].dtype

    def load(self, key: str) -> torch.Tensor:
        return self.tensors[key]


def _flatten_pickled(path: str, loaded: object) -> dict[str, torch.Tensor]:
    # Training scripts wrap the weights as {"model": sd}, {"state_dict": sd} or {"module": sd}.
    for wrapper in ("state_dict", "model", "module", "ema"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path}: expected a dictionary of tensors, found {type(loaded).__name__}.")
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: the pickle holds no tensors (keys: {preview(loaded)}).")
    return tensors


def _describe_unreadable(path: str, reason: str) -> str:
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(GGUF_MAGIC):
        kind = "a GGUF file"
    elif head[:1] in (b"{", b"#", b"<") or all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64]):
        kind = "a text file, not a checkpoint"
    else:
        kind = "not a complete checkpoint (a truncated or interrupted download?)"
    return f"{path} ({size} bytes) is {kind}: {reason}. Expected a .safetensors or .pth checkpoint."


def preview(names: Iterable[object], limit: int = 5) -> str:
    names = [str(n) for n in names]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


@dataclass(frozen=True)
class _Entry:
    reader: _TensorReader
    key: str


class Checkpoint:
    """Keys, shapes and lazily read tensors of one checkpoint (one file or one folder of shards).

    `keys` are the names as stored, or with `prefix` removed for a view made by `subset`.
    """

    def __init__(self, path: str, entries: dict[str, _Entry], metadata: dict[str, str]):
        self.path = path
        self._entries = entries
        self.metadata = metadata

    @property
    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        entry = self._entries[key]
        return entry.reader.shape(entry.key)

    def dtype(self, key: str) -> torch.dtype:
        """The stored dtype, read from the header without loading the tensor."""
        entry = self._entries[key]
        return entry.reader.dtype(entry.key)

    def load(self, key: str) -> torch.Tensor:
        entry = self._entries[key]
        return entry.reader.load(entry.key)

    def subset(self, prefix: str) -> Checkpoint:
        """The tensors whose names start with `prefix`, renamed without it."""
        entries = {k[len(prefix) :]: e for k, e in self._entries.items() if k.startswith(prefix)}
        return Checkpoint(self.path, entries, self.metadata)

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self._entries)

    def describe(self) -> str:
        """A short summary for error messages: the file and a few of its key names."""
        return f"{self.path} ({len(self)} tensors, e.g. {preview(sorted(self.keys))})"


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint file or a folder of safetensors shards without reading tensor data."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or folder.")
    if os.path.isdir(path):
        return _open_folder(path)
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish.")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(GGUF_MAGIC):
        raise UnsupportedModelError(f"{path} is a GGUF file: this loader reads .safetensors and .pth files.")
    if path.lower().endswith(PICKLE_SUFFIXES) or head.startswith(b"PK\x03\x04"):
        reader: _SafetensorsReader | _PickleReader = _PickleReader(path)
    else:
        reader = _SafetensorsReader(path)
    entries = {k: _Entry(reader, k) for k in reader.keys()}
    return Checkpoint(path, entries, reader.metadata)


def _open_folder(path: str) -> Checkpoint:
    shard_names = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    index_names = [n for n in os.listdir(path) if n.endswith(".safetensors.index.json")]
    if index_names:
        with open(os.path.join(path, index_names[0])) as handle:
            weight_map = json.load(handle)["weight_map"]
        missing = sorted({s for s in weight_map.values() if not os.path.exists(os.path.join(path, s))})
        if missing:
            raise CheckpointError(f"{path}: {index_names[0]} lists shards that are missing: {preview(missing)}.")
        shard_names = sorted(set(weight_map.values()))
    if not shard_names:
        raise CheckpointError(f"{path}: a folder with no .safetensors files (found: {preview(os.listdir(path))}).")
    # diffusers folders may hold precision variants beside the weights (name.fp16.safetensors): never mix them.
    plain = [n for n in shard_names if "." not in n[: -len(".safetensors")]]
    if plain:
        shard_names = plain
    elif len(shard_names) > 1 and not index_names:
        raise CheckpointError(f"{path}: several weight variants and no index to choose: {preview(shard_names)}.")
    entries: dict[str, _Entry] = {}
    for name in shard_names:
        reader = _SafetensorsReader(os.path.join(path, name))
        entries.update({k: _Entry(reader, k) for k in reader.keys()})
    return Checkpoint(path, entries, {})
