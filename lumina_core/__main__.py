"""Command line: `python -m lumina_core {generate,inspect,demo} ...`."""

from __future__ import annotations

import argparse
import sys

from .errors import LuminaCoreError


def build_parser() -> argparse.ArgumentParser:
    from .sampling import SCHEDULES, SOLVERS
    from .text.prompts import SYSTEM_PROMPTS

    parser = argparse.ArgumentParser(prog="python -m lumina_core", description="Lumina-Image 2.0 in plain PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="text to image from checkpoint files")
    gen.add_argument("--transformer", required=True, help="DiT file or folder (an all-in-one file works for all three)")
    gen.add_argument("--text-encoder", help="Gemma-2 file or folder (default: the --transformer file)")
    gen.add_argument("--vae", help="VAE file or folder (default: the --transformer file)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--system-prompt", default="real", help=f"preset ({', '.join(SYSTEM_PROMPTS)}) or custom text")
    gen.add_argument("--width", type=int, default=1024)
    gen.add_argument("--height", type=int, default=1024)
    gen.add_argument("--batch-size", type=int, default=1)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=30)
    gen.add_argument("--cfg", type=float, default=4.0)
    gen.add_argument("--shift", type=float, help="time shift (default: the model's: 6 Lumina 2, 4 Lumina-Next)")
    gen.add_argument("--solver", default="euler", choices=sorted(SOLVERS))
    gen.add_argument(
        "--schedule",
        default="shifted_linear",
        choices=sorted(SCHEDULES),
        help="sigmoid: Lumina-Next's few-step schedule",
    )
    gen.add_argument("--cfg-trunc", type=float, default=1.0, help="guide while Lumina time t < this (1 = always)")
    gen.add_argument(
        "--renorm-cfg",
        type=float,
        help="clamp guided norm to this x cond norm (0 = off; default: 1 Lumina 2, 0 Lumina-Next)",
    )
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    gen.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    gen.add_argument("--out", default="lumina.png", help="a .png/.jpg/.webp path (none: .png); batches add _0, _1 ...")

    info = commands.add_parser("inspect", help="what a checkpoint holds: family, layout, config")
    info.add_argument("path")

    demo = commands.add_parser("demo", help="build tiny random checkpoints in every layout and run them")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--steps", type=int, default=4)
    return parser


def generate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .pipeline import ImageRequest, output_paths, resolve_device, resolve_dtype, save_images, text_to_image

    device = resolve_device(args.device)
    output_paths(args.out, args.batch_size)  # a bad --out fails now, not after sampling
    request = ImageRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, system_prompt=args.system_prompt,
        width=args.width, height=args.height, batch_size=args.batch_size, seed=args.seed, steps=args.steps,
        cfg=args.cfg, shift=args.shift, solver=args.solver, schedule=args.schedule, cfg_trunc=args.cfg_trunc,
        renorm_cfg=args.renorm_cfg,
    )  # fmt: skip
    bar = None

    def on_step(done: int, total: int) -> None:
        nonlocal bar
        bar = bar or tqdm(total=total, unit="step", desc="sampling")
        bar.update(1)

    try:
        images = text_to_image(
            args.transformer, args.text_encoder or args.transformer, args.vae or args.transformer, request,
            device=device, dtype=resolve_dtype(args.dtype, device), on_step=on_step,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    for path in save_images(images, args.out):
        print(path)


def inspect(args: argparse.Namespace) -> None:
    from .loading.detect import describe_contents
    from .loading.files import open_checkpoint

    checkpoint = open_checkpoint(args.path)
    print(f"{checkpoint.describe()}\ncontains: {describe_contents(checkpoint)}")
    try:
        from .loading.transformer import inspect_transformer

        model = inspect_transformer(args.path)
        print(f"transformer family: {model.family}\nconfig: {model.config}")
    except LuminaCoreError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            generate(args)
        elif args.command == "inspect":
            inspect(args)
        else:
            from .demo import main as demo

            demo(args.out, args.steps)
    except LuminaCoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
