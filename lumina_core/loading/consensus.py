"""Shapes to derive a config from when one tensor of a repeated block is damaged.

A config is read from the first block's tensors (`layers.0.feed_forward.w1.weight` gives the FFN width). If that
one tensor is damaged (transposed, truncated by hand), the config built from it is wrong for every other block and
the strict check then reports every intact tensor as mis-shaped while calling the damaged one right. Here each
block tensor takes the shape most of its siblings have: the same tensor in the other blocks of its list
(`layers.*`), and, where a list is split evenly (two layers, one damaged), the same tensor in every block list
(`noise_refiner.*`, `context_refiner.*`). The config then comes from tensors that agree, and the strict check
names the one that does not, with the shape it should have.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping

# layers.3.attention.qkv.weight: a block holds submodules, so its tensors' paths go on past one more dot; an
# nn.Sequential's "cap_embedder.1.weight" does not and is not a block.
_BLOCK_KEY = re.compile(r"^(?P<stack>.+?)\.(?P<index>\d+)\.(?P<rest>[^.]+\..+)$")

Shape = tuple[int, ...]


def consensus_shapes(shapes: Mapping[str, Shape]) -> dict[str, Shape]:
    """`shapes` with every block tensor that disagrees with a clear majority of its siblings given their shape.

    Tensors outside numbered blocks, and those with no clear majority either way, keep their own shape.
    """
    by_stack: dict[tuple[str, str], list[Shape]] = defaultdict(list)
    by_rest: dict[str, list[Shape]] = defaultdict(list)
    for key, shape in shapes.items():
        if match := _BLOCK_KEY.match(key):
            by_stack[match["stack"], match["rest"]].append(tuple(shape))
            by_rest[match["rest"]].append(tuple(shape))
    agreed = dict(shapes)
    for key in shapes:
        match = _BLOCK_KEY.match(key)
        if match is None:
            continue
        majority = _clear_majority(by_stack[match["stack"], match["rest"]]) or _clear_majority(by_rest[match["rest"]])
        if majority is not None:
            agreed[key] = majority
    return agreed


def _clear_majority(candidates: list[Shape]) -> Shape | None:
    """The shape more than half of the candidates have, if any."""
    (shape, count), *_ = Counter(candidates).most_common(1)
    return shape if count * 2 > len(candidates) else None
