"""`load_transformer`: any supported diffusion transformer from any supported file layout.

The family and the layout (original / ComfyUI / diffusers) are recognised from tensor names, the
config is derived from tensor shapes, and the module is filled tensor by tensor from the file's
memory map, so loading never holds a second full copy of the weights.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..errors import CheckpointError, UnsupportedModelError
from ..gguf.policy import LOAD_FLOAT_MODULES
from ..gguf.quantized import QuantizedTensor, concat_rows, same_values
from ..models import ltxv, lumina2, lumina_next, zimage
from .consensus import consensus_shapes
from .detect import describe_contents, detect_model
from .files import Checkpoint, is_gguf, open_checkpoint, preview, read_json, shard_owner
from .keymaps import ltxv as ltxv_keys
from .keymaps import lumina2 as lumina2_keys
from .keymaps import lumina_next as lumina_next_keys
from .keymaps import zimage as zimage_keys
from .modules import SCALED_FP8_MARKER, assign_tensors, build_on_meta, build_with_precision, scaled_fp8_dtype


@dataclass(frozen=True)
class TransformerFamily:
    name: str
    config_from_shapes: Callable[..., object]  # (shapes, **stored) -> config
    build: Callable[[object], nn.Module]
    map_diffusers_keys: Callable[[list[str]], tuple[dict[str, list[str]], list[str]]]
    diffusers_config: dict[str, str]  # config.json field -> config field, for what shapes cannot tell
    unused_keys: frozenset[str]
    # For LoRA files: original key -> its other names (diffusers', trainers'), each with the row block it forms of a
    # fused tensor (None: the whole tensor); and the released model's config, to recognise a family by its names.
    alternative_names: Callable[[str], list[tuple[str, int | None]]]
    default_config: Callable[[], object]
    # How a plan's diffusers sources form one original tensor: False, row blocks to concatenate (a split
    # qkv); True, identical copies (a duplicated projection) of which the first is read and the rest checked.
    diffusers_copies: bool = False
    # (safetensors metadata, file path) -> config fields the file's own metadata states, for what shapes cannot tell.
    metadata_config: Callable[[Mapping[str, str], str], dict] | None = None
    # (1, D) parameters that some files store as (D,); read as (1, D) whatever the file holds.
    row_vectors: tuple[str, ...] = ()
    # (original key, shape (out, in), model config) -> row counts of the blocks `alternative_names` numbers; None:
    # nothing is fused.
    part_rows: Callable[[str, tuple[int, ...], object], list[int]] | None = None


FAMILIES: dict[str, TransformerFamily] = {
    "lumina2": TransformerFamily(
        name="Lumina-Image 2.0",
        config_from_shapes=lumina2.config_from_shapes,
        build=lumina2.Lumina2Transformer,
        map_diffusers_keys=lumina2_keys.map_diffusers_keys,
        diffusers_config=lumina2_keys.DIFFUSERS_CONFIG,
        unused_keys=lumina2.UNUSED_KEYS,
        alternative_names=lumina2_keys.alternative_names,
        part_rows=lumina2_keys.part_rows,
        default_config=lumina2.Lumina2Config,
    ),
    "lumina_next": TransformerFamily(
        name="Lumina-Next",
        config_from_shapes=lumina_next.config_from_shapes,
        build=lumina_next.LuminaNextTransformer,
        map_diffusers_keys=lumina_next_keys.map_diffusers_keys,
        diffusers_config=lumina_next_keys.DIFFUSERS_CONFIG,
        unused_keys=lumina_next.UNUSED_KEYS,
        diffusers_copies=True,
        alternative_names=lumina_next_keys.alternative_names,
        default_config=lumina_next.LuminaNextConfig,
    ),
    "zimage": TransformerFamily(
        name="Z-Image",
        config_from_shapes=zimage.config_from_shapes,
        build=zimage.ZImageTransformer,
        map_diffusers_keys=zimage_keys.map_diffusers_keys,
        diffusers_config=zimage_keys.DIFFUSERS_CONFIG,
        unused_keys=zimage.UNUSED_KEYS,
        alternative_names=zimage_keys.alternative_names,
        default_config=zimage.ZImageConfig,
        row_vectors=zimage.PAD_TOKENS,
        part_rows=lumina2_keys.part_rows,
    ),
    "ltxv": TransformerFamily(
        name="LTX-Video",
        config_from_shapes=ltxv.config_from_shapes,
        build=ltxv.LTXVideoTransformer,
        map_diffusers_keys=ltxv_keys.map_diffusers_keys,
        diffusers_config=ltxv_keys.DIFFUSERS_CONFIG,
        unused_keys=ltxv.UNUSED_KEYS,
        metadata_config=ltxv_keys.config_from_metadata,
        alternative_names=ltxv_keys.alternative_names,
        default_config=ltxv.LTXVideoConfig,
    ),
}


# What to do instead, by what the file turned out to hold.
NEXT_STEP = {
    "vae": " Load it with load_vae (the Load Lumina VAE node).",
    "gemma2": " Load it with load_text_encoder (the Load Gemma Text Encoder node).",
    "gemma": " Load it with load_text_encoder (the Load Gemma Text Encoder node).",
    "t5": " Load it with load_text_encoder (the Load T5 Text Encoder node).",
    "qwen3": " Load it with load_text_encoder (the text-encoder loader node).",
    "ltxv_upsampler": " Load it with load_latent_upsampler (the Load LTX-Video Latent Upsampler node).",
}


def load_transformer(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    *,
    compute_dtype: torch.dtype | None = None,
    operations=None,
    **config,
) -> nn.Module:
    """Load a diffusion transformer; returns a module with `.family`, `.config` and `.compute_dtype`.

    path: an original/ComfyUI `.safetensors` or `.pth` file (all-in-one files too), a diffusers
    `transformer/` folder or pipeline folder, a single diffusers-keyed file, or a `.gguf` file (its
    quantized Linear weights stay packed in `QuantizedLinear`s and are dequantized layer by layer).
    dtype: the storage dtype of the Linear weights; None keeps the stored dtype (an fp8 file stays fp8 and
    computes in bf16; GGUF files, which mix types, load as float32); fp8 stores a float file in fp8. The other
    tensors are stored in compute_dtype (None: dtype, or bf16 for fp8 storage; see `loading.modules`).
    operations: the layer namespace (None picks one, see `build_with_precision`); a host such as ComfyUI passes
    its own cast layers. config: fields that tensor shapes cannot tell, for models that differ from the release
    (e.g. `axes_dims=(32, 48, 48)`); they override a diffusers config.json.
    """
    plan = _plan(path, config)
    if dtype is None and is_gguf(path):  # GGUF files mix stored types; float32 holds every one exactly
        dtype = torch.float32
    family = FAMILIES[plan.model.family]
    model, precision = build_with_precision(
        partial(family.build, plan.model.config), plan.dtypes, dtype, compute_dtype, operations
    )
    keep_float = LOAD_FLOAT_MODULES.get(plan.model.family, ())
    model = assign_tensors(model, plan.readers, plan.shapes, plan.source, precision, device, keep_float)
    model.source = os.fspath(path)  # named when the weights turn out to hold NaN/inf (lumina_core.nonfinite)
    return model


def original_tensors(
    path: str | os.PathLike, **config
) -> tuple[str, dict[str, Callable[[], torch.Tensor]], dict[str, tuple[int, ...]], torch.dtype]:
    """For converters: a transformer file's family id, its tensors under original (ComfyUI) names (read lazily),
    their shapes, and the floating dtype most of them are stored in (read from the headers)."""
    plan = _plan(path, config)
    return plan.model.family, plan.readers, plan.shapes, plan.stored_dtype


@dataclass(frozen=True)
class StoredWeights:
    """How a transformer file stores its weights, read from the headers: what a host needs to choose the
    precision and layers before loading (`load_transformer(dtype=..., compute_dtype=..., operations=...)`)."""

    dtype: torch.dtype  # the floating dtype most tensors are stored in
    scaled_fp8: torch.dtype | None  # ComfyUI's scaled-fp8 files: the fp8 dtype of their weights; else None
    parameters: int


def stored_weights(path: str | os.PathLike, **config) -> StoredWeights:
    plan = _plan(path, config)
    parameters = sum(math.prod(shape) for name, shape in plan.shapes.items() if name != SCALED_FP8_MARKER)
    return StoredWeights(plan.stored_dtype, scaled_fp8_dtype(plan.dtypes), parameters)


def inspect_transformer(path: str | os.PathLike, **config) -> nn.Module:
    """The model a file holds, built on the meta device from tensor shapes alone: no weights are read.

    Useful to validate sizes (`latent_shape`) or show `.family`/`.config` before paying for a load.
    """
    return _plan(path, config).model


@dataclass(frozen=True)
class _LoadPlan:
    model: nn.Module  # on the meta device, built with torch.nn
    readers: dict[str, Callable[[], torch.Tensor]]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]  # as stored (the first source's, for a diffusers tensor made of several)
    source: str
    stored_dtype: torch.dtype  # the floating dtype most tensors are stored in (float32 for GGUF's packed types)


def _plan(path: str | os.PathLike, config: dict) -> _LoadPlan:
    folder = _transformer_folder(os.fspath(path))
    checkpoint = open_checkpoint(folder)
    detected = detect_model(checkpoint)
    if detected is None or detected.signature.family not in FAMILIES:
        found = detected.signature.description if detected else describe_contents(checkpoint)
        next_step = NEXT_STEP.get(detected.signature.family if detected else "", "")
        raise UnsupportedModelError(
            f"{checkpoint.path} holds {found}; load_transformer supports "
            f"{', '.join(f.name for f in FAMILIES.values())} transformers.{next_step}"
        )
    family = FAMILIES[detected.signature.family]
    readers = _original_key_readers(detected.part, detected.signature.layout, family)
    shapes = {name: shape for name, (shape, _, _) in readers.items()}
    dtypes = {name: dtype for name, (_, dtype, _) in readers.items()}
    stored = {**_diffusers_config(folder, family), **_metadata_config(checkpoint, family), **config}
    try:
        config = family.config_from_shapes(consensus_shapes(shapes), **stored)  # one damaged block cannot mislead
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{checkpoint.path}: looks like {detected.signature.description} but its shapes do not form a "
            f"valid model ({type(err).__name__}: {err})."
        ) from None
    model = build_on_meta(partial(family.build, config))
    source = f"{checkpoint.path} ({detected.signature.description})"
    stored_dtype = _most_common_float(detected.part)
    return _LoadPlan(model, {k: read for k, (_, _, read) in readers.items()}, shapes, dtypes, source, stored_dtype)


def _most_common_float(part: Checkpoint) -> torch.dtype:
    dtypes = Counter(part.dtype(key) for key in part.keys if not key.endswith(("scale_weight", "scale_input")))
    floats = [dtype for dtype, _ in dtypes.most_common() if dtype.is_floating_point]
    return floats[0] if floats else torch.float32


def _diffusers_config(folder: str, family: TransformerFamily) -> dict:
    """The fields of a diffusers folder's config.json that tensor shapes cannot tell; {} without one."""
    path = os.path.join(folder, "config.json")
    if not os.path.isdir(folder) or not os.path.isfile(path):
        return {}
    stored = read_json(path, "a diffusers transformer config")
    return {ours: stored[theirs] for theirs, ours in family.diffusers_config.items() if stored.get(theirs) is not None}


