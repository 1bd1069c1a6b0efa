"""`python -m lumina_core.gguf convert IN OUT --type Q8_0 [--overwrite]`: a transformer checkpoint to a GGUF file.

Exit codes: 0 written, 1 an error (one line on stderr), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); an
interrupted or terminated run leaves no partial file.
"""

from __future__ import annotations

import sys

from ..cli import EXIT_INTERRUPTED, OneLineParser, terminate_as_exit
from ..errors import LuminaCoreError
from .convert import TARGETS, convert


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m lumina_core.gguf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("convert", help="convert a Lumina-Image 2.0 / Lumina-Next / LTX-Video transformer")
    command.add_argument("source", help="a .safetensors/.pth file (ComfyUI, original or diffusers names) or folder")
    command.add_argument("output", help="the .gguf file to write")
    command.add_argument("--type", default="Q8_0", choices=list(TARGETS), help="the type of the large weights")
    command.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    args = parser.parse_args(argv)
    try:
        with terminate_as_exit():  # SIGTERM still removes the partial output
            counts = convert(args.source, args.output, args.type, overwrite=args.overwrite)
    except (LuminaCoreError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"wrote {args.output}: " + ", ".join(f"{n} {name}" for name, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
