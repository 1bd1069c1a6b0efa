"""GGUF files read through the gguf package's `GGUFReader` (memory-mapped), validated, and fast to open.

`GGUFReader` parses every key-value field eagerly, making one numpy part per array element: a file that
embeds a 256k-entry tokenizer (Gemma, T5) takes seconds to open (12 s on 2 cores, city96/ComfyUI-GGUF#463).
`GGUFFile` keeps the reader's container handling (magic, version, tensor infos, alignment, the memory map)
but parses the fields itself: scalars and strings at once, numeric arrays as zero-copy numpy views, and
string arrays as a table of offsets decoded only when asked for (`LazyStrings`).

It also validates what the reader takes on trust, so a damaged file fails with a message naming the file
and the tensor instead of an out-of-range read or a huge allocation: every field and tensor must lie inside
the file, tensors must not overlap, a row must be whole blocks of its type, and unknown type ids are named.

`GGUFTensors` is the view `lumina_core.loading.files.Checkpoint` uses: torch shapes (ggml dims reversed, or
city96's `comfy.gguf.orig_shape.<name>` when present), zero-copy tensors for the float types and
`QuantizedTensor`s (still packed) for the rest. Text encoders made by llama.cpp (Gemma, Gemma-2, T5) appear
under transformers' names, Gemma's norm weights without llama.cpp's +1 (`text.py`).
"""

from __future__ import annotations

import functools
import math
import os
import struct
import warnings
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, ReaderField, ReaderTensor
from gguf.quants import dequantize as gguf_dequantize

from ..errors import CheckpointError
from .dequant import TORCH_TYPES
from .quantized import QuantizedTensor
from .text import GEMMA_NORM_OFFSET, is_gemma_norm, text_architecture, transformers_names

ORIG_SHAPE_PREFIX = "comfy.gguf.orig_shape."  # city96's converter: the torch shape of a reshaped tensor
MAX_DIMS = 8  # ggml has 4; gguf-py writes more (5-D video convolutions), anything beyond is damage
MAX_STRING = 2**26  # a longer name or metadata string is a damaged length field, not text worth copying
MIN_TENSOR_INFO = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset

_SCALARS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}  # fmt: skip
# Types whose stored values are a plain numpy/torch dtype; everything else is packed blocks.
PLAIN_TYPES = {
    GGMLQuantizationType.F32: torch.float32, GGMLQuantizationType.F16: torch.float16,
    GGMLQuantizationType.BF16: torch.bfloat16, GGMLQuantizationType.F64: torch.float64,
    GGMLQuantizationType.I8: torch.int8, GGMLQuantizationType.I16: torch.int16,
    GGMLQuantizationType.I32: torch.int32, GGMLQuantizationType.I64: torch.int64,
}  # fmt: skip


class LazyStrings(Sequence):
    """A GGUF string array: offsets found when the file is opened, the strings decoded on access."""

    def __init__(self, buffer: memoryview, starts: np.ndarray, lengths: np.ndarray):
        self._buffer, self._starts, self._lengths = buffer, starts, lengths

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        start = int(self._starts[index])
        return bytes(self._buffer[start : start + int(self._lengths[index])]).decode("utf-8", errors="replace")

    def raw(self) -> Iterator[bytes]:
        """Every string's UTF-8 bytes, undecoded."""
        buffer = self._buffer
        for start, length in zip(self._starts.tolist(), self._lengths.tolist()):
            yield bytes(buffer[start : start + length])