def _metadata_config(checkpoint: Checkpoint, family: TransformerFamily) -> dict:
    """The fields a file's own metadata states (an original LTX-Video file's JSON `config`); {} for other families."""
    return family.metadata_config(checkpoint.metadata, checkpoint.path) if family.metadata_config else {}


def _transformer_folder(path: str) -> str:
    # A diffusers pipeline folder keeps the transformer in its own subfolder; a shard stands for its folder.
    path = shard_owner(path)
    sub = os.path.join(path, "transformer")
    return sub if os.path.isdir(sub) else path


def _original_key_readers(
    part: Checkpoint, layout: str, family: TransformerFamily
) -> dict[str, tuple[tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]]:
    """Original key -> (shape, stored dtype, reader) for every tensor the model uses, renaming diffusers keys."""
    readers = _renamed_readers(part, layout, family)
    for name in family.row_vectors:
        if name in readers and len(readers[name][0]) == 1:
            shape, dtype, read = readers[name]
            readers[name] = ((1, *shape), dtype, partial(_as_row, read))
    return readers


def _as_row(read: Callable[[], torch.Tensor | QuantizedTensor]) -> torch.Tensor:
    tensor = read()
    tensor = tensor.dequantize() if isinstance(tensor, QuantizedTensor) else tensor
    return tensor.reshape(1, -1)


