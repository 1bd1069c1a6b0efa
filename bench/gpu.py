"""The GPU benchmark: our transformers against diffusers' at the released sizes, random weights, bf16 on CUDA.

One command, under 8 minutes on one H200 (the compiles take most of it):

    python bench/gpu.py                                   # all four models
    python bench/gpu.py --models lumina2,ltxv_13b --iters 10
    python bench/gpu.py --tiny --device cpu --dtype float32 --compile-backend eager   # the CPU path CI runs

For each model (Lumina-Image 2.0 2.6B and Lumina-Next 2B at 1024 x 1024, LTX-Video 2B and 13B at 768 x 512 x 97;
one guided call: batch 2, the uncond prompt half padding), in one process with the same weights on both sides:
  - our forward against diffusers' (relative error; bf16 differs by rounding, bound BF16_TOLERANCE);
  - the time of one step (one guided call) for ours eager, ours compiled (`lumina_core.compile`, fullgraph; the
    compile time is printed apart), ours with the step cache on a skipped step (TeaCache reusing the cached residual:
    the cost of a cached step, with its host sync), and diffusers eager; medians of --iters calls;
  - the peak memory each call allocates above the weights;
  - each as a ratio to diffusers eager, and the absolute figures. A JSON line per model, the table, and last the
    geometric mean of ours compiled / diffusers eager.
A compile is not started when less than --compile-reserve seconds of --budget remain (its row says so).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import BUILDERS, Pair, Size, relative_error, seconds_per_call, synchronize
from lumina_core.compile import compiled
from lumina_core.sampling.step_cache import COND_UNCOND, StepCache, TeaCache

BF16_TOLERANCE = 0.05  # relative error of two bf16 forwards of a deep random stack that round differently
RELEASED = {
    "lumina2": ("lumina2", Size("Lumina-Image 2.0 2.6B, 1024x1024", 2304, 26, 24, (128, 128), 256, 2, 8)),
    "lumina_next": ("lumina_next", Size("Lumina-Next 2B, 1024x1024", 2304, 24, 32, (128, 128), 256, kv_heads=8)),
    "ltxv_2b": ("ltxv", Size("LTX-Video 2B, 768x512x97", 2048, 28, 32, (13, 16, 24), 128)),
    "ltxv_13b": ("ltxv", Size("LTX-Video 13B, 768x512x97", 4096, 48, 32, (13, 16, 24), 128)),
}
TINY = {
    "lumina2": ("lumina2", Size("Lumina-Image 2.0 tiny", 96, 2, 4, (8, 12), 6, 1, 2)),
    "lumina_next": ("lumina_next", Size("Lumina-Next tiny", 64, 2, 4, (8, 12), 6, kv_heads=2)),
    "ltxv_2b": ("ltxv", Size("LTX-Video tiny", 64, 2, 2, (2, 3, 4), 6)),
    "ltxv_13b": ("ltxv", Size("LTX-Video tiny, 4 heads", 128, 2, 4, (2, 3, 4), 6)),
}


def peak_bytes(fn, device: str) -> int | None:
    """Memory one call allocates above what was allocated before it (CUDA only)."""
    if not device.startswith("cuda"):
        return None
    synchronize(device)
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated() - before


def cached_step(pair: Pair, runner) -> callable:
    """A call the step cache skips: the stages around the block stack plus the cached residual (and the decision)."""
    cache = StepCache(1e9, TeaCache(1e9).polynomial(pair.family))
    x, sigma, context, mask = (pair.inputs[k] for k in ("x", "sigma", "context", "mask"))

    def call(step: int):
        return cache(runner, x, sigma, context, mask, pair.options, step=step, total=3, rows=COND_UNCOND)

    call(0)  # computes and keeps the residual
    return lambda: call(1)


def bench_model(name: str, family: str, size: Size, args, deadline: float) -> dict:
    start = time.perf_counter()
    pair = BUILDERS[family](size, args.device, args.dtype)
    record = {"model": name, "label": size.label, "build_s": round(time.perf_counter() - start, 1)}
    with torch.inference_mode():
        record["relative_error"] = relative_error(pair.ours_call()(), pair.reference_call()())
        variants = {"diffusers eager": pair.reference_call(), "ours eager": pair.ours_call()}
        if time.perf_counter() + args.compile_reserve < deadline:
            runner = compiled(pair.ours, args.compile_backend)
            compile_start = time.perf_counter()
            pair.ours_call(runner)()
            synchronize(args.device)
            record["compile_s"] = round(time.perf_counter() - compile_start, 1)
            variants["ours compiled"] = pair.ours_call(runner)
        else:
            record["compile_s"] = None  # skipped: the time budget
        variants["ours cached step"] = cached_step(pair, pair.ours)
        for variant, fn in variants.items():
            record[variant] = {
                "ms": seconds_per_call(fn, args.iters, args.device) * 1e3,
                "peak_mb": None if (peak := peak_bytes(fn, args.device)) is None else peak / 2**20,
            }
    del pair, variants
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return record


def print_table(records: list[dict]) -> None:
    print(f"{'model':<34} {'variant':<18} {'ms/step':>9} {'x diffusers':>11} {'peak MB':>9} {'x diffusers':>11}")
    for record in records:
        reference = record["diffusers eager"]
        for variant in ("diffusers eager", "ours eager", "ours compiled", "ours cached step"):
            row = record.get(variant)
            if row is None:
                print(f"{record['label']:<34} {variant:<18} {'skipped (time budget)':>9}")
                continue
            peak = "-" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}"
            peak_ratio = "-" if row["peak_mb"] is None else f"{row['peak_mb'] / reference['peak_mb']:.2f}"
            print(f"{record['label']:<34} {variant:<18} {row['ms']:>9.1f} {row['ms'] / reference['ms']:>11.3f} "
                  f"{peak:>9} {peak_ratio:>11}")  # fmt: skip
        compile_note = "skipped" if record["compile_s"] is None else f"{record['compile_s']} s"
        print(f"{'':<34} relative error vs diffusers {record['relative_error']:.2e}; compile {compile_note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(RELEASED), help=f"comma-separated, from {', '.join(RELEASED)}")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU path tested in CI)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds the whole run may take")
    parser.add_argument("--compile-reserve", type=float, default=120.0, help="seconds a compile needs at least")
    args = parser.parse_args(argv)
    args.dtype = getattr(torch, args.dtype)
    sizes = TINY if args.tiny else RELEASED
    deadline = time.perf_counter() + args.budget
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu (and --tiny) for the CPU path")
        return 2

    records = []
    for name in args.models.split(","):
        family, size = sizes[name]
        record = bench_model(name, family, size, args, deadline)
        records.append(record)
        print(json.dumps({**record, "device": args.device, "dtype": str(args.dtype), "torch": torch.__version__}))
    print_table(records)
    ratios = [r["ours compiled"]["ms"] / r["diffusers eager"]["ms"] for r in records if "ours compiled" in r]
    worst = max(r["relative_error"] for r in records)
    print(f"largest relative error {worst:.2e} (bound {BF16_TOLERANCE} for bf16)")
    if ratios:
        print(f"ratio ours compiled / diffusers eager (geometric mean of {len(ratios)}): "
              f"{math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f}")  # fmt: skip
    return 0 if worst < BF16_TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
