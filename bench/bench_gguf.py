"""GGUF: dequantization throughput against gguf.quants, and a transformer forward from a GGUF file against the same
model in float, with peak resident memory. Everything runs in one process, so the ratios compare like with like.

1. Dequantization of an 8192 x 2048 weight (16.8 M values, LTX-2B's FFN size) per type: gguf.quants.dequantize
   (numpy, float32) against ours into bf16, f16 and f32 (torch, CPU). Best of --repeats, the two interleaved, as
   the machine's speed drifts. Target: ours to bf16 at least 2x faster for Q4_0, Q8_0, Q4_K and Q6_K.
2. A full-width Lumina-Image 2.0 transformer (hidden 2304, 24 heads, 8 kv heads, FFN 9216; --layers layers and
   --refiners refiner blocks) with random weights, written as float32 safetensors and converted to Q8_0 and Q4_0
   GGUF files, each loaded with load_transformer (float32 compute) and run on 1024 image + 256 caption tokens.
   Prints each forward's time and its slowdown against the float model (target <= 1.3x), and the peak resident
   memory of load + forward above the baseline (VmHWM after /proc/self/clear_refs), beside what it should be:
   the file (memory-mapped; it includes the float-kept layers' stored bytes) + those layers in float32 + the
   largest dequantized weight + the activations (the float run's peak minus its weights).

    python bench/bench_gguf.py [--repeats 5] [--layers 2] [--refiners 1] [--skip-forward] [--skip-dequant]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from peak_memory import proc_status, reset_peak  # noqa: E402 (bench/ is the script's folder)
from safetensors.torch import save_file

from lumina_core.gguf.convert import convert
from lumina_core.gguf.dequant import UNPACKERS, dequantize
from lumina_core.gguf.quantize import K_PACKERS, quantize
from lumina_core.gguf.quantized import QuantizedLinear
from lumina_core.loading.transformer import load_transformer
from lumina_core.models.lumina2 import Lumina2Config, Lumina2Transformer

Q = GGMLQuantizationType
TARGET_TYPES = ("Q4_0", "Q8_0", "Q4_K", "Q6_K")
MB = 2**20
FULL_WIDTH = Lumina2Config(in_channels=16, dim=2304, n_layers=2, n_refiner_layers=1, n_heads=24, n_kv_heads=8,
                           ffn_hidden=9216, cap_feat_dim=2304, axes_dims=(32, 32, 32))  # fmt: skip


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def packed_weight(qtype: Q, rows: int, cols: int) -> np.ndarray:
    """Quantizer output where one exists (gguf-py or ours), else random valid blocks with finite scales."""
    values = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    if qtype in K_PACKERS or qtype in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0):
        return quantize(values, qtype)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = np.random.default_rng(0).integers(0, 256, (rows * cols // block_size, type_size), dtype=np.uint8)
    half = {Q.Q2_K: (80, 82), Q.Q3_K: (108,)}.get(qtype, (0,))
    for offset in half:
        blocks[:, offset : offset + 2] = (
            (np.random.default_rng(1).standard_normal((len(blocks), 1)) * 0.01).astype(np.float16).view(np.uint8)
        )
    return blocks.reshape(rows, -1)


def bench_dequant(repeats: int, rows: int = 8192, cols: int = 2048) -> list[dict]:
    results = []
    for qtype in UNPACKERS:
        packed = packed_weight(qtype, rows, cols)
        tensor = torch.from_numpy(packed)
        dtypes = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
        runs = {f"ours_{k}": partial(dequantize, tensor, qtype, (rows, cols), v) for k, v in dtypes.items()}
        runs["numpy_f32"] = partial(gguf_dequantize, packed, qtype)
        times = {name: [] for name in runs}
        for _ in range(repeats):  # interleaved: each best-of sees the same drift
            for name, run in runs.items():
                times[name].append(best_of(run, 1))
        best = {name: min(values) for name, values in times.items()}
        result = {"type": qtype.name, **{k: round(v, 4) for k, v in best.items()},
                  "speedup_bf16": round(best["numpy_f32"] / best["ours_bf16"], 2),
                  "speedup_f16": round(best["numpy_f32"] / best["ours_f16"], 2)}  # fmt: skip
        results.append(result)
        print(f"{qtype.name:7s} numpy f32 {best['numpy_f32']:.4f} s | ours bf16 {best['ours_bf16']:.4f} "
              f"f16 {best['ours_f16']:.4f} f32 {best['ours_f32']:.4f} s | speedup bf16 {result['speedup_bf16']:.2f}x "
              f"f16 {result['speedup_f16']:.2f}x", flush=True)  # fmt: skip
    return results


# ---- forward ----------------------------------------------------------------------------------------------


def forward_inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 64, 64, generator=generator)  # 32 x 32 patches = 1024 image tokens
    context = torch.randn(1, 256, 2304, generator=generator)
    return x, torch.tensor([0.5]), context, torch.ones(1, 256, dtype=torch.bool)


def run_model(path: Path, repeats: int) -> dict:
    gc.collect()
    reset_peak()
    baseline = proc_status()["VmRSS"]
    start = time.perf_counter()
    model = load_transformer(path, dtype=torch.float32)
    load_s = time.perf_counter() - start
    inputs = forward_inputs()
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model(*inputs)
            times.append(time.perf_counter() - start)
    peak = proc_status()["VmHWM"] - baseline
    seconds = min(times)
    quantized = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    record = {
        "file": path.name, "file_mb": round(path.stat().st_size / MB, 1), "load_s": round(load_s, 2),
        "forward_s": round(seconds, 3), "peak_mb": round(peak / MB, 1),
        "float_params_mb": round(sum(p.numel() * p.element_size() for p in model.parameters()) / MB, 1),
        "packed_mb": round(sum(m.packed.numel() for m in quantized) / MB, 1),
        "largest_layer_f32_mb": round(max((m.in_features * m.out_features * 4 for m in quantized), default=0) / MB, 1),
    }  # fmt: skip
    del model, quantized
    gc.collect()
    return record


def write_random_model(config: Lumina2Config, path: Path) -> Path:
    """A Lumina-Image 2.0 transformer with random weights (norm gains near 1) as a float32 safetensors file."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Lumina2Transformer(config)
    state = {k: torch.randn(v.shape) * (0.02 if v.ndim > 1 else 0.1) + (1.0 if "norm" in k else 0.0)
             for k, v in model.state_dict().items()}  # fmt: skip
    save_file(state, path)
    return path


