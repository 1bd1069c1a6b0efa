"""Layer classes a host can supply, and casting of a module's own parameters where they are used.

Every model of the package builds its Linear / Conv / norm / embedding layers from an `operations` namespace
(default: `torch.nn`), the way ComfyUI's model code does, so that a host can hand in layers that keep their
weights in a storage dtype or on another device and cast them per call (ComfyUI's `comfy.ops`). Parameters a
model owns directly (pad tokens, scale-shift tables, gates, norm gains) are cast with `cast_to` at their use,
so the forward never assumes that the weights sit on the input's device or in its dtype.
"""

from __future__ import annotations

import torch


def cast_to(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`tensor` on `like`'s device and in its dtype; the same tensor when it already is."""
    return tensor.to(device=like.device, dtype=like.dtype)
