"""What the forward benches share: our transformer and diffusers' with the same random weights at any size, on any
device and dtype, their inputs for one guided call, timing, FLOP counting and peak memory.

A `Pair` holds both models of one family built from diffusers' class (random weights drawn on the target device, then
mapped onto ours with our key maps, sharing storage where the layouts agree), a batch of 2 (a guided step's
[cond; uncond], the uncond caption half padding), and calls to run each side. `ours(...)` returns velocity
= noise - data; `reference()` returns the same quantity from diffusers, so the two compare directly.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lumina_core.loading.transformer import FAMILIES
from lumina_core.models.lumina2 import default_axes_dims
from lumina_core.tiny import randomise_parameters


@dataclass(frozen=True)
class Size:
    """One bench shape: the model's width and depth and the tokens of one call (batch 2).

    latent: (H, W) latent cells for images, (F, H, W) for video; caption: text tokens (the second sample's second half
    is padding).
    """

    label: str
    dim: int
    layers: int
    heads: int
    latent: tuple[int, ...]
    caption: int
    refiners: int = 1  # Lumina-Image 2.0 only
    kv_heads: int | None = None  # grouped heads (Lumina families); None: heads // 3 (Lumina 2), heads // 4 (Next)


@dataclass
class Pair:
    family: str
    size: Size
    ours: nn.Module
    reference: nn.Module
    inputs: dict[str, Any]
    reference_forward: Callable[[nn.Module], torch.Tensor]  # runs a module of the reference's class on the inputs
    options: dict[str, Any] = field(default_factory=dict)

    def ours_call(self, runner: Callable[..., torch.Tensor] | None = None) -> Callable[[], torch.Tensor]:
        """Our forward (or `runner`, e.g. its compiled form) on the inputs."""
        run = runner if runner is not None else self.ours
        x, sigma, context, mask = (self.inputs[k] for k in ("x", "sigma", "context", "mask"))
        return lambda: run(x, sigma, context, mask, **self.options)

    def reference_call(self, runner: Callable[..., Any] | None = None) -> Callable[[], torch.Tensor]:
        """diffusers' forward (or `runner`, e.g. its compiled form) on the inputs, as our velocity."""
        run = runner if runner is not None else self.reference
        return lambda: self.reference_forward(run)

    @property
    def tokens(self) -> int:
        return self.inputs["tokens"]


def _ours(family: str, reference: nn.Module, **stored) -> nn.Module:
    """Our model holding the reference's weights, mapped as the loader maps a diffusers file (shared storage, except
    the split q/k/v of Lumina 2, concatenated); `stored` is what shapes cannot tell."""
    spec = FAMILIES[family]
    state = reference.state_dict()
    plan, unmatched = spec.map_diffusers_keys(list(state))
    if unmatched:
        raise RuntimeError(f"unmapped reference keys: {unmatched[:5]}")
    ours_state = {
        k: state[sources[0]] if spec.diffusers_copies or len(sources) == 1 else torch.cat([state[s] for s in sources])
        for k, sources in plan.items()
    }
    config = spec.config_from_shapes({k: tuple(v.shape) for k, v in ours_state.items()}, **stored)
    with torch.device("meta"):
        model = spec.build(config)
    model.load_state_dict(ours_state, assign=True)
    return model.eval()


def _random_reference(build: Callable[[], nn.Module], device: str, dtype: torch.dtype) -> nn.Module:
    with torch.device(device):
        reference = build()
    randomise_parameters(reference, seed=0)  # 1/sqrt(fan-in) weights: activations stay in range at any depth
    return reference.to(dtype).eval()