def bench_forward(repeats: int, layers: int, refiners: int) -> list[dict]:
    config = replace(FULL_WIDTH, n_layers=layers, n_refiner_layers=refiners)
    with tempfile.TemporaryDirectory(prefix="bench_gguf_") as tmp:
        folder = Path(tmp)
        write_random_model(config, folder / "float32.safetensors")
        for type_name in ("Q8_0", "Q4_0"):
            convert(folder / "float32.safetensors", folder / f"model-{type_name}.gguf", type_name)
        records = [run_model(folder / name, repeats) for name in
                   ("float32.safetensors", "model-Q8_0.gguf", "model-Q4_0.gguf")]  # fmt: skip
    reference = records[0]
    activations = reference["peak_mb"] - reference["float_params_mb"]
    for record in records:
        record["slowdown"] = round(record["forward_s"] / reference["forward_s"], 3)
        expected = record["file_mb"] + record["float_params_mb"] + record["largest_layer_f32_mb"] + activations
        record["expected_peak_mb"] = round(expected, 1) if record is not reference else reference["peak_mb"]
        record["peak_over_float"] = round(record["peak_mb"] / reference["peak_mb"], 3)
        print(f"{record['file']:22s} forward {record['forward_s']:.3f} s (x{record['slowdown']:.3f}) | peak "
              f"{record['peak_mb']:.0f} MB ({record['peak_over_float']:.2f} of float; expected <= "
              f"{record['expected_peak_mb']:.0f} MB: file {record['file_mb']:.0f} + float params "
              f"{record['float_params_mb']:.0f} + layer {record['largest_layer_f32_mb']:.0f} + activations "
              f"{activations:.0f})", flush=True)  # fmt: skip
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--refiners", type=int, default=1)
    parser.add_argument("--skip-dequant", action="store_true")
    parser.add_argument("--skip-forward", action="store_true")
    args = parser.parse_args()
    record = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.machine(), "processor": platform.processor()}  # fmt: skip
    if not args.skip_dequant:
        record["dequant"] = bench_dequant(args.repeats)
    if not args.skip_forward:
        record["forward"] = bench_forward(max(2, args.repeats // 2), args.layers, args.refiners)
    print(json.dumps(record))
    if "dequant" in record:
        worst = min(r["speedup_bf16"] for r in record["dequant"] if r["type"] in TARGET_TYPES)
        print(f"dequantization to bf16 vs gguf.quants, slowest of {', '.join(TARGET_TYPES)}: {worst:.2f}x faster")
    if "forward" in record:
        slowdowns = ", ".join(f"{r['file']} x{r['slowdown']:.3f}" for r in record["forward"][1:])
        print(f"forward slowdown against float32: {slowdowns}")


if __name__ == "__main__":
    main()
