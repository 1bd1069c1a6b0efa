"""What a LoRA file matches on a model, said once: another family's LoRA, nothing matched, keys left unused.

Shared by `apply_loras` and the ComfyUI node (which parses files with ComfyUI's code and passes module names here),
so both refuse and warn with the same words.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable

from ..errors import UnsupportedModelError
from ..loading.files import preview
from ..loading.transformer import FAMILIES
from .targets import family_votes, foreign_model, is_text_encoder

logger = logging.getLogger("lumina_core.lora")


def check_family(family_id: str, path: str | os.PathLike, names: Iterable[str]) -> None:
    """Raise UnsupportedModelError naming both families when the LoRA's module `names` are another family's."""
    names = [n for n in names if not is_text_encoder(n)]
    votes = family_votes(names)
    best, count = votes.most_common(1)[0]
    if count > votes[family_id]:
        other, ours = FAMILIES[best].name, FAMILIES[family_id].name
        raise UnsupportedModelError(
            f"{path} is a LoRA for {other} ({count} of its {len(names)} layer names are {other}'s), but this model "
            f"is {ours}. Load it with a {other} model."
        )


def nothing_matches(family_id: str, path: str | os.PathLike, key_count: int, names: Iterable[str]) -> str:
    """The message for a LoRA none of whose keys names a layer of the model: the file, examples, what it looks like."""
    family = FAMILIES[family_id].name
    names = sorted(names)
    if names and all(is_text_encoder(n) for n in names):
        return f"{path} changes only a text encoder ({preview(names, 3)}); it has nothing for the {family} model."
    other = foreign_model(names)
    looks = f" It looks like a LoRA for {other}." if other else ""
    return (
        f"{path}: none of its {key_count} keys names a layer of this {family} model (e.g. "
        f"{preview(names, 3)}).{looks} Expected original/ComfyUI, diffusers or kohya names of {family} layers."
    )


def warn_unused(file_name: str, unused: list[str], key_count: int, family_id: str, stacklevel: int = 2) -> None:
    """One warning (logged, and a Python warning) for the keys of a LoRA that match no layer: count and examples.

    stacklevel: as `warnings.warn`'s, counted from the caller of this function."""
    message = (
        f"LoRA {file_name}: {len(unused)} of its {key_count} keys match no layer of this {FAMILIES[family_id].name} "
        f"model and are not applied (e.g. {preview(sorted(unused), 3)})"
    )
    logger.warning(message)
    warnings.warn(message, stacklevel=stacklevel + 1)
