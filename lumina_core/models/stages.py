"""The forward every transformer of the package is made of: embed -> run_blocks -> head.

The step cache (`sampling/step_cache.py`) works between these stages, and `probe` beside them gives it the first
block's modulated input; `lumina_core.compile` compiles the forward whole or each stage on its own.
"""

from __future__ import annotations

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
