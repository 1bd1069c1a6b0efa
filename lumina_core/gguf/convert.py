"""Convert a diffusion transformer checkpoint to a GGUF file in the ComfyUI GGUF ecosystem's conventions.

The output follows city96/ComfyUI-GGUF's conventions, so for Lumina-Image 2.0, Z-Image and LTX-Video its
UnetLoaderGGUF, diffusers' GGUF path and our own loader all read it (Lumina-Next files only ours):
original (Alpha-VLLM / Tongyi-MAI / Lightricks / ComfyUI) tensor names without a prefix,
`general.architecture` as city96's converter writes it ("lumina2" for Lumina 2 and Z-Image, "ltxv";
"lumina_next" for Lumina-Next, which city96's list lacks), the quantization version and the file type, and an
original LTX-Video file's JSON `config`. Tensors are written one at a time (tensor infos first, then each
tensor's bytes), so converting never holds more than one tensor in memory, into a hidden `.part` file renamed
into place once whole. The output is never the source, and an existing file is replaced only when asked to
(`--overwrite`).

Per-tensor policy (`policy.keeps_float`): 1-D and small tensors (norms, biases) and plain parameters (pad
tokens, LTX's scale-shift tables) in F32, the family's sensitive layers (embedders, output layers, refiners,
LTX's adaLN) in F16 (BF16 when the source is BF16), rows that are not whole blocks of the requested type in
F16/BF16 as well, everything else in the requested type.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter, LlamaFileType

from ..errors import InvalidInputError
from ..outputs import cannot_write, check_writable
from .policy import MIN_QUANTIZED_ELEMENTS, PLAIN_PARAMETERS, keeps_float
from .quantize import quantize
from .quantized import QuantizedTensor

Q = GGMLQuantizationType
logger = logging.getLogger("lumina_core.gguf")
CONFIG_KEY = "config"  # safetensors metadata of original LTX-Video files, kept under the same GGUF key
# --type choices -> ggml type and the file type ComfyUI-GGUF and llama.cpp tools show.
TARGETS = {
    "Q8_0": (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "Q5_0": (Q.Q5_0, LlamaFileType.MOSTLY_Q5_0),
    "Q4_0": (Q.Q4_0, LlamaFileType.MOSTLY_Q4_0),
    "Q4_K": (Q.Q4_K, LlamaFileType.MOSTLY_Q4_K_S),
    "Q5_K": (Q.Q5_K, LlamaFileType.MOSTLY_Q5_K_S),
    "Q6_K": (Q.Q6_K, LlamaFileType.MOSTLY_Q6_K),
    "F16": (Q.F16, LlamaFileType.MOSTLY_F16),
    "BF16": (Q.BF16, LlamaFileType.MOSTLY_BF16),
}


def choose_type(family: str, name: str, shape: tuple[int, ...], target: Q, source_dtype: torch.dtype) -> Q:
    """The ggml type one tensor is written in."""
    # Float-kept tensors: the requested float type, else the source's half type (city96 keeps BF16 as BF16).
    half = target if target in (Q.F16, Q.BF16) else (Q.BF16 if source_dtype == torch.bfloat16 else Q.F16)
    if len(shape) != 2 or shape[0] * shape[1] <= MIN_QUANTIZED_ELEMENTS or name.endswith(PLAIN_PARAMETERS):
        return Q.F32
    if keeps_float(family, name, shape):
        return half
    if shape[-1] % GGML_QUANT_SIZES[target][0]:
        return half  # e.g. LTX's 128-wide patchify_proj input under a K-quant (city96 does the same)
    return target


def convert(
    source: str | os.PathLike, output: str | os.PathLike, type_name: str = "Q8_0", overwrite: bool = False
) -> dict[str, int]:
    """Write `source` (any transformer file or folder load_transformer reads) to `output` as GGUF.

    An existing output is refused unless `overwrite`, and the output may never be the source (or one of its files,
    also through a link). Missing parent folders are created. The file is written as a hidden `.part` beside the
    output and renamed when whole; a `.part` an interrupted run left behind is removed, with a logged note.
    Returns how many tensors were written in each ggml type.
    """
    from ..loading.detect import GGUF_ARCHITECTURE_OF  # the loading package imports this one's modules
    from ..loading.files import open_checkpoint
    from ..loading.transformer import original_tensors

    if type_name not in TARGETS:
        raise InvalidInputError(f"unknown --type '{type_name}'; choose one of {', '.join(TARGETS)}.")
    target, file_type = TARGETS[type_name]
    output = Path(output)
    _check_output(Path(source), output, overwrite)
    family, readers, shapes, stored_dtype = original_tensors(source)
    stored_config = open_checkpoint(source).metadata.get(CONFIG_KEY) if os.path.isfile(source) else None
    plan = {name: choose_type(family, name, shapes[name], target, stored_dtype) for name in sorted(readers)}
    partial = output.with_name(f".{output.name}.part")  # renamed into place once whole
    if partial.exists():
        logger.warning("removed %s, left by an interrupted conversion", partial)
        partial.unlink()
    writer = GGUFWriter(os.fspath(partial), arch=GGUF_ARCHITECTURE_OF[family])
    try:
        writer.add_quantization_version(GGML_QUANT_VERSION)
        writer.add_file_type(file_type)
        if stored_config:  # an original LTX-Video file's JSON config (heads, RoPE ...): the loader reads it back
            writer.add_string(CONFIG_KEY, stored_config)
        for name, qtype in plan.items():
            _add_info(writer, name, shapes[name], qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, qtype in plan.items():  # in the order of the tensor infos
            writer.write_tensor_data(_encode(readers[name](), qtype))
        writer.close()
        os.replace(partial, output)
    except OSError as err:
        raise cannot_write(output, err) from None
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
    return dict(Counter(qtype.name for qtype in plan.values()))


def _check_output(source: Path, output: Path, overwrite: bool) -> None:
    """Refuse an output that is the source or one of its files, a folder, or an existing file without overwrite;
    then make sure it can be written (parent folders created)."""
    if output.exists():
        sources = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
        if output.is_file() and any(os.path.samefile(output, s) for s in sources):
            raise InvalidInputError(
                f"cannot write {output}: it is the source {source} itself (or a link to it); write the GGUF file "
                "under another name."
            )
        if output.is_file() and not overwrite:
            raise InvalidInputError(f"cannot write {output}: it exists; pass --overwrite (overwrite=True) to replace.")
    check_writable([output])


def _add_info(writer: GGUFWriter, name: str, shape: tuple[int, ...], qtype: Q) -> None:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n_bytes = int(np.prod(shape)) // block_size * type_size
    if qtype in (Q.F32, Q.F16):
        writer.add_tensor_info(name, shape, np.dtype(np.float32 if qtype == Q.F32 else np.float16), n_bytes)
    else:
        byte_shape = (*shape[:-1], shape[-1] // block_size * type_size)
        writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), n_bytes, raw_dtype=qtype)


def _encode(tensor: torch.Tensor | QuantizedTensor, qtype: Q) -> np.ndarray:
    values = tensor.dequantize() if isinstance(tensor, QuantizedTensor) else tensor.detach().float()
    return np.ascontiguousarray(quantize(values.numpy(), qtype))