class GGUFFile(GGUFReader):
    """A memory-mapped GGUF file. `metadata` holds every key-value field (arrays lazily); `tensors` as in
    GGUFReader except that `data` is always the tensor's bytes (uint8); `fields` holds only the scalar and
    string fields (arrays are in `metadata`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.metadata: dict[str, object] = {}
        try:
            super().__init__(self.path, "r")
        except CheckpointError:
            raise
        except (ValueError, IndexError, KeyError, OverflowError, struct.error) as err:
            raise CheckpointError(f"{self.path}: not a readable GGUF file ({err or type(err).__name__}).") from None

    # -- key-value fields ------------------------------------------------------------------------------

    def _build_fields(self, offs: int, count: int) -> int:
        if self.byte_order != "I":
            raise CheckpointError(f"{self.path}: a big-endian GGUF file; only little-endian files are supported.")
        buffer = memoryview(self.data)
        for _ in range(int(count)):
            start = offs
            key, offs = self._string(buffer, offs, "a metadata key")
            kind, offs = self._unpack(buffer, offs, "I", key)
            value, offs = self._value(buffer, offs, kind, key)
            self.metadata[key] = value
            if not isinstance(value, (LazyStrings, np.ndarray, list)):
                self._push_field(self._scalar_field(start, key, kind, value), skip_sum=True)
        return offs

    def _unpack(self, buffer: memoryview, offs: int, fmt: str, what: str):
        size = struct.calcsize("<" + fmt)
        if offs + size > len(buffer):
            raise CheckpointError(f"{self.path}: the file ends inside its header (reading {what}): truncated.")
        return struct.unpack_from("<" + fmt, buffer, offs)[0], offs + size

    def _string(self, buffer: memoryview, offs: int, what: str) -> tuple[str, int]:
        length, offs = self._unpack(buffer, offs, "Q", what)
        if offs + length > len(buffer) or length > MAX_STRING:
            raise CheckpointError(f"{self.path}: {what} of {length} bytes runs past the end of the file: truncated.")
        return bytes(buffer[offs : offs + length]).decode("utf-8", errors="replace"), offs + length

    def _value(self, buffer: memoryview, offs: int, kind: int, key: str):
        if kind == GGUFValueType.STRING:
            return self._string(buffer, offs, f"the value of '{key}'")
        if kind in _SCALARS:
            return self._unpack(buffer, offs, _SCALARS[kind], key)
        if kind != GGUFValueType.ARRAY:
            raise CheckpointError(f"{self.path}: metadata '{key}' has the unknown value type {kind}.")
        item, offs = self._unpack(buffer, offs, "I", key)
        count, offs = self._unpack(buffer, offs, "Q", key)
        if count > len(buffer) - offs:  # every element takes at least a byte
            raise CheckpointError(f"{self.path}: the array '{key}' claims {count} elements, more than the file holds.")
        if item in _SCALARS:
            size = struct.calcsize(_SCALARS[item]) * count
            if offs + size > len(buffer):
                raise CheckpointError(f"{self.path}: the array '{key}' runs past the end of the file: truncated.")
            return np.frombuffer(buffer, dtype="<" + _SCALARS[item], count=count, offset=offs), offs + size
        if item == GGUFValueType.STRING:
            return self._string_array(buffer, offs, count, key)
        values = []
        for _ in range(count):  # arrays of arrays: rare and small
            value, offs = self._value(buffer, offs, item, key)
            values.append(value)
        return values, offs

    def _string_array(self, buffer: memoryview, offs: int, count: int, key: str) -> tuple[LazyStrings, int]:
        # The offsets grow as they are found (a damaged count fails at the end of the file, not in an allocation).
        starts, lengths = array("q"), array("q")
        unpack, end = struct.Struct("<Q").unpack_from, len(buffer)
        for _ in range(count):  # only the lengths are read: ~0.1 s for a 256k vocabulary
            if offs + 8 > end:
                raise CheckpointError(f"{self.path}: the strings of '{key}' run past the end of the file: truncated.")
            (length,) = unpack(buffer, offs)
            starts.append(offs + 8)
            lengths.append(min(length, end))
            offs += 8 + length
        if offs > end:
            raise CheckpointError(f"{self.path}: the strings of '{key}' run past the end of the file: truncated.")
        starts, lengths = np.frombuffer(starts, dtype=np.int64), np.frombuffer(lengths, dtype=np.int64)
        return LazyStrings(buffer, starts, lengths), offs

    @staticmethod
    def _scalar_field(offset: int, key: str, kind: int, value) -> ReaderField:
        if kind == GGUFValueType.STRING:
            part = np.frombuffer(value.encode("utf-8"), dtype=np.uint8)
        else:
            part = np.array([value], dtype="<" + _SCALARS[kind])
        return ReaderField(offset, key, [part], [0], [GGUFValueType(kind)])

    # -- tensors ---------------------------------------------------------------------------------------

    def _build_tensor_info(self, offs: int, count: int) -> tuple[int, list[ReaderField]]:
        if count > (len(self.data) - offs) // MIN_TENSOR_INFO:
            raise CheckpointError(f"{self.path}: the header claims {count} tensors, more than the file can hold.")
        return super()._build_tensor_info(offs, count)

    def _get_tensor_info_field(self, orig_offs: int) -> ReaderField:
        # GGUFReader copies and decodes the name before anything is checked: bound its length first.
        self._string(memoryview(self.data), orig_offs, "a tensor name")
        return super()._get_tensor_info_field(orig_offs)

    def _build_tensors(self, start_offs: int, fields: list[ReaderField]) -> None:
        tensors, size = {}, len(self.data)
        for field in fields:
            _, name_bytes, n_dims, dims, raw_type, offset = field.parts
            name = bytes(name_bytes).decode("utf-8", errors="replace")
            if name in tensors:
                raise CheckpointError(f"{self.path}: the tensor '{name}' is stored twice.")
            qtype = self._tensor_type(name, int(raw_type[0]))
            dims = [int(d) for d in dims]
            if not 1 <= int(n_dims[0]) <= MAX_DIMS or min(dims) < 1:
                raise CheckpointError(f"{self.path}: the tensor '{name}' has impossible dimensions {dims}.")
            block_size, type_size = GGML_QUANT_SIZES[qtype]
            if dims[0] % block_size:
                raise CheckpointError(
                    f"{self.path}: the tensor '{name}' has rows of {dims[0]} elements, not whole {qtype.name} blocks "
                    f"of {block_size}: its byte size disagrees with its shape and type."
                )
            n_elements = math.prod(dims)
            n_bytes = n_elements // block_size * type_size
            data_offs = start_offs + int(offset[0])
            if data_offs + n_bytes > size:
                raise CheckpointError(
                    f"{self.path}: the tensor '{name}' ({qtype.name}, shape {list(reversed(dims))}) needs bytes "
                    f"{data_offs}..{data_offs + n_bytes} but the file has {size}: truncated, or a shape that disagrees "
                    "with the data."
                )
            data = self._get(data_offs, np.uint8, n_bytes)
            tensors[name] = ReaderTensor(name, qtype, np.array(dims, dtype=np.uint64), n_elements, n_bytes,
                                         data_offs, data, field)  # fmt: skip
        self._check_overlaps(list(tensors.values()))
        self.tensors = list(tensors.values())

    def _tensor_type(self, name: str, raw: int) -> GGMLQuantizationType:
        try:
            qtype = GGMLQuantizationType(raw)
        except ValueError:
            qtype = None
        if qtype is None or qtype not in GGML_QUANT_SIZES:
            raise CheckpointError(
                f"{self.path}: the tensor '{name}' has ggml type id {raw}, unknown to the installed gguf package: "
                "a newer quantization type or a damaged file. Update gguf (pip install -U gguf) or use another file."
            )
        return qtype

    def _check_overlaps(self, tensors: list[ReaderTensor]) -> None:
        ordered = sorted(tensors, key=lambda t: t.data_offset)
        for first, second in zip(ordered, ordered[1:]):
            if first.data_offset + first.n_bytes > second.data_offset:
                raise CheckpointError(
                    f"{self.path}: the tensor '{first.name}' ({first.tensor_type.name}, {first.n_elements} elements, "
                    f"{first.n_bytes} bytes) runs into '{second.name}': its byte size disagrees with its shape and "
                    "type (a damaged or hand-edited file)."
                )


@dataclass(frozen=True)
class _Info:
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # torch order
    rows: int  # ggml rows: the product of every dim but the first (innermost), whatever `shape` says
    data: np.ndarray  # uint8 view of the memory map


class GGUFTensors:
    """A GGUF file as `Checkpoint` reads it: names, torch shapes, and tensors on demand, zero-copy.

    `load` gives a torch tensor for the plain types (F32, F16, BF16, F64, integers) and a `QuantizedTensor`
    for every block type; `dtype` reports float32 for those, the dtype that holds their values exactly.
    `metadata` holds the scalar and string fields as strings (what `Checkpoint.metadata` holds for
    safetensors); `file.metadata` has them all, arrays included.
    """

    def __init__(self, path: str):
        self.path = path
        self.file = GGUFFile(path)
        self.metadata = {k: str(v) for k, v in self.file.metadata.items() if isinstance(v, (str, int, float, bool))}
        self._infos = {
            t.name: _Info(t.tensor_type, self._torch_shape(t), t.n_elements // int(t.shape[0]), t.data)
            for t in self.file.tensors
        }
        for name, info in self._infos.items():
            _check_decodable(path, name, info.qtype)
        self._norm_offsets: set[str] = set()
        architecture = self.metadata.get("general.architecture", "")
        if text_architecture(architecture):  # llama.cpp names -> transformers names
            names = transformers_names(architecture, self._infos, path)
            self._infos = {new: self._infos[old] for new, old in names.items()}
            self._norm_offsets = {n for n in names if is_gemma_norm(architecture, n)}

    def _torch_shape(self, tensor: ReaderTensor) -> tuple[int, ...]:
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        stored = self.file.metadata.get(ORIG_SHAPE_PREFIX + tensor.name)
        if stored is None:
            return shape
        orig = tuple(int(d) for d in stored)
        if math.prod(orig) != tensor.n_elements:
            raise CheckpointError(
                f"{self.path}: '{ORIG_SHAPE_PREFIX}{tensor.name}' says shape {list(orig)} but the tensor holds "
                f"{tensor.n_elements} elements (stored as {list(shape)})."
            )
        return orig

    def keys(self) -> list[str]:
        return list(self._infos)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._infos[key].shape

    def quant_type(self, key: str) -> GGMLQuantizationType:
        return self._infos[key].qtype

    def dtype(self, key: str) -> torch.dtype:
        return PLAIN_TYPES.get(self._infos[key].qtype, torch.float32)

    def load(self, key: str) -> torch.Tensor | QuantizedTensor:
        if key in self._norm_offsets:  # llama.cpp stores Gemma's norm weights plus one
            tensor = self._load(key)
            values = tensor.dequantize() if isinstance(tensor, QuantizedTensor) else tensor.float()
            return values - GEMMA_NORM_OFFSET
        return self._load(key)

    def _load(self, key: str) -> torch.Tensor | QuantizedTensor:
        info = self._infos[key]
        with warnings.catch_warnings():  # the map is read-only and is never written through these views
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            packed = torch.from_numpy(info.data)
        if info.qtype in PLAIN_TYPES:
            return packed.view(PLAIN_TYPES[info.qtype]).view(info.shape)
        return QuantizedTensor(packed.view(info.rows, -1), info.qtype, info.shape, f"{self.path} ['{key}']")


def _check_decodable(path: str, name: str, qtype: GGMLQuantizationType) -> None:
    if qtype not in PLAIN_TYPES and qtype not in TORCH_TYPES and not _numpy_decodable(qtype):
        raise CheckpointError(
            f"{path}: the tensor '{name}' is stored as {qtype.name}, which neither lumina_core nor the installed gguf "
            "package can dequantize. Use a file in another quantization (Q8_0, Q4_K, ...)."
        )


@functools.cache
def _numpy_decodable(qtype: GGMLQuantizationType) -> bool:
    """Whether gguf.quants.dequantize knows qtype (tried on one zero block)."""
    try:
        gguf_dequantize(np.zeros(GGML_QUANT_SIZES[qtype][1], dtype=np.uint8), qtype)
    except (NotImplementedError, ValueError, TypeError):
        return False
    return True


def read_metadata(path: str | os.PathLike) -> dict[str, object]:
    """Every key-value field of a GGUF file (string arrays lazily decoded), without the tensors' data."""
    return GGUFFile(path).metadata
