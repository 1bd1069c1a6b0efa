"""torch.compile on the CPU: forward time of ours eager, ours compiled, diffusers eager and diffusers compiled.

For each family, one guided call (batch 2, the second caption half padding) at two sizes:
  - "bench": the sizes of the other forward benches (Lumina-Image 2.0 and Lumina-Next at full width 2304 with 2 layers
    (Lumina 2: + 1 refiner) on 1024 image tokens and 256 caption tokens; LTX-Video at the 2B width 2048, 1 layer, 384
    video tokens and 128 caption tokens);
  - "narrow": width 1024, 4 layers, 1024 image/video tokens and 64 caption tokens, where the elementwise work
    compilation fuses weighs more against the matrix products.
Ours compiles with `lumina_core.compile` (fullgraph=True); diffusers' model with a plain `torch.compile` (graph breaks
allowed, as its Lumina models have some). Variants run interleaved in --rounds rounds and each keeps its fastest
median. Prints per family and size the times, the achieved FLOP rate of ours (eager and compiled) as a fraction of a
plain float32 matmul of the same width measured in this process, a JSON record, and last the worst ratio of ours
compiled to diffusers compiled.

    python bench/bench_compile.py [--families lumina2,lumina_next,ltxv] [--sizes bench,narrow] [--iters 3] [--rounds 2]
                                  [--threads 1 --clock cpu]   # on a machine other work shares
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

from bench.harness import BUILDERS, Size, forward_flops, matmul_rate, relative_error, seconds_per_call
from lumina_core.compile import compiled

SIZES = {
    "bench": {
        "lumina2": Size("full width", 2304, 2, 24, (64, 64), 256, refiners=1, kv_heads=8),
        "lumina_next": Size("full width", 2304, 2, 32, (64, 64), 256, kv_heads=8),
        "ltxv": Size("2B width", 2048, 1, 32, (2, 12, 16), 128),
    },
    "narrow": {
        "lumina2": Size("narrow", 1024, 4, 16, (64, 64), 64, refiners=1, kv_heads=4),
        "lumina_next": Size("narrow", 1024, 4, 16, (64, 64), 64, kv_heads=4),
        "ltxv": Size("narrow", 1024, 4, 16, (4, 16, 16), 64),
    },
}
VARIANTS = ("ours eager", "ours compiled", "diffusers eager", "diffusers compiled")


def bench(family: str, size_name: str, args) -> dict:
    size = SIZES[size_name][family]
    pair = BUILDERS[family](size)
    calls = {
        "ours eager": pair.ours_call(),
        "ours compiled": pair.ours_call(compiled(pair.ours)),
        "diffusers eager": pair.reference_call(),
        "diffusers compiled": pair.reference_call(torch.compile(pair.reference)),
    }
    record = {"family": family, "size": size_name, "dim": size.dim, "layers": size.layers, "tokens": pair.tokens,
              "caption": size.caption, "batch": 2}  # fmt: skip
    with torch.inference_mode():
        expected = calls["diffusers eager"]()
        record["error_eager"] = relative_error(calls["ours eager"](), expected)
        for name in ("ours compiled", "diffusers compiled"):  # the first call compiles
            start = time.perf_counter()
            out = calls[name]()
            record[f"compile_s {name}"] = round(time.perf_counter() - start, 1)
            record[f"error {name}"] = relative_error(out, expected)
        best = {name: float("inf") for name in VARIANTS}
        for _ in range(args.rounds):
            for name in VARIANTS:
                best[name] = min(best[name], seconds_per_call(calls[name], args.iters, clock=args.clock))
        flops = forward_flops(calls["ours eager"])
    rows = 2 * (pair.tokens + size.caption)
    matmul = matmul_rate(rows, size.dim, pair.ours.config.ffn_hidden, torch.float32, "cpu", args.iters, args.clock)
    record.update({f"{name} ms": round(best[name] * 1e3, 1) for name in VARIANTS})
    record["gflop"] = round(flops / 1e9, 2)
    record["matmul_gflops"] = round(matmul / 1e9, 1)
    for name in ("ours eager", "ours compiled"):
        record[f"{name} of matmul"] = round(flops / best[name] / matmul, 3)
    record["compiled / diffusers compiled"] = round(best["ours compiled"] / best["diffusers compiled"], 3)
    record["compiled / ours eager"] = round(best["ours compiled"] / best["ours eager"], 3)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="lumina2,lumina_next,ltxv")
    parser.add_argument("--sizes", default="bench,narrow")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: the CPU time this process got (with --threads 1, for a machine shared with "
                             "other work)")  # fmt: skip
    args = parser.parse_args()
    args.clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)

    records = []
    for size_name in args.sizes.split(","):
        for family in args.families.split(","):
            record = bench(family, size_name, args)
            record.update(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                          clock="cpu" if args.clock is time.process_time else "wall",
                          torch=torch.__version__)  # fmt: skip
            records.append(record)
            print(json.dumps(record), flush=True)
    print(f"{'family':<12} {'size':<7} " + " ".join(f"{name:>19}" for name in VARIANTS)
          + f" {'eager/matmul':>13} {'compiled/matmul':>16}")  # fmt: skip
    for r in records:
        times = " ".join(f"{r[f'{name} ms']:>16.1f} ms" for name in VARIANTS)
        print(f"{r['family']:<12} {r['size']:<7} {times} {r['ours eager of matmul']:>13.0%} "
              f"{r['ours compiled of matmul']:>16.0%}")  # fmt: skip
    for r in records:
        print(f"{r['family']} {r['size']}: ours compiled / diffusers compiled "
              f"{r['compiled / diffusers compiled']:.3f}, ours compiled / ours eager "
              f"{r['compiled / ours eager']:.3f}")  # fmt: skip
    worst = max(records, key=lambda r: r["compiled / diffusers compiled"])
    print(f"ratio ours compiled / diffusers compiled, worst ({worst['family']} {worst['size']}): "
          f"{worst['compiled / diffusers compiled']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
