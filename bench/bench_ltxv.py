"""LTX-Video transformer forward: ours vs diffusers' LTXVideoTransformer3DModel, same random weights.

The released 2B width (2048 = 32 heads x 64, FFN 8192, T5-XXL captions of width 4096) with few layers, on a
moderate CPU-sized video latent (default 2 x 12 x 16 = 384 tokens: 9 frames of 384 x 512) and 128 caption
tokens, half of them padding in one of the two samples; batch 2, as a guided step runs. Prints per-forward
times, a JSON record, and the time ratio ours / diffusers last.

    python bench/bench_ltxv.py [--layers 1] [--frames 2] [--height 12] [--width 16] [--iters 3] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import LTXVideoTransformer3DModel

from lumina_core.loading.keymaps.ltxv import map_diffusers_keys
from lumina_core.models.ltxv import LTXVideoTransformer, config_from_shapes


def build_pair(layers: int, dtype: torch.dtype):
    torch.manual_seed(0)
    reference = LTXVideoTransformer3DModel(num_layers=layers).eval()  # 2B defaults: 32 x 64 heads
    if dtype != torch.float32:
        reference = reference.to(dtype)
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0, 0.02)
    state = reference.state_dict()
    plan, _ = map_diffusers_keys(list(state))
    original = {k: state[sources[0]] for k, sources in plan.items()}
    ours = LTXVideoTransformer(config_from_shapes({k: tuple(v.shape) for k, v in original.items()}, n_heads=32))
    ours.load_state_dict(original, assign=True)
    return ours.eval(), reference


def time_calls(fn, iters: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--frames", type=int, default=2, help="latent frames")
    parser.add_argument("--height", type=int, default=12, help="latent rows")
    parser.add_argument("--width", type=int, default=16, help="latent columns")
    parser.add_argument("--caption", type=int, default=128, help="caption tokens")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    ours, reference = build_pair(args.layers, dtype)
    grid = (args.frames, args.height, args.width)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 128, *grid, generator=g).to(dtype)
    context = torch.randn(2, args.caption, 4096, generator=g).to(dtype)
    mask = torch.ones(2, args.caption, dtype=torch.bool)
    mask[1, args.caption // 2 :] = False
    sigma = torch.tensor([0.7, 0.3])
    packed = x.flatten(2).transpose(1, 2)
    frame_rate = 25.0

    def run_ours():
        return ours(x, sigma, context, mask, frame_rate=frame_rate)

    def run_reference():
        positions = dict(
            num_frames=grid[0], height=grid[1], width=grid[2], rope_interpolation_scale=(8 / frame_rate, 32, 32)
        )
        out = reference(packed, context, sigma * 1000, mask.to(dtype), return_dict=False, **positions)[0]
        return out.transpose(1, 2).unflatten(2, grid)

    with torch.inference_mode():
        expected = run_reference()
        error = ((run_ours().float() - expected.float()).norm() / expected.float().norm()).item()
        ours_s = time_calls(run_ours, args.iters)
        ref_s = time_calls(run_reference, args.iters)
        ours_s = min(ours_s, time_calls(run_ours, args.iters))
        ref_s = min(ref_s, time_calls(run_reference, args.iters))

    record = {
        "bench": "ltxv_transformer_forward", "device": "cpu", "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "dtype": args.dtype,
        "layers": args.layers, "batch": 2, "latent": list(grid), "video_tokens": grid[0] * grid[1] * grid[2],
        "caption_tokens": args.caption, "ours_ms": round(ours_s * 1e3, 1), "diffusers_ms": round(ref_s * 1e3, 1),
        "relative_error": error,
    }  # fmt: skip
    print(json.dumps(record))
    print(f"ours {ours_s * 1e3:.1f} ms, diffusers {ref_s * 1e3:.1f} ms per forward (batch 2)")
    print(f"ratio ours/diffusers: {ours_s / ref_s:.3f}")


if __name__ == "__main__":
    main()
