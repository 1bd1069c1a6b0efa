"""Command line: `python -m lumina_core {generate,inspect,demo,train-tiny} ...`."""

from __future__ import annotations

import argparse
import sys

from .cli import EXIT_INTERRUPTED, OneLineParser, prompt_interrupt
from .errors import LuminaCoreError


def build_parser() -> argparse.ArgumentParser:
    from .sampling import SCHEDULES, SOLVERS
    from .sampling.recipes import RECIPES
    from .text.prompts import SYSTEM_PROMPTS

    parser = OneLineParser(
        prog="python -m lumina_core",
        description="Lumina-Image 2.0, Lumina-Next, Z-Image and LTX-Video in plain PyTorch.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="text to image (or video, with an LTX-Video model) from checkpoints")
    gen.add_argument("--transformer", required=True, help="DiT file or folder (an all-in-one file works for all three)")
    gen.add_argument(
        "--text-encoder", help="Gemma / Gemma-2 / Qwen3 / T5 file or folder (default: the --transformer file)"
    )
    gen.add_argument(
        "--tokenizer", help="T5 or Qwen tokenizer folder or file, for a single-file T5 / Qwen3 without one beside it"
    )
    gen.add_argument("--vae", help="VAE file or folder (default: the --transformer file)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--system-prompt", default="real", help=f"preset ({', '.join(SYSTEM_PROMPTS)}) or custom text")
    gen.add_argument("--width", type=int, help="pixels (default: 1024; 768 for video)")
    gen.add_argument("--height", type=int, help="pixels (default: 1024; 512 for video)")
    gen.add_argument("--frames", type=int, default=97, help="video models: frame count, 8k + 1")
    gen.add_argument("--frame-rate", type=float, default=25.0, help="video models: frames per second")
    gen.add_argument("--max-tokens", type=int, default=128, help="T5 prompt length, 128 to 256")
    gen.add_argument(
        "--condition",
        nargs="+",
        action="append",
        default=[],
        metavar="PATH [FRAME [STRENGTH]]",
        help="video: an image or clip whose first frame goes to FRAME (default 0; -1 = the last) at STRENGTH "
        "(default 1); repeat for several (first and last frame, keyframes)",
    )
    gen.add_argument(
        "--condition-noise", type=float, default=0.15, help="video: re-noising of kept frames each step (0 = off)"
    )
    gen.add_argument("--input-video", help="video-to-video: start from this video's first --frames frames")
    gen.add_argument("--denoise", type=float, default=1.0, help="video-to-video: how much to change (0-1]")
    gen.add_argument(
        "--upsampler", help="LTX latent upsampler file: run the multi-scale recipe (small pass, x2, refine)"
    )
    gen.add_argument(
        "--refine-recipe", choices=sorted(RECIPES), help="multi-scale: the second pass's recipe (an LTX-Video one)"
    )
    gen.add_argument("--refine-steps", type=int, default=10, help="multi-scale without --refine-recipe: steps")
    gen.add_argument("--refine-denoise", type=float, default=0.4, help="multi-scale without --refine-recipe: denoise")
    gen.add_argument("--batch-size", type=int, default=1)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, help="solver steps (default: the recipe's: 30; 8 Z-Image-Turbo)")
    gen.add_argument(
        "--cfg", type=float, help="guidance scale (default: the recipe's: 4 Lumina, 3 LTX-Video, 1 = off Z-Image-Turbo)"
    )
    gen.add_argument(
        "--shift",
        type=float,
        help="time shift (default: the recipe's: 6 Lumina 2, 4 Lumina-Next, 3 Z-Image-Turbo, LTX from the size)",
    )
    gen.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="reference settings for steps/cfg/shift/schedule/renorm left unset (default: the model's family; "
        "zimage_base for Z-Image base, whose files look like Z-Image-Turbo's; ltxv-0.9.8-distilled for a distilled "
        "LTX-Video model: fixed sigmas, no guidance)",
    )
    gen.add_argument("--solver", default="euler", choices=sorted(SOLVERS))
    gen.add_argument(
        "--schedule",
        choices=sorted(SCHEDULES),
        help="default: the model's (ltx for LTX-Video, else shifted_linear); sigmoid: Lumina-Next's few-step one",
    )
    gen.add_argument("--cfg-trunc", type=float, default=1.0, help="guide while Lumina time t < this (1 = always)")
    gen.add_argument(
        "--renorm-cfg",
        type=float,
        help="clamp guided norm to this x cond norm (0 = off; default: 1 Lumina 2, 0 the others)",
    )
    gen.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:STRENGTH]",
        help="a LoRA for the transformer, strength 1 unless given (negative allowed); repeat for several",
    )
    gen.add_argument(
        "--compile", action="store_true", help="torch.compile the transformer (whole graph; the first run compiles)"
    )
    gen.add_argument(
        "--cache",
        type=float,
        metavar="THRESH",
        help="step caching (TeaCache) threshold; published 0.2 Lumina 2, 0.3 Lumina-Next, 0.05 LTX-Video (default off)",
    )
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    gen.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    gen.add_argument(
        "--out",
        help="images: .png/.jpg/.webp (default lumina.png); video: .mp4 (needs PyAV) or .webp (default "
        "ltxv.webp); batches add _0, _1 ...",
    )

    info = commands.add_parser("inspect", help="what a checkpoint holds: family, layout, config")
    info.add_argument("path")

    demo = commands.add_parser("demo", help="build tiny random checkpoints in every layout and run them")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--steps", type=int, default=4)

    train = commands.add_parser("train-tiny", help="train the tiny shapes model (transformer, text encoder, VAE)")
    train.add_argument("--out", default="shapes_model", help="folder for the three files and training.json")
    train.add_argument("--quick", action="store_true", help="a few steps of each stage: checks the script only")
    train.add_argument("--threads", type=int, help="torch threads (default 1, the committed files' setting)")
    return parser