def _text(batch: int, tokens: int, width: int, device: str, dtype: torch.dtype, generator: torch.Generator):
    context = torch.randn(batch, tokens, width, generator=generator).to(device=device, dtype=dtype)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[1:, max(1, tokens // 2) :] = False  # the uncond half of a guided call is a shorter prompt
    return context, mask.to(device)


def lumina2_pair(size: Size, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Pair:
    from diffusers import Lumina2Transformer2DModel

    head_dim = size.dim // size.heads
    axes = default_axes_dims(head_dim)
    reference = _random_reference(
        lambda: Lumina2Transformer2DModel(
            patch_size=2, in_channels=16, hidden_size=size.dim, num_layers=size.layers,
            num_refiner_layers=size.refiners, num_attention_heads=size.heads,
            num_kv_heads=size.kv_heads or max(1, size.heads // 3), multiple_of=256, axes_dim_rope=axes,
            cap_feat_dim=2304,
        ),
        device, dtype,
    )  # fmt: skip
    ours = _ours("lumina2", reference, axes_dims=axes)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, *size.latent, generator=g).to(device=device, dtype=dtype)
    context, mask = _text(2, size.caption, 2304, device, dtype, g)
    sigma = torch.tensor([0.7, 0.7], device=device)

    def reference_forward(module) -> torch.Tensor:
        out = module(hidden_states=x, timestep=1 - sigma, encoder_hidden_states=context, encoder_attention_mask=mask)
        return -out.sample

    inputs = {"x": x, "sigma": sigma, "context": context, "mask": mask, "tokens": math.prod(size.latent) // 4}
    return Pair("lumina2", size, ours, reference, inputs, reference_forward)


def lumina_next_pair(size: Size, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Pair:
    from diffusers import LuminaNextDiT2DModel
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    reference = _random_reference(
        lambda: LuminaNextDiT2DModel(
            sample_size=128, patch_size=2, in_channels=4, hidden_size=size.dim, num_layers=size.layers,
            num_attention_heads=size.heads, num_kv_heads=size.kv_heads or max(1, size.heads // 4), multiple_of=256,
            learn_sigma=True, qk_norm=True, cross_attention_dim=2048,
        ),
        device, dtype,
    )  # fmt: skip
    with torch.no_grad():  # converted checkpoints hold one query projection for both attentions
        for layer in reference.layers:
            layer.attn2.to_q.weight.copy_(layer.attn1.to_q.weight)
            layer.attn2.norm_q.load_state_dict(layer.attn1.norm_q.state_dict())
    ours = _ours("lumina_next", reference, sample_size=128)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, *size.latent, generator=g).to(device=device, dtype=dtype)
    context, mask = _text(2, size.caption, 2048, device, dtype, g)
    sigma = torch.tensor([0.7, 0.7], device=device)
    grid = max(size.latent) // 2
    rope = get_2d_rotary_pos_embed_lumina(size.dim // size.heads, grid, grid).to(device)  # sizes up to the training one
    trained_tokens = (128 // 2) ** 2

    def reference_forward(module) -> torch.Tensor:
        out = module(
            hidden_states=x, timestep=1 - sigma, encoder_hidden_states=context, encoder_mask=mask,
            image_rotary_emb=rope, cross_attention_kwargs={"base_sequence_length": trained_tokens},
        ).sample  # fmt: skip
        return -out[:, :4]

    inputs = {"x": x, "sigma": sigma, "context": context, "mask": mask, "tokens": math.prod(size.latent) // 4}
    return Pair("lumina_next", size, ours, reference, inputs, reference_forward)


def ltxv_pair(size: Size, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Pair:
    from diffusers import LTXVideoTransformer3DModel

    reference = _random_reference(
        lambda: LTXVideoTransformer3DModel(
            num_attention_heads=size.heads, attention_head_dim=size.dim // size.heads, cross_attention_dim=size.dim,
            num_layers=size.layers, caption_channels=4096,
        ),
        device, dtype,
    )  # fmt: skip
    ours = _ours("ltxv", reference, n_heads=size.heads)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 128, *size.latent, generator=g).to(device=device, dtype=dtype)
    context, mask = _text(2, size.caption, 4096, device, dtype, g)
    sigma = torch.tensor([0.7, 0.7], device=device)
    frame_rate = 25.0
    packed = x.flatten(2).transpose(1, 2)
    frames, height, width = size.latent

    def reference_forward(module) -> torch.Tensor:
        out = module(
            packed, context, sigma * 1000, mask.to(dtype), num_frames=frames, height=height, width=width,
            rope_interpolation_scale=(8 / frame_rate, 32, 32), return_dict=False,
        )[0]  # fmt: skip
        return out.transpose(1, 2).unflatten(2, size.latent)

    inputs = {"x": x, "sigma": sigma, "context": context, "mask": mask, "tokens": math.prod(size.latent)}
    return Pair("ltxv", size, ours, reference, inputs, reference_forward, {"frame_rate": frame_rate})


BUILDERS: dict[str, Callable[..., Pair]] = {"lumina2": lumina2_pair, "lumina_next": lumina_next_pair, "ltxv": ltxv_pair}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.float() - reference.float()).norm() / reference.float().norm()).item()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds_per_call(
    fn: Callable[[], Any], iters: int, device: str = "cpu", clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median seconds of `iters` calls after one warm-up call, by `clock` (wall time; `time.process_time` counts the
    CPU time this process got, which other processes on a shared machine do not inflate)."""
    fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = clock()
        fn()
        synchronize(device)
        times.append(clock() - start)
    return statistics.median(times)


def forward_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call (matrix products and attention, as torch's FLOP counter counts)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(
    rows: int, width: int, hidden: int, dtype: torch.dtype, device: str, iters: int,
    clock: Callable[[], float] = time.perf_counter,
) -> float:  # fmt: skip
    """FLOP/s of a plain (rows x width) @ (width x hidden) product: the rate a forward of that width can reach."""
    a = torch.randn(rows, width, dtype=dtype, device=device)
    b = torch.randn(width, hidden, dtype=dtype, device=device)
    return 2 * rows * width * hidden / seconds_per_call(lambda: a @ b, iters, device, clock)