def _renamed_readers(
    part: Checkpoint, layout: str, family: TransformerFamily
) -> dict[str, tuple[tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]]:
    if layout == "original":
        return {k: (part.shape(k), part.dtype(k), partial(part.load, k)) for k in part.keys
                if k not in family.unused_keys}  # fmt: skip
    plan, unmatched = family.map_diffusers_keys(part.keys)
    if unmatched:
        raise CheckpointError(
            f"{part.path}: these diffusers keys are not part of a {family.name} transformer: {preview(unmatched)}. "
            "Expected only the keys diffusers' model class saves (a LoRA or a merged file?)."
        )
    readers = {}
    for target, sources in plan.items():
        shapes = [part.shape(s) for s in sources]
        if family.diffusers_copies:
            if len(set(shapes)) > 1:
                raise CheckpointError(
                    f"{part.path}: {', '.join(sources)} are copies of one {family.name} tensor ({target}) but "
                    f"have different shapes {shapes}: a damaged or hand-edited file."
                )
            readers[target] = (shapes[0], part.dtype(sources[0]), partial(_identical_copies, part, sources, target))
        else:
            shape = (sum(s[0] for s in shapes), *shapes[0][1:])
            readers[target] = (shape, part.dtype(sources[0]), partial(_concat_rows, part, sources))
    return readers


def _concat_rows(part: Checkpoint, keys: list[str]) -> torch.Tensor | QuantizedTensor:
    return concat_rows([part.load(k) for k in keys])


def _identical_copies(part: Checkpoint, keys: list[str], target: str) -> torch.Tensor:
    first = part.load(keys[0])
    for key in keys[1:]:
        if not same_values(part.load(key), first):
            raise CheckpointError(
                f"{part.path}: {keys[0]} and {key} must be identical (both are the original {target}, which "
                "diffusers stores twice) but differ: the file was edited or merged after conversion. Re-convert it, "
                "or load the original consolidated checkpoint."
            )
    return first
