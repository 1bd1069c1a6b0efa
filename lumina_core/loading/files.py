"""Lazy, read-only access to the tensors of a checkpoint, whatever container holds them.

A `Checkpoint` lists keys and shapes without reading tensor data, and reads one tensor at a time, so
a loader can take its own part out of an all-in-one file (transformer + text encoder + VAE) without
touching the rest, and never holds a second full copy of the weights.

Containers, told apart by their first bytes, never by the file name: safetensors (memory-mapped by the
safetensors library), `torch.save` zip archives (`torch.load(weights_only=True, mmap=True)`), legacy
`torch.save` pickles (the same without mmap, which they do not support), and a folder of safetensors
shards (diffusers layout, with or without an `*.index.json`). `weights_only=True` refuses anything but
tensors and plain containers. GGUF files (memory-mapped by `lumina_core.gguf.reader`) give their block-quantized
tensors as `QuantizedTensor`s, still packed; `assign_tensors` decides what stays packed.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError
from ..gguf.reader import GGUFTensors

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
GGUF_MAGIC = b"GGUF"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format since torch 1.6
# Legacy torch.save files open with the pickled long 0x1950a86a20f9469cfc6c (torch.serialization's magic
# number): the LONG1 opcode, its 10-byte length, then the number, after the protocol header.
LEGACY_TORCH_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


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
    """A `torch.save` file; `mmap` only for the zip format, the legacy format cannot be memory-mapped."""

    def __init__(self, path: str, mmap: bool):
        self.path = path
        try:
            loaded = _torch_load(path, mmap)
        except pickle.UnpicklingError as err:
            raise CheckpointError(_describe_refused(path, err)) from None
        except Exception as err:  # a damaged file fails in many ways: EOFError, IndexError, struct.error ...
            reason = f"torch.load failed: {str(err) or type(err).__name__}"
            raise CheckpointError(_describe_unreadable(path, reason)) from None
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


def _torch_load(path: str, mmap: bool) -> object:
    if path.endswith(".safetensors"):
        # torch.load hands a path with this name to safetensors whatever it holds; a file object it reads itself.
        with open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _describe_refused(path: str, err: pickle.UnpicklingError) -> str:
    """Why the safe loader refused a torch.save file: the first Python object in it that is not a tensor, found by
    reading its pickle opcodes (nothing is executed), or else a damaged file."""
    offending = _first_offending_global(_torch_pickle_streams(path))
    if offending is not None:
        return (
            f"{path}: refusing to unpickle it: it holds Python objects that are not tensors (the first is "
            f"{offending}), and loading those can run code. Convert it to .safetensors where it was made, or load "
            "only the tensor file (e.g. consolidated.00-of-01.pth, not model_args.pth)."
        )
    reason = str(err).splitlines()[0].split(". ")[0] or type(err).__name__  # torch's first sentence, not its advice
    return (
        f"{path}: torch.load with weights_only=True cannot read it ({reason}): the file is damaged, or pickled "
        "with a protocol the safe loader does not know. Re-save it with torch.save(state_dict, path) or convert "
        "it to .safetensors."
    )


def _describe_plain_pickle(path: str) -> str:
    """A file pickled with `pickle.dump` rather than `torch.save`: never unpickled, described from its opcodes."""
    with open(path, "rb") as handle:
        offending = _first_offending_global([handle.read()])
    holds = (
        f"it holds Python objects that are not tensors (the first is {offending}), and loading those can run code"
        if offending is not None
        else "it holds plain Python values and no tensors"
    )
    return (
        f"{path} is a Python pickle (pickle.dump), not a torch.save checkpoint: {holds}. Refusing to load it; "
        "expected a .safetensors or torch.save .pth checkpoint of tensors."
    )


def _torch_pickle_streams(path: str) -> list[bytes]:
    """The pickle bytes of a torch.save file: the zip format's data.pkl, or the whole legacy file."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return [archive.read(name) for name in archive.namelist() if name.endswith("data.pkl")]
        with open(path, "rb") as handle:
            return [handle.read()]
    except (OSError, zipfile.BadZipFile, EOFError):
        return []


def _first_offending_global(streams: Iterable[bytes]) -> str | None:
    """The first `module.name` global of the pickles in `streams` that the weights-only loader does not allow.

    Walks the opcodes with pickletools (nothing is executed), through consecutive pickles (the legacy torch.save
    format writes several), stopping quietly where the data is damaged. STACK_GLOBAL takes its two names from the
    strings pushed before it, directly or through the memo.
    """
    allowed = _weights_only_globals()
    for data in streams:
        stream = io.BytesIO(data)
        while stream.tell() < len(data):
            strings: list[str] = []
            memo: dict[int, str] = {}
            try:
                for opcode, arg, _ in pickletools.genops(stream):
                    name = None
                    if opcode.name in _STRING_OPCODES and isinstance(arg, str):
                        strings.append(arg)
                    elif opcode.name == "MEMOIZE" and strings:
                        memo[len(memo)] = strings[-1]
                    elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                        memo[int(arg)] = strings[-1]
                    elif opcode.name in ("BINGET", "LONG_BINGET", "GET") and int(arg) in memo:
                        strings.append(memo[int(arg)])
                    elif opcode.name == "GLOBAL":
                        name = arg.replace(" ", ".")
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        name = f"{strings[-2]}.{strings[-1]}"
                    if name is not None and not _is_allowed(name, allowed):
                        return name
            except (ValueError, EOFError):  # damaged, or the end of the stream
                break
    return None


_STRING_OPCODES = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
)


