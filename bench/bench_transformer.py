"""Lumina-Image 2.0 transformer forward: ours vs diffusers' Lumina2Transformer2DModel, same random weights.

Full width (2304 hidden, 24 heads, 8 kv heads, FFN 9216) with few layers, on 1024 image tokens
(a 64x64 latent) and 256 caption tokens. Prints per-forward times, our achieved GFLOP/s against a
plain matmul of the same sizes, a JSON record, and the time ratio ours / diffusers last.

    python bench/bench_transformer.py [--layers 2] [--refiners 1] [--iters 5] [--dtype float32]
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

from diffusers import Lumina2Transformer2DModel

from lumina_core.loading.keymaps.lumina2 import map_diffusers_keys
from lumina_core.models.lumina2 import Lumina2Transformer, config_from_shapes


def build_pair(layers: int, refiners: int, dtype: torch.dtype):
    torch.manual_seed(0)
    reference = Lumina2Transformer2DModel(
        patch_size=2, in_channels=16, hidden_size=2304, num_layers=layers, num_refiner_layers=refiners,
        num_attention_heads=24, num_kv_heads=8, multiple_of=256, axes_dim_rope=(32, 32, 32), cap_feat_dim=2304,
    ).to(dtype).eval()  # fmt: skip
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0, 0.02)
    state = reference.state_dict()
    plan, _ = map_diffusers_keys(list(state))
    original = {k: torch.cat([state[s] for s in sources]) for k, sources in plan.items()}
    ours = Lumina2Transformer(config_from_shapes({k: tuple(v.shape) for k, v in original.items()}))
    ours.load_state_dict(original, assign=True)
    return ours.eval(), reference


def forward_flops(cfg, image_tokens: int, caption_tokens: int) -> float:
    """Multiply-adds x 2 of the linear layers and attention, per sample."""
    d, hd = cfg.dim, cfg.head_dim
    qkv = d * (cfg.n_heads + 2 * cfg.n_kv_heads) * hd
    per_token = qkv + d * d + 3 * d * cfg.ffn_hidden + cfg.t_emb_dim * 0  # adaLN is per sample, negligible

    def stack(tokens: int, blocks: int) -> float:
        return blocks * (2 * tokens * per_token + 4 * tokens * tokens * d)

    joint = image_tokens + caption_tokens
    return (stack(caption_tokens, cfg.n_refiner_layers) + stack(image_tokens, cfg.n_refiner_layers)
            + stack(joint, cfg.n_layers))  # fmt: skip


def time_calls(fn, iters: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def matmul_gflops(tokens: int, dim: int, hidden: int, dtype: torch.dtype, iters: int) -> float:
    a, b = torch.randn(tokens, dim, dtype=dtype), torch.randn(dim, hidden, dtype=dtype)
    seconds = time_calls(lambda: a @ b, iters)
    return 2 * tokens * dim * hidden / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--refiners", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    ours, reference = build_pair(args.layers, args.refiners, dtype)
    image_tokens, caption_tokens = 1024, 256
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 16, 64, 64, generator=g).to(dtype)
    context = torch.randn(args.batch, caption_tokens, 2304, generator=g).to(dtype)
    mask = torch.ones(args.batch, caption_tokens, dtype=torch.bool)
    sigma = torch.full((args.batch,), 0.5)

    with torch.inference_mode():
        error = ((ours(x, sigma, context, mask) + reference(x, 1 - sigma, context, mask).sample).norm()
                 / reference(x, 1 - sigma, context, mask).sample.norm()).item()  # fmt: skip
        ours_s = time_calls(lambda: ours(x, sigma, context, mask), args.iters)
        ref_s = time_calls(lambda: reference(x, 1 - sigma, context, mask), args.iters)
        ours_s = min(ours_s, time_calls(lambda: ours(x, sigma, context, mask), args.iters))
        ref_s = min(ref_s, time_calls(lambda: reference(x, 1 - sigma, context, mask), args.iters))

    flops = forward_flops(ours.config, image_tokens, caption_tokens) * args.batch
    achieved = flops / ours_s / 1e9
    peak = matmul_gflops(image_tokens + caption_tokens, 2304, 9216, dtype, args.iters)
    record = {
        "bench": "lumina2_transformer_forward", "device": "cpu", "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "dtype": args.dtype,
        "layers": args.layers, "refiners": args.refiners, "batch": args.batch,
        "image_tokens": image_tokens, "caption_tokens": caption_tokens,
        "ours_ms": round(ours_s * 1e3, 1), "diffusers_ms": round(ref_s * 1e3, 1),
        "ours_gflops": round(achieved, 1), "plain_matmul_gflops": round(peak, 1), "relative_error": error,
    }  # fmt: skip
    print(json.dumps(record))
    print(f"ours {ours_s * 1e3:.1f} ms, diffusers {ref_s * 1e3:.1f} ms per forward; "
          f"ours {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of a plain {image_tokens + caption_tokens}x2304x9216 "
          f"matmul ({peak:.1f} GFLOP/s)")  # fmt: skip
    print(f"ratio ours/diffusers: {ours_s / ref_s:.3f}")


if __name__ == "__main__":
    main()
