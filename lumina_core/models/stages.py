"""The forward every transformer of the package is made of: embed -> run_blocks -> head.

The step cache (`sampling/step_cache.py`) works between these stages, and `probe` beside them gives it the first
block's modulated input; `lumina_core.compile` compiles the forward whole or each stage on its own.
"""

from __future__ import annotations

import functools
import types

import torch
from torch import nn


class StagedForward(nn.Module):
    """A model whose forward is head(run_blocks(embed(...))); subclasses define the stages and `probe`.

    embed(x, sigma, context, context_mask, **options) -> (state, hidden): everything before the block stack;
    run_blocks(state, hidden) -> hidden: the stack the step cache may skip; head(state, hidden) -> velocity.
    """

    def forward(self, *args, **kwargs) -> torch.Tensor:
        state, hidden = self.embed(*args, **kwargs)
        return self.head(state, self.run_blocks(state, hidden))

    def __init_subclass__(cls, **kwargs) -> None:
        """Give each family its own copy of `forward`, named after the class. torch.compile keeps a history of input
        shapes per function (file, line, name) and marks the dims that changed as dynamic: one shared forward would
        carry Lumina 2's 4-D latents into LTX-Video's 5-D ones in the same process, and LTX-Video's trace then
        fails on its own sigma check."""
        super().__init_subclass__(**kwargs)
        if "forward" not in cls.__dict__:
            shared, name = StagedForward.forward, f"{cls.__qualname__}.forward"  # torch keys the history by name
            code = shared.__code__.replace(co_name=name, co_qualname=name)
            forward = types.FunctionType(code, shared.__globals__, "forward", shared.__defaults__, shared.__closure__)
            cls.forward = functools.update_wrapper(forward, shared)
            forward.__qualname__ = name