def _weights_only_globals() -> set[str]:
    """The globals torch's weights-only unpickler allows (private API; an empty set falls back to a name rule)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except (ImportError, AttributeError):
        return set()


def _is_allowed(name: str, allowed: set[str]) -> bool:
    if allowed:
        return name in allowed
    return name.startswith("torch.") or name in ("collections.OrderedDict", "_codecs.encode")


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
    reader = _open_file(path)
    entries = {k: _Entry(reader, k) for k in reader.keys()}
    return Checkpoint(path, entries, reader.metadata)


def _open_file(path: str) -> _SafetensorsReader | _PickleReader | GGUFTensors:
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish.")
    with open(path, "rb") as handle:
        head = handle.read(32)
    if head.startswith(GGUF_MAGIC):
        return GGUFTensors(path)  # quantized tensors load as QuantizedTensor (still packed)
    if head.startswith(ZIP_MAGIC):
        return _PickleReader(path, mmap=True)
    if head.startswith(b"\x80") and LEGACY_TORCH_MAGIC in head:
        return _PickleReader(path, mmap=False)
    if head[:1] == b"\x80" and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:  # a pickle, but not torch.save's
        raise CheckpointError(_describe_plain_pickle(path))
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") + 8 <= size:
        return _SafetensorsReader(path)
    raise CheckpointError(_describe_unreadable(path, _unknown_start(head, size)))


def _unknown_start(head: bytes, size: int) -> str:
    if head[8:9] == b"{":
        return f"its safetensors header announces {int.from_bytes(head[:8], 'little') + 8} bytes, the file has {size}"
    return "its first bytes are neither a safetensors header nor a torch.save zip archive or pickle"


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether `path` is a GGUF file, by its first bytes."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == GGUF_MAGIC


def read_json(path: str, what: str) -> dict:
    """The JSON object in the file `path`; raises CheckpointError naming the file and `what` it should hold."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
        raise CheckpointError(f"{path} is not readable JSON ({err}); expected {what}. Fix or re-download it.") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}; expected {what} (a JSON object).")
    return value


def metadata_json(metadata: Mapping[str, object], source: str, what: str, key: str = "config") -> object | None:
    """The JSON value stored as safetensors metadata entry `key`; None when there is none (or a GGUF value of that
    name, which is not a string). Unreadable JSON raises CheckpointError naming `source` and `what` it should hold."""
    text = metadata.get(key)
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError as err:
        raise CheckpointError(
            f"{source}: the '{key}' entry of its safetensors metadata is not readable JSON ({err}); expected {what}. "
            "Re-download the file, or remove the entry."
        ) from None


def _open_folder(path: str) -> Checkpoint:
    shard_names = _choose_shards(path, sorted(os.listdir(path)))
    entries: dict[str, _Entry] = {}
    for name in shard_names:
        reader = _SafetensorsReader(os.path.join(path, name))
        entries.update({k: _Entry(reader, k) for k in reader.keys()})
    return Checkpoint(path, entries, {})


def _is_variant(name: str) -> bool:
    # diffusers keeps precision variants beside the weights: name.fp16.safetensors, name.fp16-00001-of-00002...
    return "." in name.removesuffix(".safetensors")


def _choose_shards(path: str, names: list[str]) -> list[str]:
    """The safetensors files to read: a plain index's shards, else the plain files, else one variant's. Never mixed."""
    files = [n for n in names if n.endswith(".safetensors")]
    indexes = [n for n in names if n.endswith(".safetensors.index.json")]
    variant_indexes = [n for n in names if re.fullmatch(r".+\.safetensors\.index\.[^.]+\.json", n)]
    plain = [n for n in files if not _is_variant(n)]
    if len(indexes) > 1:
        raise CheckpointError(f"{path}: several shard indexes ({preview(indexes)}); keep only the model's own one.")
    if indexes:
        return _shards_from_index(path, indexes[0])
    if plain:
        return plain
    if len(variant_indexes) == 1:
        return _shards_from_index(path, variant_indexes[0])
    if len(files) == 1:
        return files
    if not files:
        raise CheckpointError(f"{path}: a folder with no .safetensors files (found: {preview(names)}).")
    raise CheckpointError(
        f"{path}: several weight variants and no single index to choose between them: "
        f"{preview(variant_indexes or files)}. Move the variants you do not want out of the folder."
    )


def _shards_from_index(path: str, index_name: str) -> list[str]:
    index_path = os.path.join(path, index_name)
    what = 'a safetensors shard index: {"weight_map": {tensor name: shard file name}}'
    weight_map = read_json(index_path, what).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path} has no usable 'weight_map'; expected {what}. Fix or re-download it.")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
    if missing:
        raise CheckpointError(f"{path}: {index_name} lists shards that are missing: {preview(missing)}.")
    if not shards:
        raise CheckpointError(f"{index_path}: its 'weight_map' is empty; expected {what}.")
    return shards


def shard_owner(path: str | os.PathLike) -> str:
    """The folder a sharded checkpoint's piece belongs to, or `path` itself for anything else.

    A file such as `model-00001-of-00002.safetensors` whose folder has a `*.safetensors.index.json` naming
    it holds only part of a model; loading the folder reads all of it (with its config and tokenizer). This
    lets a ComfyUI dropdown, which lists files, load a Hugging Face or diffusers folder through any shard.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    if not os.path.isfile(path) or not name.endswith(".safetensors"):
        return path
    for index in (n for n in sorted(os.listdir(folder)) if n.endswith(".safetensors.index.json")):
        weight_map = read_json(os.path.join(folder, index), "a safetensors shard index").get("weight_map")
        if isinstance(weight_map, dict) and name in weight_map.values():
            return folder
    return path
