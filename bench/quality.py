"""What each approximation costs in picture quality, measured on the tiny trained shapes model.

Every variant draws the same 20 held-out captions from the same 20 seeds (`lumina_core.shapes`), and each
picture is compared with the float32 reference picture of the same caption and seed: PSNR (dB, over RGB in
[0, 1]) and SSIM (Gaussian window 11, sigma 1.5, on luma; Wang et al. 2004), averaged over the 20, and the
semantic score: the share of the 20 pictures in which colour masks find every named colour in its named place.

References. Weight, compute and step-cache variants (GGUF types, fp8 storage, bf16, TeaCache thresholds) sample
with the shipped workflow's recipe (midpoint, 18 steps, shifted schedule with shift 6, cfg 4) and are compared
with float32 at that recipe, so only the weights, the arithmetic or the skipped blocks differ. Sampler variants
(solver x steps x schedule) run float32 and are compared with the converged solution of the same guided flow
(rk4, 200 steps), so the number is the discretisation error alone. Model calls (NFE) count a batched cond +
uncond call once, and leave out the calls a step cache skipped.

Adding a row: append a `Variant` to `VARIANTS` (or to the list `build_variants` returns): a name, a group, a
`transformer` factory (the model to sample with; default the float32 one) and `sampler` keywords for
`lumina_core.sample` (e.g. `model_options` for step caching). Limits: a 64x64 toy with 16 image tokens is not
Lumina-Image 2.0; the table ranks approximations, it does not predict their effect on the real model.

    python bench/quality.py [--folder lumina_core/shapes/weights] [--only gguf,fp8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lumina_core.gguf.convert import convert
from lumina_core.loading.files import open_checkpoint
from lumina_core.loading.transformer import load_transformer
from lumina_core.sampling.sampler import SamplingStats
from lumina_core.shapes import WEIGHTS, analysis, dataset
from lumina_core.shapes.draw import RECIPE, ShapesModel, held_out_seeds

GGUF_TYPES = ("Q8_0", "Q6_K", "Q5_K", "Q4_K", "IQ4_XS", "Q3_K", "Q2_K")
SOLVERS = ("euler", "midpoint", "dopri5")
STEPS = (8, 12, 18, 30)
SCHEDULES = ("shifted_linear", "sigmoid")
CACHE_THRESHOLDS = (0.1, 0.2, 0.3, 0.5)  # TeaCache; 0.2 is the published one for Lumina-Image 2.0
CONVERGED = {"solver": "rk4", "steps": 200}


@dataclass
class Context:
    """What variants build from: the shipped files, a scratch folder for converted files, the float32 model."""

    model: ShapesModel
    scratch: Path

    @property
    def transformer_file(self) -> Path:
        return self.model.files["transformer"]


TransformerFactory = Callable[[Context], torch.nn.Module]


@dataclass(frozen=True)
class Variant:
    name: str
    group: str  # rows are printed by group
    transformer: TransformerFactory | None = None  # None: the float32 model
    sampler: dict = field(default_factory=dict)  # overrides of the recipe, passed to `sample`
    reference: str = "recipe"  # "recipe": float32 at the recipe; "converged": float32, CONVERGED sampler


def gguf(type_name: str) -> TransformerFactory:
    def build(ctx: Context) -> torch.nn.Module:
        path = ctx.scratch / f"shapes-{type_name}.gguf"
        convert(ctx.transformer_file, path, type_name)
        return load_transformer(path, dtype=torch.float32)

    return build


def fp8_storage(ctx: Context) -> torch.nn.Module:
    """Every Linear weight stored as float8_e4m3fn (ComfyUI's fp8 weight dtype), loaded for float32 compute.

    Whether the loader keeps fp8 in memory and casts per layer or casts once at load, the weights the
    arithmetic sees are the fp8 values, so the row measures fp8 storage either way.
    """
    checkpoint = open_checkpoint(ctx.transformer_file)
    tensors = {}
    for name in checkpoint.keys:
        tensor = checkpoint.load(name)
        linear_weight = tensor.ndim == 2 and name.endswith(".weight")
        tensors[name] = tensor.to(torch.float8_e4m3fn) if linear_weight else tensor
    path = ctx.scratch / "shapes_fp8_e4m3fn.safetensors"
    save_file(tensors, path)
    return load_transformer(path, dtype=torch.float32)


def bf16_compute(ctx: Context) -> torch.nn.Module:
    return load_transformer(ctx.transformer_file, dtype=torch.bfloat16)


def build_variants() -> list[Variant]:
    rows = [Variant("float32 (reference)", "weights")]
    rows += [Variant(f"GGUF {t}", "weights", gguf(t)) for t in GGUF_TYPES]
    rows += [Variant("fp8 e4m3 storage", "weights", fp8_storage), Variant("bf16 compute", "compute", bf16_compute)]
    for schedule in SCHEDULES:
        for solver in SOLVERS:
            for steps in STEPS:
                settings = {"solver": solver, "steps": steps, "schedule": schedule}
                rows.append(Variant(f"{solver} {steps} {schedule}", "sampler", None, settings, "converged"))
    rows += [Variant(f"step cache {t}", "step cache", None, {"cache": t}) for t in CACHE_THRESHOLDS]
    return rows


VARIANTS = build_variants()


def psnr(ours: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of uint8 pictures (infinite when equal)."""
    mse = np.mean((ours.astype(np.float64) - reference.astype(np.float64)) ** 2) / 255**2
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def ssim(ours: np.ndarray, reference: np.ndarray) -> float:
    """SSIM of two (H, W, 3) uint8 pictures on their luma (BT.601), Gaussian window 11 / sigma 1.5, valid region."""
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    x, y = (torch.from_numpy(p).double() / 255 @ luma for p in (ours, reference))  # (H, W)
    taps = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    window = (taps[:, None] * taps[None, :] / taps.sum() ** 2)[None, None]  # (1, 1, 11, 11), sums to 1

    def blur(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image[None, None], window)[0, 0]

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    covariance = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_x * mu_y + c1) * (2 * covariance + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(index.mean())


def draw(ctx: Context, variant: Variant, scenes, seeds) -> tuple[np.ndarray, float]:
    """The variant's pictures and its full model calls per picture, calls a step cache skipped not counted
    (dopri5 runs picture by picture: its step control then follows each picture alone, as a user's run would)."""
    transformer = variant.transformer(ctx) if variant.transformer else None
    captions = [s.caption for s in scenes]
    if variant.sampler.get("solver") != "dopri5":
        stats = SamplingStats()
        pictures = ctx.model.draw(captions, seeds, transformer, stats=stats, **variant.sampler)
        return pictures, stats.model_calls - stats.cached_calls
    pictures, calls = [], []
    for caption, seed in zip(captions, seeds):
        stats = SamplingStats()
        pictures.append(ctx.model.draw([caption], [seed], transformer, stats=stats, **variant.sampler)[0])
        calls.append(stats.model_calls - stats.cached_calls)
    return np.stack(pictures), float(np.mean(calls))


def measure(variants: list[Variant], folder: Path) -> list[dict]:
    scenes, seeds = dataset.held_out_scenes(), held_out_seeds()
    with tempfile.TemporaryDirectory() as scratch:
        ctx = Context(ShapesModel(folder), Path(scratch))
        references = {
            "recipe": draw(ctx, Variant("recipe", "reference"), scenes, seeds)[0],
            "converged": draw(ctx, Variant("converged", "reference", sampler=CONVERGED), scenes, seeds)[0],
        }  # both always: the last row compares them
        rows = []
        for variant in variants:
            start = time.perf_counter()
            pictures, calls = draw(ctx, variant, scenes, seeds)
            reference = references[variant.reference]
            rows.append({
                "name": variant.name, "group": variant.group, "reference": variant.reference,
                "psnr": float(np.mean([psnr(p, r) for p, r in zip(pictures, reference)])),
                "ssim": float(np.mean([ssim(p, r) for p, r in zip(pictures, reference)])),
                "semantic": analysis.semantic_score(list(pictures), scenes),
                "model_calls": calls, "seconds": round(time.perf_counter() - start, 1),
            })  # fmt: skip
            print(_row(rows[-1]), flush=True)
        rows.append({
            "name": "converged vs recipe", "group": "reference", "reference": "converged",
            "psnr": float(np.mean([psnr(p, r) for p, r in zip(references["recipe"], references["converged"])])),
            "ssim": float(np.mean([ssim(p, r) for p, r in zip(references["recipe"], references["converged"])])),
            "semantic": analysis.semantic_score(list(references["converged"]), scenes), "model_calls": None,
        })  # fmt: skip
    return rows


def _row(row: dict) -> str:
    psnr_text = "inf" if math.isinf(row["psnr"]) else f"{row['psnr']:.1f}"
    calls = "" if row["model_calls"] is None else f"{row['model_calls']:g}"
    return (
        f"| {row['name']} | {row['group']} | {row['reference']} | {psnr_text} | {row['ssim']:.4f} | "
        f"{row['semantic']:.0%} | {calls} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=WEIGHTS, help="the trained shapes files")
    parser.add_argument("--only", help="comma-separated groups or name prefixes to run (default: all rows)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the record here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wanted = args.only.split(",") if args.only else None
    variants = [v for v in VARIANTS if wanted is None or v.group in wanted or v.name.startswith(tuple(wanted))]
    print("| Variant | Group | Compared with | PSNR (dB) | SSIM | Semantic | Model calls |")
    print("|---|---|---|---|---|---|---|")
    rows = measure(variants, args.folder)
    print(_row(rows[-1]))
    record = {
        "rows": rows, "recipe": RECIPE, "converged": CONVERGED, "prompts": 20,
        "machine": {"torch": torch.__version__, "cpu": platform.processor() or platform.machine()},
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
