"""Peak memory and time of an LTX-Video VAE decode, whole versus tiled (`TileSettings`), on the CPU.

Builds a 0.9.1-design VAE (timestep-conditioned, noise-injecting, residual upsamplers) with random weights and
the released 128 latent channels and patch 4, at reduced widths so a CPU decode takes seconds, and decodes one
latent whole and tiled, each in a fresh subprocess. In the child, after building the model and a small warm-up
decode, the peak-RSS mark is reset (`/proc/self/clear_refs` 5) and the baseline VmRSS read; the decode runs; its
peak is VmHWM minus that baseline. That counts everything the decode allocates (torch's CPU allocator hands freed
blocks back to malloc, so RSS tracks live tensors), including the float32 output video both modes must hold.
tracemalloc would miss it: tensor storage is not allocated through Python's allocator. Where clear_refs cannot be
written the peak is `ru_maxrss` minus the baseline, which then also holds the warm-up's peak.

Prints a JSON record and last the ratio of the tiled peak to the whole decode's peak.

    python bench/bench_ltx_vae.py [--frames 49 --height 384 --width 576] [--tile 8 --overlap 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from peak_memory import proc_status, reset_peak  # noqa: E402 (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 2**20


def build_vae(width: int):
    import torch

    from lumina_core.tiny import make_ltx_vae
    from lumina_core.vae.ltx_video import BlockSpec, LTXVideoVAEConfig

    up = BlockSpec("compress_all", multiplier=2, residual=True)
    config = LTXVideoVAEConfig(
        encoder_blocks=(BlockSpec("compress_all"),) * 3,  # unused here: the smallest encoder with the same ratios
        decoder_blocks=(BlockSpec("res_x", layers=2), up, BlockSpec("res_x", layers=2, inject_noise=True), up,
                        BlockSpec("res_x", layers=2, inject_noise=True), up,
                        BlockSpec("res_x", layers=2, inject_noise=True)),
        encoder_base_channels=4, decoder_base_channels=width, timestep_conditioning=True,
    )  # fmt: skip
    torch.set_grad_enabled(False)
    return make_ltx_vae(0, config)


def child(args: argparse.Namespace) -> None:
    import torch

    from lumina_core.vae import TileSettings

    torch.set_num_threads(args.threads)
    vae = build_vae(args.width_base)
    shape = vae.latent_shape(1, args.frames, args.height, args.width)
    latent = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    tile = TileSettings(args.tile, args.overlap, args.tile_frames, args.frame_overlap) if args.mode == "tiled" else None
    vae.decode(latent[:, :, :2, :2, :2], tile=tile)  # warm-up: kernels, thread pools
    exact = reset_peak()
    baseline = proc_status()["VmRSS"]
    start = time.perf_counter()
    frames = vae.decode(latent, seed=1, tile=tile)
    seconds = time.perf_counter() - start
    peak = proc_status()["VmHWM"] if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_mb": round((peak - baseline) / MB, 1), "seconds": round(seconds, 2), "exact_peak": exact,
                      "output_mb": round(frames.numel() * 4 / MB, 1), "latent": list(shape)}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--width-base", type=int, default=32, help="decoder width at full resolution")
    parser.add_argument("--tile", type=int, default=8, help="latent rows/columns per tile")
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--tile-frames", type=int, default=4)
    parser.add_argument("--frame-overlap", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=("whole", "tiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    import torch

    runs = {}
    for mode in ("whole", "tiled"):
        command = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    record = {
        "bench": "ltx_vae_decode_memory", "device": "cpu", "dtype": "float32", "torch": torch.__version__,
        "python": platform.python_version(), "video": [args.frames, args.height, args.width],
        "tile": [args.tile, args.overlap, args.tile_frames, args.frame_overlap], "threads": args.threads,
        "method": "fresh subprocess per mode; VmHWM - VmRSS around the decode after clear_refs 5", "runs": runs,
    }  # fmt: skip
    print(json.dumps(record, indent=1))
    print(f"tiled / whole peak memory ratio: {runs['tiled']['peak_mb'] / runs['whole']['peak_mb']:.3f}")


if __name__ == "__main__":
    main()