def generate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .loading.transformer import inspect_transformer
    from .outputs import check_writable, output_paths, save_images, save_videos
    from .pipeline import (
        ImageRequest,
        VideoRequest,
        check_request,
        resolve_device,
        resolve_dtype,
        text_to_image,
        text_to_video,
    )

    device = resolve_device(args.device)
    video = getattr(inspect_transformer(args.transformer), "is_video", False)
    out = args.out or ("ltxv.webp" if video else "lumina.png")
    settings = dict(
        prompt=args.prompt, negative_prompt=args.negative_prompt, system_prompt=args.system_prompt,
        batch_size=args.batch_size, seed=args.seed, steps=args.steps, cfg=args.cfg, shift=args.shift,
        solver=args.solver, schedule=args.schedule, cfg_trunc=args.cfg_trunc, renorm_cfg=args.renorm_cfg,
        compile=args.compile, cache=args.cache, recipe=args.recipe, tokenizer=args.tokenizer,
        loras=tuple(_lora_argument(text) for text in args.lora),
        **{k: v for k, v in (("width", args.width), ("height", args.height)) if v is not None},
    )  # fmt: skip
    if video:
        request = VideoRequest(
            **settings, frames=args.frames, frame_rate=args.frame_rate, max_tokens=args.max_tokens,
            conditions=tuple(_guide_file(c) for c in args.condition),
            condition_noise_scale=args.condition_noise, input_video=args.input_video, denoise=args.denoise,
            upsampler=args.upsampler, refine_recipe=args.refine_recipe, refine_steps=args.refine_steps,
            refine_denoise=args.refine_denoise,
        )  # fmt: skip
    else:
        request = ImageRequest(**settings)
    check_request(request)  # every setting, then the output location, before any model is loaded
    check_writable(output_paths(out, request.batch_size, video))
    bar = None

    def on_step(done: int, total: int) -> None:
        nonlocal bar
        if done == 1:  # a new pass (the multi-scale recipe runs two)
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, unit="step", desc="sampling")
        bar.update(1)

    files = (args.transformer, args.text_encoder or args.transformer, args.vae or args.transformer)
    run = dict(device=device, dtype=resolve_dtype(args.dtype, device), on_step=on_step)
    try:
        if video:
            paths = save_videos(text_to_video(*files, request, **run), out, request.frame_rate)
        else:
            paths = save_images(text_to_image(*files, request, **run), out)
    finally:
        if bar is not None:
            bar.close()
    for path in paths:
        print(path)


def _lora_argument(text: str) -> tuple[str, float]:
    """`FILE[:STRENGTH]` -> (file, strength); a colon inside the path (C:\\...) stays part of it."""
    path, _, strength = text.rpartition(":")
    try:
        return (path, float(strength)) if path else (text, 1.0)
    except ValueError:
        return text, 1.0


def _guide_file(values: list[str]):
    """--condition PATH [FRAME [STRENGTH]] -> GuideFile; InvalidInputError naming the option for bad numbers."""
    from .errors import InvalidInputError
    from .pipeline import GuideFile

    if len(values) > 3:
        raise InvalidInputError(f"--condition takes PATH [FRAME [STRENGTH]]; got {len(values)} values: {values}.")
    try:
        frame = int(values[1]) if len(values) > 1 else 0
        strength = float(values[2]) if len(values) > 2 else 1.0
    except ValueError:
        raise InvalidInputError(
            f"--condition {' '.join(values)}: FRAME must be a whole number and STRENGTH a number in [0, 1]."
        ) from None
    return GuideFile(values[0], frame, strength)


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


def train_tiny(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .shapes.train import QUICK, TrainingConfig, train_tiny

    config = QUICK if args.quick else TrainingConfig()
    train_tiny(args.out, config if args.threads is None else replace(config, threads=args.threads))


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns the exit code: 0 done, 2 an error (one line on stderr), 130 interrupted."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            generate(args)
        elif args.command == "inspect":
            inspect(args)
        elif args.command == "train-tiny":
            train_tiny(args)
        else:
            from .demo import main as demo

            demo(args.out, args.steps)
    except (LuminaCoreError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    with prompt_interrupt():
        sys.exit(main())
