"""Peak resident memory while loading a Lumina-Image 2.0 transformer, against the checkpoint's size on disk.

Writes a full-width transformer (hidden 2304, 24 heads, 8 kv heads) with a few layers as a ComfyUI file
(`model.diffusion_model.` prefix, fused qkv) and as a diffusers folder, then loads each in a fresh subprocess,
so nothing the parent or an earlier load allocated pollutes the peak. In the child, after the imports, the
peak-RSS mark is reset (`/proc/self/clear_refs` 5) and the baseline VmRSS read; the loader runs; the peak is
VmHWM minus that baseline. Where clear_refs cannot be written the peak is `ru_maxrss`, which then also holds
whatever the imports peaked at.

Loaders: ours (`load_transformer`, both layouts); the naive path (build the module with its usual random init,
then `safetensors.torch.load_file` and `load_state_dict`; the build is inside the measured window because the
module's own parameters are where the weights end up); and diffusers' `from_pretrained` for the folder.

The page cache cannot be dropped here, and needs not be: file-backed pages of a memory map count in a process's
RSS only once it touches them, whether they come from the cache or the disk. Prints a JSON record and last
the ratio of our peak to the ComfyUI file's size (the requirement is <= 1.2).

`--dtype float8_e4m3fn` writes the ComfyUI file in fp8 (no diffusers folder: diffusers does not save fp8) and
compares our loader, which keeps the Linear weights in fp8, with the naive path, which builds the model in bf16
and copies the file into it (what loading fp8 files cost before they were kept fp8); the requirement is <= 1.1.

    python bench/bench_loading.py [--layers 2] [--refiners 1] [--dtype bfloat16|float32|float8_e4m3fn]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak_memory import proc_status, reset_peak  # noqa: E402 (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMFY_PREFIX = "model.diffusion_model."
RUNS = (  # (loader, layout)
    ("ours", "comfy"), ("ours", "diffusers"), ("naive", "comfy"), ("naive", "diffusers"),
    ("diffusers_from_pretrained", "diffusers"),
)  # fmt: skip
FP8_RUNS = (("ours", "comfy"), ("naive", "comfy"))
FP8 = "float8_e4m3fn"
MB = 2**20


# ---- child: one load in a fresh interpreter ----------------------------------------------------------


def child(loader: str, layout: str, path: str, dtype_name: str) -> None:
    import gc

    import torch
    from safetensors.torch import load_file

    from lumina_core.loading.transformer import load_transformer
    from lumina_core.models.lumina2 import UNUSED_KEYS, Lumina2Transformer, config_from_shapes

    if layout == "diffusers" or loader == "diffusers_from_pretrained":
        from diffusers import Lumina2Transformer2DModel
    dtype = getattr(torch, dtype_name)
    build_dtype = torch.bfloat16 if dtype_name == FP8 else dtype  # torch builds no fp8 modules: compute dtype
    folder = Path(path) / "transformer"
    weights = folder / "diffusion_pytorch_model.safetensors" if layout == "diffusers" else Path(path)

    def naive():
        if layout == "comfy":
            from safetensors import safe_open

            with safe_open(weights, framework="pt") as handle:
                shapes = {k[len(COMFY_PREFIX) :]: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
            torch.set_default_dtype(build_dtype)
            model = Lumina2Transformer(config_from_shapes(shapes))
        else:
            torch.set_default_dtype(dtype)
            model = Lumina2Transformer2DModel.from_config(Lumina2Transformer2DModel.load_config(folder))
        torch.set_default_dtype(torch.float32)
        marks["rss_after_build_mb"] = (proc_status()["VmRSS"] - baseline) / MB
        state = load_file(weights)
        if layout == "comfy":
            state = {k[len(COMFY_PREFIX) :]: v for k, v in state.items()}
            state = {k: v for k, v in state.items() if k not in UNUSED_KEYS}
        model.load_state_dict(state, strict=True)
        del state
        return model

    loaders = {
        "ours": lambda: load_transformer(path),
        "naive": naive,
        "diffusers_from_pretrained": lambda: Lumina2Transformer2DModel.from_pretrained(folder, torch_dtype=dtype),
    }
    marks: dict[str, float] = {}
    gc.collect()
    reset = reset_peak()
    baseline = proc_status()["VmRSS"]
    start = time.perf_counter()
    model = loaders[loader]()
    seconds = time.perf_counter() - start
    loaded, load_peak = proc_status(), peak_rss(reset)
    tensors = list(model.state_dict().values())
    for tensor in tensors:  # read every byte once, as a first forward would, without a temporary copy
        tensor.detach().contiguous().view(-1).view(torch.uint8).max()
    touched, touched_peak = proc_status(), peak_rss(reset)
    print(json.dumps({
        "loader": loader, "layout": layout, "load_s": round(seconds, 2), "peak_from": "VmHWM" if reset else "ru_maxrss",
        "baseline_mb": mb(baseline), "model_mb": mb(sum(t.nbytes for t in tensors)),
        **{k: round(v, 1) for k, v in marks.items()},
        "peak_load_mb": mb(load_peak - baseline), "rss_loaded_mb": mb(loaded["VmRSS"] - baseline),
        "peak_touched_mb": mb(touched_peak - baseline), "rss_touched_mb": mb(touched["VmRSS"] - baseline),
        "rss_anon_touched_mb": mb(touched["RssAnon"]), "rss_file_touched_mb": mb(touched["RssFile"]),
    }))  # fmt: skip


def mb(size: int) -> float:
    return round(size / MB, 1)


def peak_rss(reset: bool) -> int:
    if reset:
        return proc_status()["VmHWM"]
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- parent: write the checkpoints, run the children ---------------------------------------------------


def write_checkpoints(folder: Path, layers: int, refiners: int, dtype_name: str) -> tuple[Path, Path | None]:
    import torch
    from diffusers import Lumina2Transformer2DModel
    from safetensors.torch import save_file

    from lumina_core.loading.keymaps.lumina2 import map_diffusers_keys

    torch.manual_seed(0)
    model = Lumina2Transformer2DModel(
        patch_size=2, in_channels=16, hidden_size=2304, num_layers=layers, num_refiner_layers=refiners,
        num_attention_heads=24, num_kv_heads=8, multiple_of=256, axes_dim_rope=(32, 32, 32), cap_feat_dim=2304,
    ).to(torch.bfloat16 if dtype_name == FP8 else getattr(torch, dtype_name))  # fmt: skip
    diffusers_folder = None
    if dtype_name != FP8:
        diffusers_folder = folder / "diffusers"
        model.save_pretrained(diffusers_folder / "transformer")
    state = model.state_dict()
    plan, unmatched = map_diffusers_keys(list(state))
    assert not unmatched, unmatched
    comfy = {COMFY_PREFIX + k: torch.cat([state[s] for s in sources]).to(getattr(torch, dtype_name))
             for k, sources in plan.items()}  # fmt: skip
    comfy_file = folder / "lumina2_comfy.safetensors"
    save_file(comfy, comfy_file)
    return comfy_file, diffusers_folder


def size_on_disk(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--refiners", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", FP8])
    parser.add_argument("--child", nargs=3, metavar=("LOADER", "LAYOUT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.dtype)
        return

    with tempfile.TemporaryDirectory(prefix="bench_loading_") as tmp:
        start = time.perf_counter()
        comfy_file, diffusers_folder = write_checkpoints(Path(tmp), args.layers, args.refiners, args.dtype)
        write_s = time.perf_counter() - start
        paths = {"comfy": comfy_file, "diffusers": diffusers_folder}
        sizes = {layout: size_on_disk(path) for layout, path in paths.items() if path is not None}
        results = []
        for loader, layout in FP8_RUNS if args.dtype == FP8 else RUNS:
            command = [sys.executable, __file__, "--dtype", args.dtype, "--child", loader, layout, str(paths[layout])]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                raise SystemExit(f"{loader} / {layout} failed:\n{done.stderr}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["file_mb"] = round(sizes[layout] / MB, 1)
            result["peak_load_over_file"] = round(result["peak_load_mb"] * MB / sizes[layout], 3)
            result["peak_touched_over_file"] = round(result["peak_touched_mb"] * MB / sizes[layout], 3)
            results.append(result)

    for r in results:
        print(f"{r['loader']:26s} {r['layout']:9s} load peak +{r['peak_load_mb']:7.1f} MB = "
              f"{r['peak_load_over_file']:.2f}x file; with every weight read +{r['peak_touched_mb']:7.1f} MB = "
              f"{r['peak_touched_over_file']:.2f}x (anon {r['rss_anon_touched_mb']:.0f} MB, file-backed "
              f"{r['rss_file_touched_mb']:.0f} MB; {r['load_s']:.2f} s)")  # fmt: skip
    print("A loader that keeps the file's memory map as the weights returns before reading them: its load peak is "
          "near 0 and the pages come in (file-backed, shared with the page cache) on first use; the second peak, "
          "after reading every weight once, is what a first forward pays. The ratio below uses it.")  # fmt: skip
    import torch

    record = {
        "bench": "lumina2_transformer_loading_peak_rss", "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "dtype": args.dtype, "hidden": 2304, "layers": args.layers,
        "refiners": args.refiners, "write_s": round(write_s, 1),
        "file_mb": {k: round(v / MB, 1) for k, v in sizes.items()}, "runs": results,
    }  # fmt: skip
    print(json.dumps(record))
    ours = next(r for r in results if r["loader"] == "ours" and r["layout"] == "comfy")
    print(f"ratio peak/file size (ours, ComfyUI layout): {ours['peak_touched_over_file']:.3f}")


if __name__ == "__main__":
    main()
