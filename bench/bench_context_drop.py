"""Context drop (Lumina-Next key/value merging): attention time with and without it, on the CPU by default.

At a 2048 x 2048 image the released Lumina-Next attends over 128 x 128 = 16384 image tokens (32 query
heads, 8 kv heads, head dim 72). Context drop with ratio r averages every r x r window of image keys and
values, so self-attention runs over N / r^2 keys while all N queries stay. Times:

- self-attention: RoPE on the keys, the merge (when on) and SDPA with the proportional-attention scale:
  the part context drop changes;
- attention module: Lumina-Next's whole `Attention` (q/k/v/out projections, self-attention and the
  gated cross-attention to a 256-token caption), which the merge does not shorten elsewhere.

Prints best-of-N per-call times, a JSON record, and the self-attention speed-up (full / dropped) last.

    python bench/bench_context_drop.py [--height 2048] [--width 2048] [--ratio 2] [--iters 2] [--heads 32]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lumina_core.common.attention import attention
from lumina_core.common.rope import apply_rope
from lumina_core.models.lumina_next import (
    VAE_DOWNSCALE,
    Attention,
    LuminaNextConfig,
    grid_positions,
    merge_tokens,
    rope_2d,
)


def time_pair(first, second, iters: int) -> tuple[float, float]:
    """Best-of-`iters` seconds per call of two functions, called alternately after one warm-up each.

    Alternating and keeping the fastest call makes the ratio robust to other work on a shared machine.
    """
    first(), second()
    best = [math.inf, math.inf]
    for _ in range(iters):
        for i, fn in enumerate((first, second)):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=2048, help="image height in pixels")
    parser.add_argument("--width", type=int, default=2048, help="image width in pixels")
    parser.add_argument("--ratio", type=int, default=2, help="context drop ratio (r x r key/value windows)")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=72)
    parser.add_argument("--caption", type=int, default=256, help="caption tokens for the module timing")
    parser.add_argument("--iters", type=int, default=3, help="timed calls of each (best is kept)")
    parser.add_argument("--skip-module", action="store_true", help="time self-attention only")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    grid = (args.height // (VAE_DOWNSCALE * 2), args.width // (VAE_DOWNSCALE * 2))  # patch 2
    n_tokens = grid[0] * grid[1]
    cfg = LuminaNextConfig(
        dim=args.heads * args.head_dim, n_layers=1, n_heads=args.heads, n_kv_heads=args.kv_heads, ffn_hidden=256
    )
    scale = math.sqrt(math.log(n_tokens) / math.log(4096) / cfg.head_dim)  # proportional attention, 1024 px base
    positions = grid_positions(*grid)
    rope = tuple(t.to(device) for t in rope_2d(positions, cfg.head_dim, cfg.rope_theta, 1.0, 1.0))
    merged_rope = rope_2d(merge_tokens(positions, grid, args.ratio), cfg.head_dim, cfg.rope_theta, 1.0, 1.0)
    merged_rope = tuple(t.to(device) for t in merged_rope)
    q = torch.randn(1, n_tokens, cfg.n_heads, cfg.head_dim, dtype=dtype, device=device)
    k, v = (torch.randn(1, n_tokens, cfg.n_kv_heads, cfg.head_dim, dtype=dtype, device=device) for _ in range(2))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def full():
        attention(q, apply_rope(k, *rope), v, scale=scale)
        sync()

    def dropped():
        merged_k = apply_rope(merge_tokens(k, grid, args.ratio), *merged_rope)
        attention(q, merged_k, merge_tokens(v, grid, args.ratio), scale=scale)
        sync()

    with torch.no_grad():
        full_s, dropped_s = time_pair(full, dropped, args.iters)
        record = {
            "device": str(device), "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": args.dtype,
            "image": [args.height, args.width],
            "image_tokens": n_tokens, "merged_keys": merge_tokens(positions, grid, args.ratio).shape[1],
            "heads": cfg.n_heads, "kv_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "ratio": args.ratio,
            "iters": args.iters, "self_attention_s": {"full": full_s, "dropped": dropped_s},
        }  # fmt: skip
        print(f"self-attention  full {full_s:8.3f} s   context drop x{args.ratio} {dropped_s:8.3f} s")
        if not args.skip_module:
            module = Attention(cfg).to(device=device, dtype=dtype).eval()
            x = torch.randn(1, n_tokens, cfg.dim, dtype=dtype, device=device)
            caption = torch.randn(1, args.caption, cfg.cap_feat_dim, dtype=dtype, device=device)
            common = dict(caption=caption, caption_mask=None, rope=rope, scale=scale)

            def module_call(merge, key_rope):
                module(x, key_rope=key_rope, merge=merge, **common)
                sync()

            module_full, module_dropped = time_pair(
                lambda: module_call(None, rope), lambda: module_call((grid, args.ratio), merged_rope), args.iters
            )
            record["attention_module_s"] = {"full": module_full, "dropped": module_dropped}
            record["attention_module_speedup"] = module_full / module_dropped
            print(f"attention module full {module_full:8.3f} s   context drop x{args.ratio} {module_dropped:8.3f} s")
    speedup = full_s / dropped_s
    record["self_attention_speedup"] = speedup
    print(json.dumps(record))
    print(f"self-attention speed-up at ratio {args.ratio}: {speedup:.2f}x")


if __name__ == "__main__":
    main()
