"""Whole-graph `torch.compile` of the transformers, made once per model and kept with it.

Every forward of the three families traces into one graph (`fullgraph=True`): nothing in it reads a tensor's value
on the host. What needs host values (trimming the prompts' padding, whether a mask is needed at all, that masks are
right-padded) is done by the sampler once per run (`sampling.sampler.model_text_inputs`, `Conditioning`).

Recompiles: sigma is a tensor input, so stepping through a run never recompiles. Model options (frame rate, RoPE
scaling, ...) are Python values the graph is specialised on: changing one recompiles once. Shapes follow torch's
automatic dynamic shapes (`dynamic=None`): the first call compiles for its exact sizes; a call with a new size
recompiles once into a graph whose changed dims are symbolic, which every later size reuses. So a run compiles once
per batch layout it uses (a guided run also has cond-only calls once CFG truncation stops the uncond pass), and a new
resolution costs at most one more compile in the process, none after that (Z-Image: one more for sizes needing
no image pad tokens, whose count is then 0).

The step cache (`sampling.step_cache`) needs the forward in its four stages, with a host decision between them; each
stage is then compiled on its own, also without a graph break. docs/sampling.md, 'Compilation', has the details.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_ATTRIBUTE = "_lumina_compiled"  # where a model keeps its CompiledModel per backend


class CompiledModel:
    """A model's forward, and on first use each of its cache stages, compiled with `fullgraph=True`.

    Called like the model; `embed`, `probe`, `run_blocks` and `head` are the model's stages, compiled.
    """

    def __init__(self, model: nn.Module, backend: str = "inductor", **options: Any) -> None:
        self.model = model
        self.backend = backend
        self.options = options
        self.forward = self._compile(model.forward)
        self._stages: dict[str, Any] = {}

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.forward(*args, **kwargs)

    def embed(self, *args, **kwargs):
        return self._stage("embed")(*args, **kwargs)

    def probe(self, *args, **kwargs):
        return self._stage("probe")(*args, **kwargs)

    def run_blocks(self, *args, **kwargs):
        return self._stage("run_blocks")(*args, **kwargs)

    def head(self, *args, **kwargs):
        return self._stage("head")(*args, **kwargs)

    def _stage(self, name: str):
        if name not in self._stages:
            self._stages[name] = self._compile(getattr(self.model, name))
        return self._stages[name]

    def _compile(self, function):
        return torch.compile(function, fullgraph=True, dynamic=None, backend=self.backend, **self.options)


def compiled(model: nn.Module, backend: str = "inductor", **options: Any) -> CompiledModel:
    """The model's CompiledModel for this backend, made on the first call and kept on the model for later runs.

    options go to `torch.compile` (e.g. mode="max-autotune") and are only used when it is made.
    """
    kept = model.__dict__.setdefault(_ATTRIBUTE, {})  # a plain dict: not registered as a submodule
    if backend not in kept:
        kept[backend] = CompiledModel(model, backend, **options)
    return kept[backend]
