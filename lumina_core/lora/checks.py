"""What a LoRA file matches on a model, said once: another family's LoRA, nothing matched, keys left unused, a
change of another size.

Shared by `apply_loras` and the ComfyUI node (which parses files with ComfyUI's code and passes module names here),
so both refuse and warn with the same words.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable

from torch import nn

from ..errors import CheckpointError, UnsupportedModelError
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


def check_size(
    path: str | os.PathLike,
    name: str,
    found: tuple[int, int],
    module: str,
    rows: slice,
    layer: nn.Module,
    family_id: str,
) -> None:
    """Raise CheckpointError when the change `name` of `found` (out, in) does not fit `rows` of the Linear `layer`
    at `module`. The families share names (a Z-Image LoRA of the attention reads like a Lumina-Image 2.0 one), so the
    message names the family whose released model has the LoRA's width, where another one has."""
    expected = (rows.stop - rows.start, layer.in_features)
    if tuple(found) == expected:
        return
    family = FAMILIES[family_id].name
    part = "" if expected[0] == layer.out_features else f" rows {rows.start}:{rows.stop}"
    if found[1] != expected[1]:
        others = [f.name for i, f in FAMILIES.items() if i != family_id and f.default_config().dim == found[1]]
        hint = f"; {' and '.join(others)} {'is' if len(others) == 1 else 'are'} {found[1]} wide" if others else ""
        size = f"input width {found[1]} where this one has {expected[1]}{hint}"
    else:
        size = f"{found[0]} output rows where this one has {expected[0]}"
    raise CheckpointError(
        f"{path}: {name} changes a ({found[0]}, {found[1]}) weight, but the layer it names in this {family} model, "
        f"{module}{part}, is ({expected[0]}, {expected[1]}): the LoRA was made for a model of another size or "
        f"family ({size})."
    )
