"""LoRA on float and GGUF models: forward time with 0, 1 and 4 LoRAs, all in one process.

A full-width Lumina-Image 2.0 transformer (as in bench_gguf.py: hidden 2304, 24 heads over 8 kv heads, FFN 9216,
--layers layers and --refiners refiner blocks, random weights) as float32 safetensors, converted to Q8_0 and Q4_K
GGUF files, each loaded with load_transformer and run in float32 on 1024 image + 256 caption tokens. The LoRAs have
rank --rank and change every Linear of every block; two use ComfyUI's fused qkv, two trainers' separate q, k and v,
so with all four a GGUF qkv layer carries 2 x r + 2 x 3 x r stacked ranks.

Per model: no LoRA, then 1 and 4 LoRAs through `apply_loras` (float layers merged, GGUF layers on the side path),
and for the GGUF models the approach to beat: the same 4 LoRAs re-merged into each dequantized weight on every call
(dequantize, add every strength x up @ down in float32 on its rows, then the matmul), which is what makes several
LoRAs slow on GGUF models in city96/ComfyUI-GGUF#36. Each round times every configuration once; each time is the
best of --repeats rounds, as the machine's speed drifts. Torch runs on --threads threads (default 1) and the time
is the CPU time of the timing thread (`time.thread_time`; the wall time is printed beside it): on a shared machine
the wall time measures the neighbours more than the model. Target: 4 LoRAs <= 1.15x the LoRA-free time everywhere.

    python bench/bench_lora.py [--repeats 3] [--layers 2] [--refiners 1] [--rank 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gguf import FULL_WIDTH, forward_inputs, write_random_model  # noqa: E402 (bench/ is the script's folder)
from safetensors.torch import save_file

from lumina_core.gguf.convert import convert
from lumina_core.gguf.quantized import QuantizedLinear
from lumina_core.loading.keymaps.lumina2 import qkv_rows
from lumina_core.loading.transformer import load_transformer
from lumina_core.lora import apply_loras
from lumina_core.lora.side_path import LowRankLinear

MODELS = ("float32.safetensors", "model-Q8_0.gguf", "model-Q4_K.gguf")
STRENGTHS = (0.8, 0.6, -0.5, 0.4)
TARGET = 1.15


def write_loras(model: nn.Module, folder: Path, rank: int) -> list[Path]:
    """Four LoRA files for every block Linear of `model`: two with fused qkv changes, two with separate q, k, v."""
    generator = torch.Generator().manual_seed(1)
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, QuantizedLinear))
              and name.startswith(("layers.", "noise_refiner.", "context_refiner."))}  # fmt: skip
    paths = []
    for index in range(4):
        tensors = {}
        for name, layer in blocks.items():
            parts = {name: layer.out_features}
            if index >= 2 and name.endswith(".attention.qkv"):
                rows = qkv_rows(layer.out_features, layer.in_features)
                parts = {name[: -len("qkv")] + f"to_{p}": n for p, n in zip("qkv", rows)}
            for part, out_features in parts.items():
                down = torch.randn(rank, layer.in_features, generator=generator) * 0.01
                tensors[f"diffusion_model.{part}.lora_A.weight"] = down
                up = torch.randn(out_features, rank, generator=generator) * 0.01
                tensors[f"diffusion_model.{part}.lora_B.weight"] = up
        paths.append(folder / f"lora{index}.safetensors")
        save_file(tensors, paths[-1])
    return paths


class RemergedEveryCall(nn.Module):
    """The approach to beat: each call dequantizes the weight and adds every change to it before the matmul."""

    def __init__(self, side_path: LowRankLinear, rank: int):
        super().__init__()
        self.layer = side_path.layer
        self.changes = []  # (rows, up (rows, rank), down (rank, in)), one per change as the files hold them
        for start in range(0, side_path.down.shape[0], rank):
            up = side_path.up[:, start : start + rank]
            used = up.abs().sum(dim=1).nonzero().flatten()
            rows = slice(int(used.min()), int(used.max()) + 1)
            self.changes.append((rows, up[rows].clone(), side_path.down[start : start + rank].clone()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.layer.dequantized_weight(torch.float32, x.device)
        for rows, up, down in self.changes:
            weight[rows] += up @ down
        return F.linear(x, weight.to(x.dtype), self.layer.bias)


def remerged_every_call(patched: nn.Module, rank: int) -> nn.Module:
    """`patched` (from apply_loras) with every side path swapped for re-merging in the forward (in place)."""
    for name, module in list(patched.named_modules()):
        if isinstance(module, LowRankLinear):
            parent, _, child = name.rpartition(".")
            patched.get_submodule(parent)._modules[child] = RemergedEveryCall(module, rank)
    return patched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--refiners", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.process_time
    config = replace(FULL_WIDTH, n_layers=args.layers, n_refiner_layers=args.refiners)
    inputs = forward_inputs()
    with tempfile.TemporaryDirectory(prefix="bench_lora_") as tmp:
        folder = Path(tmp)
        write_random_model(config, folder / MODELS[0])
        for name in MODELS[1:]:
            convert(folder / MODELS[0], folder / name, name.removeprefix("model-").removesuffix(".gguf"))
        bases = {name: load_transformer(folder / name, dtype=torch.float32) for name in MODELS}
        loras = write_loras(bases[MODELS[0]], folder, args.rank)
        runs = {}
        for name, base in bases.items():
            runs[(name, "0 LoRAs")] = base
            runs[(name, "1 LoRA")] = apply_loras(base, [(loras[0], STRENGTHS[0])])
            runs[(name, "4 LoRAs")] = apply_loras(base, list(zip(loras, STRENGTHS)))
            if name.endswith(".gguf"):
                four = apply_loras(base, list(zip(loras, STRENGTHS)))
                runs[(name, "4 LoRAs re-merged every call")] = remerged_every_call(four, args.rank)
        times = {key: [] for key in runs}
        walls = {key: [] for key in runs}
        with torch.no_grad():
            for _ in range(args.repeats):
                for key, model in runs.items():
                    start, wall = clock(), time.perf_counter()
                    model(*inputs)
                    times[key].append(clock() - start)
                    walls[key].append(time.perf_counter() - wall)
    best = {key: min(values) for key, values in times.items()}
    records = []
    for (name, what), seconds in best.items():
        ratio = seconds / best[(name, "0 LoRAs")]
        wall = min(walls[(name, what)])
        records.append({"model": name, "loras": what, "forward_cpu_s": round(seconds, 3), "wall_s": round(wall, 3),
                        "vs_no_lora": round(ratio, 3)})  # fmt: skip
        print(f"{name:20s} {what:30s} {seconds:7.3f} s CPU ({wall:7.3f} s wall)  x{ratio:.3f}", flush=True)
    record = {"device": "cpu", "threads": args.threads, "torch": torch.__version__,
              "machine": platform.machine(), "rank": args.rank, "layers": args.layers, "refiners": args.refiners,
              "runs": records}  # fmt: skip
    print(json.dumps(record))
    worst = max(r["vs_no_lora"] for r in records if r["loras"] == "4 LoRAs")
    remerged = ", ".join(f"{r['model']} x{r['vs_no_lora']:.2f}" for r in records if "re-merged" in r["loras"])
    four = ", ".join(f"{r['model']} x{r['vs_no_lora']:.3f}" for r in records if r["loras"] == "4 LoRAs")
    print(f"re-merging 4 LoRAs every call instead: {remerged}")
    print(f"4 LoRAs vs none: {four}; worst x{worst:.3f} (target <= {TARGET})")


if __name__ == "__main__":
    main()
