"""`python -m lumina_core.gguf convert IN OUT --type Q8_0`: a transformer checkpoint to a GGUF file."""

from __future__ import annotations

import argparse
import sys

from ..errors import LuminaCoreError
from .convert import TARGETS, convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lumina_core.gguf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("convert", help="convert a Lumina-Image 2.0 / Lumina-Next / LTX-Video transformer")
    command.add_argument("source", help="a .safetensors/.pth file (ComfyUI, original or diffusers names) or folder")
    command.add_argument("output", help="the .gguf file to write")
    command.add_argument("--type", default="Q8_0", choices=list(TARGETS), help="the type of the large weights")
    args = parser.parse_args(argv)
    try:
        counts = convert(args.source, args.output, args.type)
    except (LuminaCoreError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: " + ", ".join(f"{n} {name}" for name, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
