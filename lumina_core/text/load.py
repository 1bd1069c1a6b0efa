"""`load_text_encoder`: pick the text-encoder loader from the tensor names, never from the file name."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..errors import InvalidInputError
from ..loading.files import open_checkpoint, shard_owner
from ..loading.modules import scaled_fp8_dtype
from .gemma import GemmaTextEncoder, load_gemma_text_encoder
from .qwen3 import Qwen3TextEncoder, is_qwen3, load_qwen3_text_encoder
from .t5 import T5TextEncoder, is_t5, load_t5_text_encoder, text_encoder_weights


def load_text_encoder(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    tokenizer=None,
    tokenizer_dirs: Sequence[str | os.PathLike] = (),
    *,
    compute_dtype: torch.dtype | None = None,
    operations=None,
) -> GemmaTextEncoder | Qwen3TextEncoder | T5TextEncoder:
    """Load the text encoder in a folder or file: T5 (LTX-Video), Gemma (Lumina-Next), Gemma-2 (Lumina 2) or
    Qwen3-4B (Z-Image).

    The returned encoder's `family` names the diffusion model it serves. dtype None keeps the stored dtype
    (fp8 stays fp8 and computes in bf16); compute_dtype and operations as for `load_transformer`. tokenizer and
    tokenizer_dirs are for T5 and Qwen3, whose single files carry no tokenizer (see `t5.load_t5_text_encoder`,
    `qwen3.load_qwen3_text_encoder`); tokenizer_dirs is ignored for Gemma, whose files carry theirs.
    """
    path = shard_owner(path)  # one shard of a Hugging Face folder stands for the folder
    keys = open_checkpoint(text_encoder_weights(path)).keys
    precision = {"compute_dtype": compute_dtype, "operations": operations}
    if is_t5(keys):
        return load_t5_text_encoder(path, dtype, device, tokenizer, tokenizer_dirs, **precision)
    if is_qwen3(keys):
        return load_qwen3_text_encoder(path, dtype, device, tokenizer, tokenizer_dirs, **precision)
    if tokenizer is not None:
        raise InvalidInputError(
            f"{path}: tokenizer= is for T5 and Qwen3 encoders; this file is neither, and Gemma files carry their own "
            "tokenizer."
        )
    return load_gemma_text_encoder(path, dtype, device, compute_dtype=compute_dtype, operations=operations)


def stored_scaled_fp8(path: str | os.PathLike) -> torch.dtype | None:
    """For hosts choosing layers before loading: the fp8 dtype of a ComfyUI scaled-fp8 text-encoder file, else None."""
    checkpoint = open_checkpoint(text_encoder_weights(shard_owner(path)))
    return scaled_fp8_dtype({key: checkpoint.dtype(key) for key in checkpoint.keys if key.endswith("scaled_fp8")})
